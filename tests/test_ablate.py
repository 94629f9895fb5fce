"""scripts/ablate.py and its configs: matched sizes, equal settings, budgets, and a run end to end."""

import importlib.util
import json
import sys

import pytest

from hrm.cli import UsageError
from hrm.config import load_config_file, resolve_config
from hrm.models.accounting import parameter_table
from hrm.training.checkpoint import CHECKPOINT_DIR
from hrm.training.loop import train
from hrm.training.metrics import read_metrics
from tests.helpers import ROOT, small_config

ABLATION_CONFIGS = sorted((ROOT / "configs").glob("ablate_*.py"))
spec = importlib.util.spec_from_file_location("ablate", ROOT / "scripts/ablate.py")
ablate = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ablate)


def test_ablation_configs_cover_every_family_within_10_percent_parameters():
    configs = [resolve_config(load_config_file(path)) for path in ABLATION_CONFIGS]
    assert sorted(c.model.family for c in configs) == ["hybrid_pattern", "hybrid_recursive", "mamba", "recursive_ssm"]
    sizes = {c.name: sum(parameter_table(c.model).values()) for c in configs}
    assert max(sizes.values()) <= 1.1 * min(sizes.values()), sizes
    ablate.check_comparable([load_config_file(path) for path in ABLATION_CONFIGS])  # only the models differ


def test_budgets_and_settings():
    assert ablate.parse_budget("steps=300") == ("steps", 300) and ablate.parse_budget("seconds=90.5")[1] == 90.5
    for bad in ("steps=1.5", "minutes=3", "steps=0", "seconds"):
        with pytest.raises(UsageError, match="--budget must be steps=N or seconds=N"):
            ablate.parse_budget(bad)
    path = ABLATION_CONFIGS[0]
    by_steps = ablate.ablation_config(path, "synthetic:mqar", ("steps", 200), 5, [("data.synthetic.length", "6")])
    assert (by_steps.data.dataset, by_steps.data.completion_only, by_steps.data.synthetic.length) == (
        "synthetic:mqar",
        True,
        6,
    )
    assert (by_steps.train.steps, by_steps.train.seed, by_steps.train.eval_every, by_steps.train.save_every) == (
        200,
        5,
        40,
        200,
    )
    by_time = ablate.ablation_config(path, "synthetic:mqar", ("seconds", 60), None, [])
    assert by_time.train.min_lr_ratio == 1.0 and by_time.train.steps >= 10**9  # warmup, then a constant lr
    other = ablate.ablation_config(ABLATION_CONFIGS[1], "synthetic:mqar", ("steps", 200), 5, [])
    with pytest.raises(UsageError, match=r"in data.synthetic.length: 6 vs 0; .* --config.data.synthetic.length=6"):
        ablate.check_comparable([by_steps, other])
    other.data.synthetic.length, other.train.lr = 6, 1e-3
    with pytest.raises(UsageError, match="differ in train.lr: 0.002 vs 0.001"):
        ablate.check_comparable([by_steps, other])


@pytest.mark.slow
def test_time_limit_stops_training_with_a_checkpoint(tmp_path):
    config = small_config(steps=100_000, save_every=100_000, log_every=1, log_activations=False)
    config.model.scan_backend = "sequential"  # compiles faster than interpreted Pallas
    records = train(config, tmp_path, log=lambda *_: None, time_limit_s=1.0)
    last = records[-1]["step"]
    seconds = [r["seconds"] for r in records]
    assert 1 < last < 100_000 and [r["step"] for r in records] == list(range(1, last + 1))
    assert seconds == sorted(seconds) and seconds[0] < 1.0 and 0.9 < seconds[-1] < 10  # stopped at ~1 s
    assert (tmp_path / CHECKPOINT_DIR / str(last)).is_dir()


def tiny_overrides(tmp_path) -> list[str]:
    """A CPU-quick model and task for an ablation run end to end."""
    return [
        "--config.model.d_model=32",
        "--config.model.n_layers=1",
        "--config.data.seq_len=32",
        "--config.data.num_threads=1",
        "--config.data.synthetic.length=16",
        "--config.data.synthetic.examples=300",
        "--config.data.cache_dir",
        str(tmp_path / "cache"),
    ]


@pytest.mark.slow
def test_ablate_end_to_end_writes_table_curves_and_runs(tmp_path, capsys):
    ablate.main(
        [
            "--configs",
            str(ROOT / "configs/ablate_mamba.py"),
            str(ROOT / "configs/ablate_recursive_ssm.py"),
            "--task",
            "synthetic:induction_heads",
            "--budget",
            "steps=3",
            "--out",
            str(tmp_path),
            "--examples",
            "3",
            "--extrapolate_length",
            "24",
            *tiny_overrides(tmp_path),
        ]
    )
    table = (tmp_path / "results.md").read_text()
    assert "| ablate_mamba | mamba |" in table and "| ablate_recursive_ssm | recursive_ssm |" in table
    assert "accuracy longer" in table and "budget steps=3" in table
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    for row in rows:
        assert row["steps"] == 3 and 0 <= row["accuracy"] <= 1 and 0 <= row["accuracy_longer"] <= 1
        assert row["eval_loss"] > 0 and row["tokens_per_sec"] > 0 and row["flops_per_token"] > 0
        assert [r["step"] for r in read_metrics(tmp_path / row["config"]) if "loss" in r][-1] == 3
    assert rows[1]["flops_per_token"] > rows[0]["flops_per_token"]  # 1 block applied twice vs once
    for name in ("loss_vs_step.png", "loss_vs_seconds.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_ablate_without_matplotlib_says_so_first_and_still_writes_the_table(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if the plots extra is not installed
    ablate.main(
        [
            "--configs",
            str(ROOT / "configs/ablate_mamba.py"),
            "--task",
            "synthetic:induction_heads",
            "--budget",
            "steps=3",
            "--out",
            str(tmp_path),
            "--examples",
            "3",
            *tiny_overrides(tmp_path),
        ]
    )  # the settings of the run above: its programs come from the XLA cache (tests/conftest.py)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (
        "note: no loss curves without matplotlib (pip install 'hrm-mamba[plots]' (matplotlib)); the results table is "
        "still written"
    )  # before the first run starts
    assert out[1].startswith("== ablate_mamba")
    table = (tmp_path / "results.md").read_text()
    assert "| ablate_mamba | mamba |" in table and "no loss curves: matplotlib is not installed" in table
    assert not list(tmp_path.glob("*.png"))

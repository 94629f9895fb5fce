"""Monitoring: the records of a log step and an eval, MFU's peak table, plots of runs."""

import importlib.util
import json
import math
import subprocess
import sys

import pytest

from hrm.cli import UsageError
from hrm.training.metrics import read_metrics
from hrm.training.monitor import peak_flops, require_wandb
from tests.helpers import ROOT, small_config

spec = importlib.util.spec_from_file_location("plot_runs", ROOT / "scripts/plot_runs.py")
plot_runs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(plot_runs)


def test_a_recursive_run_records_loss_lr_norms_throughput_and_perplexity(trained_run):
    run = trained_run("recursive_ssm")  # the session's shared run (tests/conftest.py)
    layers, depth = run.config.model.n_layers, run.config.model.recurrent_depth
    assert (layers, depth) == (2, 3)
    records = read_metrics(run.path)
    step = next(r for r in records if "loss" in r)
    assert set(step) >= {"step", "loss", "lr", "grad_norm", "tokens_per_sec", "epoch"}
    assert "mfu" not in step and any("MFU n/a: no peak FLOP/s known for 1 x cpu" in m for m in run.messages)
    activations = [step[f"act_rms_layer_{i}"] for i in range(1, layers * depth + 1)]  # 2 blocks x 3 depths
    states = [step[f"state_rms_depth_{k}"] for k in range(1, depth + 1)]
    assert f"act_rms_layer_{layers * depth + 1}" not in step and f"state_rms_depth_{depth + 1}" not in step
    assert all(v > 0 and math.isfinite(v) for v in activations + states)
    # the state after each depth's last block
    assert states == pytest.approx([activations[k * layers - 1] for k in range(1, depth + 1)])
    evaluation = next(r for r in records if "eval_loss" in r)
    assert evaluation["eval_perplexity"] == pytest.approx(math.exp(evaluation["eval_loss"]))


@pytest.mark.slow
def test_hybrid_recursive_records_its_recursion_state_per_depth(trained_run):
    run = trained_run("hybrid_recursive")
    layers, depth = run.config.model.n_layers, run.config.model.max_recursion_depth
    assert (layers, depth) == (2, 3)  # one record per layer and one per depth, told apart
    record = run.records[0]
    assert {f"act_rms_layer_{i}" for i in range(1, layers + 1)} | {
        f"{key}_{k}" for key in ("state_rms_depth", "gate_depth") for k in range(1, depth + 1)
    } <= set(record)
    assert f"act_rms_layer_{layers + 1}" not in record and f"state_rms_depth_{depth + 1}" not in record


def test_peak_flops_come_from_the_table_or_are_unknown():
    assert peak_flops("NVIDIA H100 80GB HBM3", "bfloat16") == 989.4e12
    assert peak_flops("NVIDIA H100 PCIe", "bfloat16") == 756e12
    assert peak_flops("NVIDIA A100-SXM4-80GB", "float32") == 156e12
    assert peak_flops("cpu", "bfloat16") is None and peak_flops("Some New Accelerator", "float32") is None


def test_wandb_without_the_package_is_one_line():
    try:
        import wandb  # noqa: F401

        pytest.skip("wandb is installed")
    except ImportError:
        pass
    with pytest.raises(UsageError, match="--wandb needs the wandb package: pip install wandb"):
        require_wandb()


def test_plot_runs_writes_the_comparison_pngs(tmp_path, run_cli):
    for name, scale in (("a", 1.0), ("b", 0.8)):
        run = tmp_path / name
        run.mkdir()
        small_config().save_json(run / "config.json")
        records = [{"step": s, "loss": scale * 5 / s, "lr": 1e-3, "tokens_per_sec": 1000.0} for s in range(1, 6)]
        records.append({"step": 5, "eval_loss": scale, "eval_perplexity": math.exp(scale)})
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "plots"
    result = subprocess.run(
        [sys.executable, ROOT / "scripts/plot_runs.py", tmp_path / "a", tmp_path / "b", "--out", out],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    for name in ("loss_vs_step", "loss_vs_time", "eval_loss", "lr"):
        assert (out / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    code, _, err = run_cli(plot_runs.main, tmp_path / "nothing")  # in-process: it exits before importing matplotlib
    assert code == 2 and "no metrics.jsonl in" in err

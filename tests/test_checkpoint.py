"""Checkpoints: manifests and checksums, damaged steps and the fallback, names (best/final), retention, disk
full, leftover temporary folders, metrics.jsonl repair, the run summary and python -m hrm.runs."""

import errno
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hrm
from hrm import runs
from hrm.cli import UsageError
from hrm.config import Config
from hrm.training import checkpoint
from hrm.training.checkpoint import (
    CHECKPOINT_DIR,
    CheckpointError,
    Checkpoints,
    damage,
    finished_steps,
    read_run_config,
    resolve_step,
)
from hrm.training.loop import train
from hrm.training.metrics import METRICS_FILE, read_metrics
from hrm.training.runinfo import SUMMARY_FILE
from tests.helpers import small_config

CONFIG = small_config(steps=6, save_every=2, eval_batches=2)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("run")
    train(CONFIG, path, log=lambda *_: None)
    return path


@pytest.fixture
def copy(run_dir, tmp_path):
    shutil.copytree(run_dir, tmp_path / "run")
    return tmp_path / "run"


def step_dir(run, step):
    return run / CHECKPOINT_DIR / str(step)


def largest_array_file(run, step):
    return max((p for p in (step_dir(run, step) / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def test_each_step_records_checksums_eval_loss_final_and_config(run_dir):
    evals = {r["step"]: r["eval_loss"] for r in read_metrics(run_dir) if "eval_loss" in r}
    assert finished_steps(run_dir) == [2, 4, 6] and sorted(evals) == [2, 4, 6]
    for step in (2, 4, 6):
        manifest = checkpoint.read_manifest(step_dir(run_dir, step))
        assert {"state/_METADATA", "data/process_0-of-1.json"} <= set(manifest["files"])
        assert manifest["eval_loss"] == evals[step] and manifest["final"] == (step == 6)
        assert manifest["config"] == json.loads((run_dir / "config.json").read_text())
        assert damage(step_dir(run_dir, step)) is None


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def overwrite_bytes(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 8] = (
        bytes(8) if any(data[len(data) // 2 : len(data) // 2 + 8]) else b"\xff" * 8
    )
    path.write_bytes(bytes(data))


def overwrite_bytes_throughout(step):
    """8 bytes every 4 KiB of every array data file changed, the sizes kept: whatever array orbax packed where,
    its values change."""
    for path in (step / "state").rglob("d/*"):
        data = bytearray(path.read_bytes())
        for start in range(0, len(data), 4096):
            data[start : start + 8] = bytes(b ^ 0xFF for b in data[start : start + 8])
        path.write_bytes(bytes(data))


CORRUPTIONS = {
    "truncated array file": lambda run: truncate(largest_array_file(run, 6)),
    "overwritten bytes in an array file": lambda run: overwrite_bytes_throughout(step_dir(run, 6)),
    "deleted _METADATA": lambda run: (step_dir(run, 6) / "state" / "_METADATA").unlink(),
    "garbage in the data-iterator JSON": lambda run: (step_dir(run, 6) / "data" / "process_0-of-1.json").write_text(
        "{garbage"
    ),
}


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_a_damaged_step_is_named_and_loading_falls_back(copy, kind):
    CORRUPTIONS[kind](copy)
    assert damage(step_dir(copy, 6)) is not None  # a resume's check: every file
    problem = damage(step_dir(copy, 6), checkpoint.PARAMS)  # a model load's: file sizes and the params' checksums
    assert problem is not None
    with pytest.raises(
        CheckpointError,
        match=r"checkpoint step 6 in '.*' is damaged \(.+\); pass another --step: "
        r"available steps: 2, 4, 6 \(best=6, final=6\)",
    ):
        resolve_step(copy, 6)
    warnings = []
    assert resolve_step(copy, log=warnings.append) == 4
    assert warnings == [f"checkpoint step 6 in '{copy}' is damaged ({problem}); trying an older step"]
    if kind == "truncated array file":
        assert hrm.load(copy).step == 4


def test_a_model_load_checks_the_parameters_checksums_without_hashing_the_steps_files(copy, monkeypatch):
    """orbax packs params and optimizer state into shared files: a load verifies the params it reads by their
    own checksums (the manifest's ``arrays``) and never hashes the optimizer state."""
    manifest = checkpoint.read_manifest(step_dir(copy, 6))
    assert sorted(manifest["arrays"]) == sorted(
        jax.tree_util.keystr(path, simple=True, separator=".")
        for path, _ in jax.tree_util.tree_flatten_with_path(
            checkpoint.read_numpy_state(step_dir(copy, 6), checkpoint.PARAMS)
        )[0]
    )
    hashed = []
    monkeypatch.setattr(checkpoint, "_file_digest", lambda path: hashed.append(path))
    assert damage(step_dir(copy, 6), checkpoint.PARAMS) is None
    assert hrm.load(copy).step == 6
    overwrite_bytes_throughout(step_dir(copy, 6))  # the same sizes: only a checksum can tell
    problem = damage(step_dir(copy, 6), checkpoint.PARAMS)
    assert problem is not None
    assert problem.startswith("parameter params.") or problem.startswith("its parameters cannot be read")
    assert hrm.load(copy).step == 4
    assert hashed == []


def test_resume_falls_back_to_the_newest_good_step_and_repairs_metrics(run_dir, copy):
    """A truncated array file in the newest step and a metrics.jsonl line cut short by a kill: the resume says
    so in one line, moves the step aside, continues from step 4 with the same losses, and every step's record is
    written exactly once."""
    truncate(largest_array_file(copy, 6))
    with (copy / METRICS_FILE).open("a") as f:
        f.write('{"step": 7, "lo')
    messages = []
    train(CONFIG, copy, log=messages.append)
    assert [m for m in messages if "damaged" in m] == [
        f"checkpoint step 6 is damaged ({largest_array_file(run_dir, 6).relative_to(step_dir(run_dir, 6))} has "
        f"{largest_array_file(run_dir, 6).stat().st_size // 2} bytes, {largest_array_file(run_dir, 6).stat().st_size} "
        f"were saved); moved to {copy / 'damaged' / '6'}, resuming from step 4"
    ]
    assert any(m.endswith(f"{CHECKPOINT_DIR}/4") and "resumed from" in m for m in messages)
    assert [json.loads(line) for line in (copy / METRICS_FILE).read_text().splitlines()] == read_metrics(copy)
    assert [r["step"] for r in read_metrics(copy) if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in read_metrics(copy) if "eval_loss" in r] == [2, 4, 6]
    assert [(r["step"], r["loss"]) for r in read_metrics(copy) if "loss" in r] == [
        (r["step"], r["loss"]) for r in read_metrics(run_dir) if "loss" in r
    ]
    assert finished_steps(copy) == [2, 4, 6] and damage(step_dir(copy, 6)) is None


def test_a_damaged_config_json_is_read_from_the_newest_step(run_dir, copy):
    (copy / "config.json").write_text("\x00garbage")
    warnings = []
    assert read_run_config(copy, log=warnings.append) == Config.load_json(run_dir / "config.json")
    assert len(warnings) == 1 and "using the copy saved with step 6" in warnings[0]
    assert hrm.load(copy, step=2).step == 2


def test_steps_by_name_and_clear_errors(run_dir):
    evals = {r["step"]: r["eval_loss"] for r in read_metrics(run_dir) if "eval_loss" in r}
    assert hrm.load(run_dir, step="best").step == min(evals, key=evals.get)
    assert resolve_step(run_dir, "final") == resolve_step(run_dir, "latest") == resolve_step(run_dir, "6") == 6
    for step, message in [
        (3, "has no checkpoint at step 3; available steps: 2, 4, 6"),
        (-1, "has no checkpoint at step -1"),
        ("worst", "unknown step 'worst'; pass a number"),
    ]:
        with pytest.raises(CheckpointError, match=message):
            resolve_step(run_dir, step)


def tiny_state(step):
    return {"step": jnp.int32(step), "w": jnp.full((4, 4), float(step))}


def test_retention_keeps_the_newest_the_best_and_the_final_steps(tmp_path):
    mgr = Checkpoints(tmp_path, keep=2)
    for step, eval_loss, final in [
        (1, 3.0, False),
        (2, 1.0, False),
        (3, 2.0, False),
        (4, 2.5, True),
        (5, 2.2, False),
        (6, 2.1, False),
        (7, None, False),
    ]:
        mgr.save(step, tiny_state(step), eval_loss=eval_loss, final=final)
    mgr.close()
    assert finished_steps(tmp_path) == [2, 4, 6, 7]
    assert checkpoint.named_steps(tmp_path) == {"latest": 7, "best": 2, "final": 4}


def test_retention_prunes_a_step_only_after_the_next_one_committed(tmp_path):
    """keep_checkpoints=1: while step 2 saves in the background, step 1 stays (a kill then still resumes)."""
    mgr = Checkpoints(tmp_path, keep=1)
    mgr.save(1, tiny_state(1))
    mgr.save(2, tiny_state(2))  # waits for step 1 to commit, starts step 2
    assert 1 in finished_steps(tmp_path)
    mgr.close()
    assert finished_steps(tmp_path) == [2]


def test_disk_full_during_a_save_is_one_line_and_keeps_the_previous_step(tmp_path, monkeypatch):
    mgr = Checkpoints(tmp_path)
    mgr.save(1, tiny_state(1))
    mgr.wait_until_finished()

    def disk_full(step_dir, info):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "write_manifest", disk_full)
    with pytest.raises(
        CheckpointError,
        match=rf"^disk full saving checkpoint step 2 in '{tmp_path}': it needs "
        r"about 68 bytes, [\d,]+ are free; free some space and re-run to "
        r"resume from step 1 \(its checkpoint is intact\)$",
    ):
        mgr.save(2, tiny_state(2))
        mgr.wait_until_finished()
    assert finished_steps(tmp_path) == [1] and damage(step_dir(tmp_path, 1)) is None
    assert sorted(p.name for p in (tmp_path / CHECKPOINT_DIR).iterdir()) == ["1"]


def test_leftover_temporary_folders_are_removed_when_a_run_opens(copy):
    leftover = copy / CHECKPOINT_DIR / f"8{checkpoint.TMP_SUFFIX}"
    (leftover / "state").mkdir(parents=True)
    (leftover / "state" / "x").write_bytes(b"half")
    Checkpoints(copy).close()
    assert not leftover.exists() and finished_steps(copy) == [2, 4, 6]


def test_summary_and_runs_listing(run_dir, copy, capsys):
    summary = json.loads((run_dir / SUMMARY_FILE).read_text())
    evals = {r["step"]: r["eval_loss"] for r in read_metrics(run_dir) if "eval_loss" in r}
    assert summary["steps"] == 6 and summary["tokens"] == 6 * 4 * 32 and summary["tokens_per_sec"] > 0
    assert summary["best_eval_loss"] == min(evals.values()) and summary["final_eval_loss"] == evals[6]
    assert summary["checkpoints"]["final"] == 6
    overwrite_bytes(largest_array_file(copy, 4))
    runs.main([str(copy.parent), "--verify"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{copy}  config small  family mamba"
    assert lines[2].split()[:2] == ["step", "4"] and "DAMAGED: " in lines[2]
    assert lines[3].startswith("  step        6  eval_loss ") and lines[3].endswith("final)  ok")
    with pytest.raises(UsageError, match="no hrm.train run"):
        runs.main([str(copy / CHECKPOINT_DIR)])
    assert np.isfinite(summary["train_seconds"])


def overwrite_array_data(step):
    """The middle half of every array data file of a step overwritten with 0xff: NaN where stored raw,
    undecodable where compressed (wherever orbax put the parameters)."""
    for path in (step / "state").rglob("d/*"):
        data = bytearray(path.read_bytes())
        data[len(data) // 4 : 3 * len(data) // 4] = b"\xff" * (3 * len(data) // 4 - len(data) // 4)
        path.write_bytes(bytes(data))


def without_manifests(run):
    for manifest in (run / CHECKPOINT_DIR).glob(f"*/{checkpoint.MANIFEST_FILE}"):
        manifest.unlink()  # as hrm saved steps before checksums existed


def test_steps_without_a_manifest_are_unverified_and_checked_by_their_parameters(copy, capsys):
    without_manifests(copy)
    runs.main([str(copy), "--verify"])
    lines = capsys.readouterr().out.splitlines()[1:]
    assert len(lines) == 3 and all(line.endswith("  unverified (no manifest)") for line in lines), lines
    overwrite_array_data(step_dir(copy, 6))
    problem = damage(step_dir(copy, 6), checkpoint.PARAMS)
    assert problem is not None and problem.startswith("no hrm_manifest.json, and ")
    assert damage(step_dir(copy, 6)).startswith("no hrm_manifest.json, and ")  # the whole state: a resume's check
    runs.main([str(copy), "--verify"])
    assert (
        capsys.readouterr().out.splitlines()[3].startswith("  step        6  eval_loss        -  (latest)  DAMAGED: no")
    )
    with pytest.raises(CheckpointError, match=r"checkpoint step 6 in '.*' is damaged \(no hrm_manifest.json, and"):
        hrm.load(copy, step=6)
    model = hrm.load(copy)  # the newest step that reads back finite
    assert model.step == 4 and np.all(np.isfinite(model.logits([1, 2, 3])[..., : model.config.model.token_vocab_size]))
    assert f"checkpoint step 6 in '{copy}' is damaged ({problem}); trying an older step" in capsys.readouterr().err
    moved = []
    assert Checkpoints(copy).newest_good_step(moved.append) == 4  # a resume's choice: step 6 is moved aside
    assert moved[0].startswith("checkpoint step 6 is damaged (no hrm_manifest.json") and finished_steps(copy) == [2, 4]


def test_sample_falls_back_from_a_step_whose_metadata_and_manifest_are_deleted(copy, run_cli):
    from hrm.sample import main

    without_manifests(copy)
    (step_dir(copy, 6) / "state" / "_METADATA").unlink()
    problem = damage(step_dir(copy, 6), checkpoint.PARAMS)
    assert problem.startswith("no hrm_manifest.json, and its parameters cannot be read")
    code, out, err = run_cli(main, "--checkpoint", copy, "--prompt", "ab", "--max_tokens", "3", "--temperature", "0")
    assert code == 0 and out.startswith("ab") and "Traceback" not in err
    assert err.strip().splitlines() == [
        f"warning: checkpoint step 6 in '{copy}' is damaged ({problem}); trying an older step"
    ]


def test_orbax_disk_full_value_error_is_the_one_line_disk_full_message(tmp_path, monkeypatch):
    """orbax (tensorstore) reports a full disk as ValueError RESOURCE_EXHAUSTED, not as an OSError."""
    mgr = Checkpoints(tmp_path)
    mgr.save(1, tiny_state(1))
    mgr.wait_until_finished()

    def disk_full(step_dir, info):
        raise ValueError(
            'RESOURCE_EXHAUSTED: Error writing local file "/ckpt/2/state/d/ab12": [OS error: No space left on device]'
        )

    monkeypatch.setattr(checkpoint, "write_manifest", disk_full)
    with pytest.raises(
        CheckpointError, match=rf"^disk full saving checkpoint step 2 in '{tmp_path}': .* resume from step 1"
    ):
        mgr.save(2, tiny_state(2))
        mgr.wait_until_finished()
    assert finished_steps(tmp_path) == [1] and damage(step_dir(tmp_path, 1)) is None


def test_a_wrong_shaped_config_json_is_read_from_the_newest_step(copy):
    for raw in ("[1, 2, 3]", '{"model": 7}'):
        (copy / "config.json").write_text(raw)
        warnings = []
        saved = checkpoint.step_info(copy, 6)["config"]
        assert read_run_config(copy, log=warnings.append).to_dict() == Config.from_dict(saved).to_dict()
        assert warnings[0].startswith(f"'{copy / 'config.json'}' is damaged (ConfigError: ")

"""Training end to end: falling loss, metrics and event files, exact resume (also after SIGKILL)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from hrm.cli import UsageError
from hrm.train import main as train_main
from hrm.train import parse_command_line
from hrm.training.checkpoint import CHECKPOINT_DIR, damage, finished_steps
from hrm.training.loop import train
from hrm.training.metrics import read_metrics
from tests.helpers import (
    CLI_STEPS,
    ROOT,
    TINY,
    optimised_xla_flags,
    report_on_fake_devices,
    run_module,
    small_config,
    small_run_args,
)


def losses(run_dir):
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir) if "loss" in r]


@pytest.mark.slow
def test_tiny_config_loss_falls_in_30_steps(tmp_path):
    """The command on its config: 30 steps of interpreted Pallas (auto on CPU), compiled optimised (a process of
    its own: unoptimised, those steps take minutes)."""
    args = [TINY, "--config.train.steps=30", "--config.train.log_every=5", "--config.train.warmup_steps=10"]
    result = run_module(
        "hrm.train",
        "--config",
        *args,
        "--config.data.seq_len=64",
        "--output_dir",
        tmp_path,
        env={"XLA_FLAGS": optimised_xla_flags()},
    )
    assert "selective scan backend: pallas (auto on cpu)" in result.stdout, result.stdout
    records = read_metrics(tmp_path)
    train_records = [r for r in records if "loss" in r]
    assert [r["step"] for r in train_records] == [5, 10, 15, 20, 25, 30]
    assert [r["step"] for r in records if "eval_loss" in r] == [30]
    records = train_records
    assert set(records[0]) >= {"step", "loss", "lr", "grad_norm", "tokens_per_sec"}
    assert records[-1]["loss"] < 0.75 * records[0]["loss"], records
    assert (tmp_path / CHECKPOINT_DIR / "30").is_dir()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["train"]["steps"] == 30
    assert (config["model"]["vocab_size"], config["model"]["token_vocab_size"]) == (384, 258)


@pytest.mark.slow
def test_resume_gives_the_same_losses_as_an_uninterrupted_run(tmp_path):
    config = small_config(steps=8, save_every=4)
    straight = tmp_path / "straight"
    train(config, straight, log=lambda *_: None)
    resumed = tmp_path / "resumed"
    train(config, resumed, log=lambda *_: None, stop_at_step=5)  # preempted after step 5
    assert sorted(int(p.name) for p in (resumed / CHECKPOINT_DIR).iterdir()) == [4, 5]
    messages = []
    train(config, resumed, log=messages.append)
    assert any("resumed from" in m and m.endswith("/5") for m in messages)
    assert losses(resumed) == losses(straight)
    assert len(losses(straight)) == 8


@pytest.mark.slow
def test_resume_after_sigkill(tmp_path, straight_cli_run, run_cli):
    """Kill -9 mid-run (after a checkpoint, between saves): re-running the command continues exactly."""
    args = small_run_args(save_every=5)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "hrm.train", *map(str, args), "--output_dir", str(killed)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    checkpoint_5 = killed / CHECKPOINT_DIR / "5"
    deadline = time.time() + 300
    while time.time() < deadline and not (checkpoint_5.is_dir() and any(r["step"] >= 7 for r in read_metrics(killed))):
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert run_cli(train_main, *args, "--output_dir", killed)[0] == 0  # the same command again (in-process)
    assert losses(killed) == losses(straight_cli_run)


@pytest.mark.slow
def test_a_run_directory_refuses_a_different_model(tmp_path, run_cli):
    train(small_config(), tmp_path, log=lambda *_: None)
    code, _, err = run_cli(train_main, "--config", TINY, "--output_dir", tmp_path)
    assert code == 2
    assert "holds a run with a different model" in err and "Traceback" not in err


@pytest.mark.slow
def test_pallas_backend_trains_like_the_reference(tmp_path):
    """The interpreted Pallas kernel and the associative reference give the same training losses."""
    runs = {}
    for backend in ("pallas", "reference"):
        config = small_config()
        config.model.scan_backend = backend
        train(config, tmp_path / backend, log=lambda *_: None)
        runs[backend] = [loss for _, loss in losses(tmp_path / backend)]
    assert runs["pallas"] == pytest.approx(runs["reference"], rel=1e-5)


def start_two_processes(args: list) -> list[subprocess.Popen]:
    """``python -m hrm.train args`` as processes 0 and 1 of one jax.distributed run (gloo over localhost)."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    return [
        subprocess.Popen(
            [sys.executable, "-m", "hrm.train", *map(str, args)]
            + ["--coordinator_address", f"localhost:{port}", "--num_processes", "2", "--process_id", str(i)],
            cwd=ROOT,
            env={**os.environ, "JAX_PLATFORMS": "cpu"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]


@pytest.mark.slow
def test_two_processes_stop_together_resume_and_train_like_one(tmp_path, straight_cli_run):
    """jax.distributed with two CPU processes (gloo), one run in two calls: SIGTERM to process 1 alone stops both
    at one step, saved together (exit 143); the same command resumes there and finishes; its losses are the
    single-process run's, and every checkpoint holds both processes' shards, hashed."""
    run_dir = tmp_path / "two"
    args = [*small_run_args(save_every=10), "--output_dir", run_dir]
    procs = start_two_processes(args)
    try:
        deadline = time.time() + 300
        while (
            time.time() < deadline
            and procs[1].poll() is None
            and not any(r["step"] >= 3 for r in read_metrics(run_dir))
        ):
            time.sleep(0.01)
        procs[1].send_signal(signal.SIGTERM)  # only process 1 is preempted
        outputs = [p.communicate(timeout=180)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [143, 143], outputs
    assert "2 device(s)" in outputs[0]
    stopped_at = max(r["step"] for r in read_metrics(run_dir))
    assert stopped_at < CLI_STEPS and max(finished_steps(run_dir)) == stopped_at
    assert damage(run_dir / CHECKPOINT_DIR / str(stopped_at)) is None

    procs = start_two_processes(args)
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert "resumed from" in outputs[0] and "2 device(s)" in outputs[0]
    one = losses(straight_cli_run)
    assert [s for s, _ in losses(run_dir)] == [s for s, _ in one] == list(range(1, CLI_STEPS + 1))
    assert [loss for _, loss in losses(run_dir)] == pytest.approx([loss for _, loss in one], rel=1e-5)
    saved = finished_steps(run_dir)
    assert saved == sorted({stopped_at, 10, CLI_STEPS}), saved
    assert [damage(run_dir / CHECKPOINT_DIR / str(s)) for s in saved] == [None] * len(saved)  # both shards hashed


@pytest.mark.parametrize(
    "flags",
    [
        ["--coordinator_address", "localhost:1234"],
        ["--coordinator_address", "h:1", "--num_processes", "2", "--process_id", "2"],
    ],
)
def test_incomplete_multi_process_flags_are_rejected(flags):
    with pytest.raises(UsageError, match="--process_id"):
        parse_command_line(["--config", str(TINY), *flags])


@pytest.mark.slow
@pytest.mark.parametrize("family", ["mamba", "hybrid_recursive"])
def test_accumulation_gives_the_losses_of_the_whole_batch(tmp_path, family):
    """4 micro-batches of 2 rows train exactly as one batch of 8 (the gate's auxiliary loss included)."""
    runs = {}
    for steps in (1, 4):
        config = small_config(batch_size=8, accumulation_steps=steps)
        config.model.family, config.model.n_heads = family, 2
        if family == "hybrid_recursive":  # one layer of a 2-deep recursion has the gate and its loss; compiles fast
            config.model.n_layers, config.model.max_recursion_depth = 1, 2
        train(config, tmp_path / str(steps), log=lambda *_: None)
        runs[steps] = [
            (r["loss"], r["grad_norm"], r.get("aux_loss", 0.0))
            for r in read_metrics(tmp_path / str(steps))
            if "loss" in r
        ]
    assert len(runs[1]) == 8
    assert np.array(runs[4]) == pytest.approx(np.array(runs[1]), rel=1e-4)


def test_accumulation_that_does_not_split_the_batch_is_one_line(tmp_path):
    result = run_module(
        "hrm.train",
        "--config",
        TINY,
        "--batch_size",
        "8",
        "--accumulation_steps",
        "3",
        "--output_dir",
        tmp_path,
        check=False,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        "error: config key 'train.accumulation_steps' (3) must divide "
        "train.batch_size (8), the global batch per optimizer step"
    )


@pytest.mark.slow
def test_bfloat16_trains_within_2_percent_of_float32(tmp_path):
    """bf16 compute (fp32 parameters, optimizer state, LM head and loss) tracks fp32 at init and after 30 steps."""
    runs = {}
    for dtype in ("float32", "bfloat16"):
        config = small_config(steps=30, save_every=30, log_every=1, lr=1e-2)
        config.model.dtype = dtype
        train(config, tmp_path / dtype, log=lambda *_: None)
        runs[dtype] = [loss for _, loss in losses(tmp_path / dtype)]
    assert runs["float32"][-1] < 0.8 * runs["float32"][0]  # it learned something
    for step in (0, -1):
        assert runs["bfloat16"][step] == pytest.approx(runs["float32"][step], rel=0.02)


SHARDED_RUNS = """
import json, shutil, sys
import jax
from hrm.config import resolve_config
from hrm.training.loop import data_mesh, state_shardings, train
from hrm.training.state import init_train_state
from tests.helpers import small_config
out = {}
for shard in (False, True):
    config = small_config(steps=3, save_every=3, batch_size=8, accumulation_steps=2, shard_params=shard)
    config.model.d_model = 64
    shutil.rmtree(sys.argv[1] + f"/{shard}", ignore_errors=True)  # a second attempt starts afresh
    out[str(shard)] = train(config, sys.argv[1] + f"/{shard}", log=lambda *_: None)
_, state = init_train_state(resolve_config(config))
specs = {str(tuple(s.spec)) for s in jax.tree.leaves(state_shardings(state, data_mesh(), True))}
print(json.dumps({"devices": jax.device_count(), "specs": sorted(specs),
                  "losses": {k: [r["loss"] for r in v] for k, v in out.items()}}))
"""


@pytest.mark.slow
def test_sharded_parameters_train_like_replicated_ones_on_4_devices(tmp_path):
    """train.shard_params splits parameters and optimizer state over 4 (fake CPU) devices, same losses."""
    report = report_on_fake_devices(SHARDED_RUNS, tmp_path)
    assert report["devices"] == 4
    assert {"('data', None)", "(None, 'data')", "()"} <= set(report["specs"])
    assert report["losses"]["True"] == pytest.approx(report["losses"]["False"], rel=1e-5)


@pytest.mark.slow
def test_profile_steps_write_a_trace_under_the_run_dir(tmp_path):
    train(small_config(profile_steps=2), tmp_path, log=lambda *_: None)
    traces = list((tmp_path / "profile").rglob("*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0

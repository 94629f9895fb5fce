"""Faults a long run survives: SIGTERM/SIGINT, a second process on the run dir, non-finite steps, lr at step 0."""

import dataclasses
import gc
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

import hrm
from hrm.config import ConfigError, TrainConfig
from hrm.train import main as train_main
from hrm.train import parse_command_line
from hrm.training.checkpoint import CHECKPOINT_DIR, damage, finished_steps
from hrm.training.faults import LOCK_FILE, RunLock, StopSignals, TrainingError, remember_interrupts
from hrm.training.loop import train
from hrm.training.metrics import read_metrics
from hrm.training.optimizer import learning_rate_schedule
from tests.helpers import ROOT, poison_gradients, small_config, small_run_args
from tests.test_checkpoint import overwrite_array_data
from tests.test_train import losses


def test_the_first_update_has_a_positive_learning_rate():
    schedule = learning_rate_schedule(TrainConfig(steps=100, warmup_steps=10, lr=1e-3, min_lr_ratio=0.1))
    rates = [float(schedule(i)) for i in range(100)]
    assert rates[0] == pytest.approx(1e-4)  # lr / warmup_steps, not 0
    assert rates[9] == pytest.approx(1e-3) and max(rates) == pytest.approx(1e-3)
    assert rates[-1] == pytest.approx(1e-4)  # min_lr_ratio at the last update
    assert float(learning_rate_schedule(TrainConfig(steps=10, warmup_steps=0, lr=1e-3))(0)) == pytest.approx(1e-3)


@pytest.mark.slow
def test_sigterm_finishes_the_step_saves_and_resumes_exactly(tmp_path, straight_cli_run, run_cli):
    """SIGTERM at a random step: exit 143 within seconds with a checkpoint at the last finished step (its
    record written); re-running continues with the losses of an uninterrupted run."""
    args = list(map(str, small_run_args(save_every=100)))
    run_dir = tmp_path / "preempted"
    at_step = random.Random().randint(2, 8)
    proc = subprocess.Popen(
        [sys.executable, "-m", "hrm.train", *args, "--output_dir", str(run_dir)],
        cwd=ROOT,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while (
        time.time() < deadline and proc.poll() is None and not any(r["step"] >= at_step for r in read_metrics(run_dir))
    ):
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before the signal"
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert time.time() - sent < 60
    assert "Traceback" not in err and "stopped by SIGTERM" in out
    stopped_at = max(r["step"] for r in read_metrics(run_dir))
    assert stopped_at >= at_step and finished_steps(run_dir) == [stopped_at], (at_step, out)
    assert (run_dir / LOCK_FILE).exists() is False
    assert run_cli(train_main, *args, "--output_dir", run_dir)[0] == 0  # the same command again (in-process)
    assert losses(run_dir) == losses(straight_cli_run), f"SIGTERM after step {at_step}"


def test_sigint_saves_at_the_finished_step_with_its_record(tmp_path):
    """Ctrl-C arriving mid-run (here from another thread, as a terminal would): exit code 130, a checkpoint at the
    last finished step, whose train record is written exactly once."""
    run_dir = tmp_path / "run"

    def interrupt_after_step_3():
        while not any(r["step"] >= 3 for r in read_metrics(run_dir)):
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_after_step_3, daemon=True).start()
    handler = signal.getsignal(signal.SIGINT)
    config = parse_command_line(list(map(str, small_run_args(save_every=100))))[0]  # the signal tests' compiled step
    with pytest.raises(SystemExit) as stopped:
        train(config, run_dir, log=lambda *_: None)
    assert stopped.value.code == 130
    steps = [r["step"] for r in read_metrics(run_dir)]
    assert steps == list(range(1, steps[-1] + 1)) and finished_steps(run_dir) == [steps[-1]]
    assert signal.getsignal(signal.SIGINT) is handler  # the handler is restored


def test_nonfinite_gradients_skip_the_update_and_a_run_of_them_stops(tmp_path, monkeypatch):
    """Injected NaN gradients (steps 3, 5, 6, 7): each update is skipped and counted; with train.max_bad_steps=3
    the third in a row stops the run naming the last good checkpoint, whose parameters are finite."""
    poison_gradients(monkeypatch, {3, 5, 6, 7})
    messages = []
    with pytest.raises(
        TrainingError,
        match=r"3 non-finite steps in a row up to step 7 .*last good checkpoint: "
        rf"\S*{CHECKPOINT_DIR}/6;",
    ):
        train(small_config(steps=10, save_every=2, max_bad_steps=3), tmp_path, log=messages.append)
    assert any("step 3: non-finite loss or gradient, update skipped" in m for m in messages)
    records = {r["step"]: r for r in read_metrics(tmp_path) if "loss" in r}
    assert sorted(records) == [1, 2, 3, 4, 5, 6] and records[6]["skipped_steps"] == 3
    assert np.isnan(records[3]["grad_norm"]) and records[4]["skipped_steps"] == 1
    params = {step: hrm.load(tmp_path, step=step).params for step in (4, 6)}
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params[6]))
    assert jax.tree.all(jax.tree.map(np.array_equal, params[4], params[6]))  # 5 and 6 did not update


def test_run_lock_refuses_a_live_owner_and_takes_over_a_dead_ones(tmp_path):
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / LOCK_FILE).write_text(json.dumps({"host": RunLock(tmp_path).owner["host"], "pid": owner.pid}))
        with pytest.raises(ConfigError, match=f"is in use by process {owner.pid} "):
            RunLock(tmp_path).acquire()
    finally:
        owner.kill()
        owner.wait()
    lock = RunLock(tmp_path).acquire()  # its owner is gone: stale
    assert json.loads((tmp_path / LOCK_FILE).read_text()) == {"host": lock.owner["host"], "pid": os.getpid()}
    (tmp_path / LOCK_FILE).write_text('{"host": "x", "pi')  # cut short by a kill
    RunLock(tmp_path).acquire().release()
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_refused_setup_leaves_no_lock_behind(tmp_path):
    """A run that stops before training (here: the directory belongs to another model) releases its lock."""
    other = small_config()
    other.model = dataclasses.replace(other.model, d_model=48)
    other.save_json(tmp_path / "config.json")
    with pytest.raises(ConfigError, match="different"):
        train(small_config(), tmp_path, log=lambda *_: None)
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_second_training_process_on_a_run_dir_refuses_with_one_line(tmp_path, run_cli):
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (tmp_path / LOCK_FILE).write_text(json.dumps({"host": RunLock(tmp_path).owner["host"], "pid": owner.pid}))
        code, _, err = run_cli(train_main, *small_run_args(save_every=2), "--output_dir", tmp_path)
    finally:
        owner.kill()
        owner.wait()
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [
        f"error: '{tmp_path}' is in use by process {owner.pid} (lock file {tmp_path / LOCK_FILE}); wait for it, "
        f"stop it, or pass another --output_dir (delete the lock file if that process is gone)"
    ]
    assert not (tmp_path / "config.json").exists()


# SIGTERM to one process of two: test_train.py::test_two_processes_stop_together_resume_and_train_like_one (one
# two-process run that is stopped, then resumed and compared with one process).


# --- issue 27's groups; the others live next to their code: config ranges and JSON types (test_config.py),
# data damage (test_data.py), checkpoint damage without a manifest and full disks (test_checkpoint.py), read-only
# run dirs (test_train_cli.py, test_eval.py), API types (test_sample.py) -------------------------------------


def interrupted_at(args: list[str], delay: float) -> subprocess.CompletedProcess:
    """``python -m hrm.train args`` given Ctrl-C (SIGINT) ``delay`` seconds after it starts."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "hrm.train", *args],
        cwd=ROOT,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # as from a terminal: a test runner started in the background (`cmd &`) ignores SIGINT, and an ignored
        # signal stays ignored across exec, so the child would never see the early Ctrl-C
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.slow
def test_sigint_during_start_up_is_quiet_as_sigterm_is(tmp_path):
    """Ctrl-C during the imports, the data and the compile of a new run, and during a resume's restore: no
    traceback, exit 130 (or the default SIGINT death during the imports, as SIGTERM's), checkpoints intact."""
    run_dir = tmp_path / "run"
    train(parse_command_line(list(map(str, small_run_args(save_every=2))))[0], run_dir, lambda *_: None, stop_at_step=2)
    # 1000 steps: a train step no other test compiles, so the interrupts land in its compile, as in a new run's
    fresh = [*small_run_args(steps=1000, save_every=1000), "--output_dir", str(tmp_path / "fresh")]
    resume = [*small_run_args(steps=1000, save_every=1000), "--output_dir", str(run_dir)]
    # 0.6 s: inside the imports (jax's take seconds), past CPython's own start-up (site), where a Ctrl-C is
    # CPython's "Fatal Python error", not hrm's to handle
    for args, delay in [(fresh, 0.6), (fresh, 3.0), (fresh, 6.0), (resume, 4.0), (resume, 7.0)]:
        result = interrupted_at(args, delay)
        assert result.returncode in (130, -signal.SIGINT), (delay, result.returncode, result.stderr)
        assert "Traceback" not in result.stderr and "KeyboardInterrupt" not in result.stderr, (delay, result.stderr)
        assert not (run_dir / LOCK_FILE).exists()
        assert all(damage(run_dir / CHECKPOINT_DIR / str(s)) is None for s in finished_steps(run_dir))
    assert 2 in finished_steps(run_dir)


def test_a_ctrl_c_that_cpython_swallows_in_a_gc_callback_still_stops_the_run(monkeypatch):
    """A Ctrl-C raised inside a garbage-collection callback (XLA registers one; setup collects often) is ignored by
    CPython: hrm.train's hook remembers it, quietly, and the run's stop signals see it as received."""
    other = []
    monkeypatch.setattr(sys, "unraisablehook", remember_interrupts(other.append))

    def interrupted(phase, info):
        if phase == "start":
            raise KeyboardInterrupt

    gc.callbacks.append(interrupted)
    try:
        gc.collect()  # CPython calls the callback, which raises; it hands the exception to sys.unraisablehook
    finally:
        gc.callbacks.remove(interrupted)
    assert other == [] and StopSignals().received == signal.SIGINT
    assert StopSignals().received == 0  # remembered once
    sys.unraisablehook(type("Unraisable", (), {"exc_value": ValueError("x")})())
    assert len(other) == 1  # any other ignored exception still reaches the previous hook


@pytest.mark.parametrize(
    "args,message",
    [
        (["--config.train.grad_clip=-1"], "config key 'train.grad_clip' must be >= 0 (0 = no clipping), got -1.0"),
        (["--config.model.norm_eps=-1"], "config key 'model.norm_eps' must be positive, got -1.0"),
        (["--config.train.b2=2.0"], "config key 'train.b2' must be in [0, 1), got 2.0"),
        (["--epochs", "0"], "--epochs must be a positive number of passes over the training tokens, got 0"),
        (["--config.data.completion_only=yes_please"], "config key 'data.completion_only' expects bool"),
    ],
)
def test_settings_that_would_train_wrong_are_one_line_and_leave_nothing(tmp_path, capsys, args, message):
    from hrm.cli import run_main
    from hrm.train import main

    with pytest.raises(SystemExit) as stopped:
        run_main(main, ["--config", str(ROOT / "configs/tiny.py"), "--output_dir", str(tmp_path / "run"), *args])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and err == f"error: {message}\n" or message in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "raw,message",
    [
        ({"vram": {"batch_size": "four"}}, "config key 'vram.batch_size' expects int, got 'four'"),
        ({"model": 7}, "section 'model' must be an object of keys and values, got 7"),
        ({"training": {"max_grad_norm": -1}}, "config key 'train.grad_clip' must be >= 0"),
    ],
)
def test_json_configs_of_the_wrong_types_are_one_line(tmp_path, capsys, raw, message):
    from hrm.cli import run_main
    from hrm.train import main

    path = tmp_path / "c.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(SystemExit) as stopped:
        run_main(main, ["--config", str(path), "--output_dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


def test_a_resume_from_manifest_less_non_finite_parameters_falls_back_to_a_good_step(tmp_path):
    """Steps saved before manifests existed: the newest one's parameters are overwritten with NaN; the resume
    moves it aside with one line and continues from the older step with finite losses."""
    config = small_config(save_every=2)
    run_dir = tmp_path / "run"
    train(config, run_dir, log=lambda *_: None, stop_at_step=4)
    for manifest in (run_dir / CHECKPOINT_DIR).glob("*/hrm_manifest.json"):
        manifest.unlink()
    from hrm.training.checkpoint import read_numpy_state

    assert all(np.isfinite(x).all() for x in jax.tree.leaves(read_numpy_state(run_dir / CHECKPOINT_DIR / "4")))
    overwrite_array_data(run_dir / CHECKPOINT_DIR / "4")
    lines = []
    records = train(config, run_dir, log=lines.append)
    damaged = [line for line in lines if "is damaged" in line]
    assert len(damaged) == 1 and damaged[0].startswith("checkpoint step 4 is damaged (no hrm_manifest.json, and ")
    assert "resuming from step 2" in damaged[0]
    steps = [r["step"] for r in records if "loss" in r]
    assert steps[0] == 3 and all(np.isfinite(r["loss"]) for r in records if "loss" in r)

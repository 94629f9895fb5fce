"""What a long run survives: preemption signals, two processes on one run directory, non-finite steps.

- ``StopSignals``: SIGTERM (how schedulers preempt) and SIGINT only set a flag; the loop finishes the step,
  saves at it and exits ``128 + signal`` (143 / 130). ``agreed_signal`` makes the processes of a multi-process
  run stop at the same step, so their collective save happens on all of them or none.
- ``RunLock``: ``DIR/train.lock`` holds the owner's host and PID; a second process refuses with one line, a lock
  whose process is gone is taken over.
- ``BadSteps``: the train step skips non-finite updates (``hrm.training.state``); N in a row stop the run
  (counted on the device, read at log, evaluation and save steps).
"""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from hrm.config import ConfigError
from hrm.errors import UserError

LOCK_FILE = "train.lock"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingError(UserError):
    """Training cannot go on (e.g. the loss diverged); the message names the cause and the fix."""

    exit_code = 1


_SWALLOWED: list[int] = []  # Ctrl-Cs whose KeyboardInterrupt CPython could not raise (see remember_interrupts)


def remember_interrupts(default):
    """A ``sys.unraisablehook`` that remembers a KeyboardInterrupt CPython could only ignore, silently: a Ctrl-C
    that arrives while a garbage-collection callback runs (XLA registers one; setup collects often while it traces
    and compiles) is raised inside it, and CPython prints and drops such exceptions, so the run would go on as if
    never interrupted. ``StopSignals.install`` then stops at the first step, as a Ctrl-C during training does."""

    def hook(unraisable) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            _SWALLOWED.append(signal.SIGINT)
        else:
            default(unraisable)

    return hook


class StopSignals:
    """Turns SIGTERM/SIGINT into a flag (``received``: the signal number, 0 before any) while installed; a Ctrl-C
    swallowed before (``remember_interrupts``) counts as received."""

    def __init__(self):
        self.received = _SWALLOWED.pop() if _SWALLOWED else 0
        self._previous = {}

    def install(self) -> StopSignals:
        try:
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: signals keep their default behaviour
            pass
        return self

    def _handle(self, signum, frame) -> None:
        self.received = self.received or signum

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


def agreed_signal(local: int) -> int:
    """The stop signal any process of the run received (0 for none); a collective: every process of the run calls
    it at the same steps (the loop's log steps)."""
    if jax.process_count() == 1:
        return local

    return int(np.max(multihost_utils.process_allgather(np.int32(local))))


def exit_code(signum: int) -> int:
    return 128 + signum


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


class RunLock:
    """An exclusive claim on a run directory by this process (one lock file per process index of the run)."""

    def __init__(self, run_dir: Path, process_index: int = 0):
        self.path = Path(run_dir) / (LOCK_FILE if process_index == 0 else f"{LOCK_FILE}.{process_index}")
        self.owner = {"host": socket.gethostname(), "pid": os.getpid()}

    def acquire(self) -> RunLock:
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(self.owner) + "\n")
            return self
        raise ConfigError(f"cannot lock '{self.path}'; delete it if no training runs on '{self.path.parent}'")

    def _take_over_if_stale(self) -> None:
        try:
            owner = json.loads(self.path.read_text())
            host, pid = owner["host"], int(owner["pid"])
        except FileNotFoundError:
            return
        except (ValueError, KeyError, TypeError):  # a lock file cut short by a kill: nobody holds it
            host, pid = self.owner["host"], -1
        if host == self.owner["host"] and (pid == os.getpid() or pid <= 0 or not _pid_alive(pid)):
            stale = self.path.with_name(f"{self.path.name}.stale.{os.getpid()}")
            try:
                os.replace(self.path, stale)
                stale.unlink()
            except FileNotFoundError:  # another process took it over first
                pass
            return
        where = f"process {pid}" + ("" if host == self.owner["host"] else f" on host {host}")
        raise ConfigError(
            f"'{self.path.parent}' is in use by {where} (lock file {self.path}); wait for it, stop it, "
            f"or pass another --output_dir (delete the lock file if that process is gone)"
        )

    def release(self) -> None:
        try:
            if json.loads(self.path.read_text()) == self.owner:
                self.path.unlink()
        except (OSError, ValueError):
            pass


class BadSteps:
    """Counts, on the device, the steps whose update the train step skipped (non-finite loss, gradient or
    parameters); ``check`` reads the counts (at log, evaluation and save steps: the host never waits for an
    ordinary step), logs the new skips and, once ``max_in_a_row`` came in a row, stops the run with
    ``TrainingError`` naming the step and the last good checkpoint."""

    def __init__(self, max_in_a_row: int, sharding=None):
        self.max_in_a_row = max_in_a_row
        self.total = 0  # skipped steps this call, as of the last check
        self._checked_step = None
        zero = jnp.zeros((), jnp.int32)
        self._counts = jax.device_put({"total": zero, "in_a_row": zero, "tripped_at": zero}, sharding)
        self._count = jax.jit(functools.partial(_count_skip, max_in_a_row=max_in_a_row))

    def count(self, step: int, skipped) -> None:
        """Add the train step ``step``'s ``skipped`` flag (a device scalar) to the counts, asynchronously."""
        if self._checked_step is None:
            self._checked_step = step - 1
        self._counts = self._count(self._counts, skipped, jnp.int32(step))

    def check(self, step: int, last_good, log) -> None:
        """Read the counts at ``step``; ``last_good()`` names the newest checkpoint for the stop message."""
        if self._checked_step is None or self._checked_step == step:
            return
        counts = {k: int(v) for k, v in jax.device_get(self._counts).items()}
        new, since = counts["total"] - self.total, self._checked_step
        self.total, self._checked_step = counts["total"], step
        if new:
            where = f"step {step}" if step - since == 1 else f"steps {since + 1}-{step}"
            what = "update skipped" if new == 1 else f"{new} updates skipped"
            row = f"{counts['in_a_row']} in a row, " if counts["in_a_row"] else ""
            log(f"{where}: non-finite loss or gradient, {what} ({row}{self.total} this run)")
        if counts["tripped_at"]:
            raise TrainingError(
                f"{self.max_in_a_row} non-finite steps in a row up to step {counts['tripped_at']} "
                f"(train.max_bad_steps); last good checkpoint: {last_good()}; lower train.lr or raise "
                f"train.warmup_steps and resume from it"
            )


def _count_skip(counts: dict, skipped, step, max_in_a_row: int) -> dict:
    bad = skipped > 0
    in_a_row = jnp.where(bad, counts["in_a_row"] + 1, 0)
    tripped = (counts["tripped_at"] == 0) & (in_a_row >= max_in_a_row)
    return {
        "total": counts["total"] + bad.astype(jnp.int32),
        "in_a_row": in_a_row,
        "tripped_at": jnp.where(tripped, step, counts["tripped_at"]),
    }

"""``train.profile_steps=N``: a ``jax.profiler`` trace of N training steps, written under ``RUN_DIR/profile``.

The trace starts after the first (compiling) step of the call, so it shows steady-state steps. Open it with
TensorBoard's profile plugin (``tensorboard --logdir RUN_DIR/profile``) or Perfetto (the ``*.trace.json.gz``
file); https://docs.jax.dev/en/latest/profiling.html.
"""

from __future__ import annotations

from pathlib import Path

import jax


class StepProfiler:
    """Call ``after_step(outputs)`` after every training step and ``close()`` when training ends."""

    def __init__(self, run_dir: Path, steps: int, log=print):
        self.dir, self.remaining, self.log = Path(run_dir) / "profile", steps, log
        self.started = self.done = steps <= 0

    def after_step(self, outputs) -> None:
        if self.done:
            return
        if not self.started:  # the first step compiled: trace the next ones
            jax.block_until_ready(outputs)
            jax.profiler.start_trace(str(self.dir))
            self.started = True
            return
        self.remaining -= 1
        if self.remaining == 0:
            jax.block_until_ready(outputs)
            self.close()

    def close(self) -> None:
        if self.started and not self.done:
            jax.profiler.stop_trace()
            self.done = True
            self.log(f"profile of the traced steps written to {self.dir} (tensorboard --logdir {self.dir})")

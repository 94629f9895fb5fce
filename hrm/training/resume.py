"""``--resume PATH``: which run and step a new run directory continues from.

PATH is a run directory (its latest checkpoint) or one step of it, ``DIR/checkpoints/N``; the documents'
``DIR/step_N`` spelling (seed 002, "--resume ./checkpoints/x/step_5000") is read as ``DIR/checkpoints/N``.
The new run restores that step's weights, optimizer, step count and data position (hrm/training/loop.py).
"""

from __future__ import annotations

import re
from pathlib import Path

from hrm.training.checkpoint import CHECKPOINT_DIR, CONFIG_FILE, CheckpointError, manager, quiet_orbax


def resume_point(path: str | Path) -> tuple[Path, int]:
    """(run directory, step) that ``path`` names; a ``CheckpointError`` line when it names no checkpoint."""
    path = Path(path)
    match = re.fullmatch(r"(?:step_)?(\d+)", path.name)
    if match and (path.parent.name == CHECKPOINT_DIR or path.name.startswith("step_")):
        run_dir = path.parent.parent if path.parent.name == CHECKPOINT_DIR else path.parent
        step = int(match.group(1))
    else:
        run_dir, step = path, None
    if not (run_dir / CONFIG_FILE).is_file():
        what = "does not exist" if not path.exists() else "is a file" if path.is_file() else "is no hrm run"
        raise CheckpointError(f"--resume '{path}' {what}; pass a run directory (with {CONFIG_FILE} and "
                              f"{CHECKPOINT_DIR}/) or one of its steps, DIR/{CHECKPOINT_DIR}/N")
    quiet_orbax()
    mgr = manager(run_dir, read_only=True)
    steps = sorted(mgr.all_steps())
    mgr.close()
    if not steps:
        raise CheckpointError(f"--resume '{path}': '{run_dir}' has no finished checkpoint")
    if step is None:
        return run_dir, steps[-1]
    if step not in steps:
        raise CheckpointError(f"--resume '{path}': '{run_dir}' has no checkpoint at step {step}; it has steps "
                              f"{', '.join(map(str, steps))}")
    return run_dir, step

"""``--resume PATH``: which run and step a new run directory continues from.

PATH is a run directory (its latest checkpoint) or one step of it, ``DIR/checkpoints/N``. ``DIR/step_N`` is read
as ``DIR/checkpoints/N`` too: commands written for the design documents' trainer (docs/MODELS.md "Documented
sizes"; README.md "Training") spell a step that way, e.g. ``--resume ./checkpoints/x/step_5000``.
The new run restores that step's weights, optimizer, step count and data position (hrm/training/loop.py).
"""

from __future__ import annotations

import re
from pathlib import Path

from hrm.training.checkpoint import CHECKPOINT_DIR, CONFIG_FILE, CheckpointError, quiet_orbax, resolve_step


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
        raise CheckpointError(
            f"--resume '{path}' {what}; pass a run directory (with {CONFIG_FILE} and "
            f"{CHECKPOINT_DIR}/) or one of its steps, DIR/{CHECKPOINT_DIR}/N"
        )
    quiet_orbax()
    try:  # the newest good step (or the one named), checked against its checksums
        return run_dir, resolve_step(run_dir, step, parts=None)  # a resume reads the whole train state
    except CheckpointError as error:
        raise CheckpointError(f"--resume '{path}': {error}") from None

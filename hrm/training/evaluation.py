"""Held-out evaluation: the loss over every held-out target, each target weighing the same."""

from __future__ import annotations

import numpy as np


def held_out_loss(mean_loss, batches: list[dict]) -> float:
    """The mean cross-entropy over all unmasked targets of ``batches``, from ``mean_loss(batch)``, the
    mean over one batch's targets (``next_token_loss`` in hrm/training/state.py): batches that hold more
    targets weigh more, so the result does not depend on how the targets fall into batches."""
    counts = [int(np.count_nonzero(batch["mask"])) for batch in batches]
    total = sum(float(mean_loss(batch)) * n for batch, n in zip(batches, counts) if n)
    return total / max(1, sum(counts))

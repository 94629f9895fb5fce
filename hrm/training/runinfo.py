"""What a run directory holds: its checkpoints (step, eval loss, names) and the end-of-training summary.

``DIR/metrics.json`` is written when training reaches its last step: steps, tokens, training time, tokens/s,
best eval loss and its step, final eval loss, skipped (non-finite) steps and the named checkpoints.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from hrm.training import checkpoint
from hrm.training.metrics import read_metrics

SUMMARY_FILE = "metrics.json"


def summary(run_dir: Path) -> dict:
    """The run's summary from its config, metrics.jsonl and checkpoints."""
    run_dir = Path(run_dir)
    config = checkpoint.read_run_config(run_dir)
    records = read_metrics(run_dir)
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval_loss" in r]
    tokens_per_step = config.train.batch_size * config.data.seq_len
    seconds, previous = 0.0, 0
    for record in train:  # each record's tokens/s covers the steps since the one before
        seconds += (record["step"] - previous) * tokens_per_step / record["tokens_per_sec"]
        previous = record["step"]
    steps = max((r["step"] for r in records), default=0)
    result = {
        "name": config.name,
        "family": config.model.family,
        "steps": steps,
        "tokens": steps * tokens_per_step,
        "train_seconds": seconds,
        "tokens_per_sec": previous * tokens_per_step / seconds if seconds else None,
        "final_loss": train[-1]["loss"] if train else None,
        "skipped_steps": train[-1].get("skipped_steps", 0) if train else 0,
    }
    if evals:
        best = min(evals, key=lambda r: r["eval_loss"])
        result.update(
            best_eval_loss=best["eval_loss"], best_eval_step=best["step"], final_eval_loss=evals[-1]["eval_loss"]
        )
    result["checkpoints"] = checkpoint.named_steps(run_dir)
    return result


def write_summary(run_dir: Path) -> None:
    path = Path(run_dir) / SUMMARY_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(summary(run_dir), indent=2) + "\n")
    os.replace(tmp, path)


def checkpoints(run_dir: Path, verify: bool = False) -> list[dict]:
    """One dict per finished step: step, eval_loss, names (latest/best/final) and, with ``verify``, ``damage``
    (None when its files match their checksums) and ``verified`` (False: no manifest, only its parameters were
    read and found finite)."""
    steps = checkpoint.finished_steps(run_dir)
    names = checkpoint.named_steps(run_dir, steps)
    rows = []
    for step in steps:
        row = {
            "step": step,
            "eval_loss": checkpoint.step_info(run_dir, step).get("eval_loss"),
            "names": [name for name, s in names.items() if s == step],
        }
        if verify:
            step_dir = checkpoint.checkpoint_root(run_dir) / str(step)
            row["damage"] = checkpoint.damage(step_dir)
            row["verified"] = checkpoint.verified(step_dir)
        rows.append(row)
    return rows


def find_runs(paths: list[Path]) -> list[Path]:
    """Run directories (with a config.json and a checkpoints folder) at or under ``paths``, sorted."""
    found = set()
    for path in map(Path, paths):
        candidates = (
            [path]
            if (path / checkpoint.CONFIG_FILE).is_file()
            else [p.parent for p in path.rglob(checkpoint.CONFIG_FILE)]
        )
        found |= {p for p in candidates if (p / checkpoint.CHECKPOINT_DIR).is_dir()}
    return sorted(found)

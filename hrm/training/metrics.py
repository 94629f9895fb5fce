"""Training metrics: ``metrics.jsonl``, tensorboardX events in ``tb/`` and a console progress bar."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from tqdm import tqdm

METRICS_FILE = "metrics.jsonl"


def read_metrics(run_dir: Path) -> list[dict]:
    """The records of ``metrics.jsonl``; a line cut short by a kill mid-write (not JSON) is left out."""
    path = Path(run_dir) / METRICS_FILE
    records = []
    for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "step" in record:
            records.append(record)
    return records


class MetricsWriter:
    """Appends one JSON object per log step; on resume drops records past the restored step (and lines cut
    short)."""

    def __init__(self, run_dir: Path, start_step: int, total_steps: int, enabled: bool = True):
        self.enabled = enabled
        self.path = Path(run_dir) / METRICS_FILE
        self.tb = None
        self.bar = None
        if not enabled:
            return
        kept = [r for r in read_metrics(run_dir) if r["step"] <= start_step]
        tmp = self.path.with_name(METRICS_FILE + ".tmp")   # rewritten whole: repaired, never half-written
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(tmp, self.path)
        from tensorboardX import SummaryWriter
        self.tb = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=start_step + 1)
        if sys.stderr.isatty():
            self.bar = tqdm(total=total_steps, initial=start_step, dynamic_ncols=True, unit="step")

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        step = record["step"]
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                self.tb.add_scalar(f"train/{key}", value, step)
        summary = f"loss {record['loss']:.4f} lr {record['lr']:.2e} tok/s {record['tokens_per_sec']:,.0f}"
        if "peak_mem_gb" in record:
            summary += f" mem={record['peak_mem_gb']:.1f}GB"
        if self.bar is not None:
            self.bar.set_postfix_str(summary, refresh=False)
            self.bar.update(step - self.bar.n)
        else:
            print(f"step {step} {summary} grad_norm {record['grad_norm']:.3f}", flush=True)

    def write_eval(self, record: dict) -> None:
        """An evaluation record {"step", "eval_loss"}: metrics.jsonl and tensorboard's eval/loss."""
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        self.tb.add_scalar("eval/loss", record["eval_loss"], record["step"])
        message = f"step {record['step']} eval_loss {record['eval_loss']:.4f}"
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()

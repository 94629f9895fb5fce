"""Training metrics: ``metrics.jsonl``, tensorboardX events in ``tb/``, optionally Weights & Biases, and a console
progress bar (or one line per log step when the console is not a terminal)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from tqdm import tqdm

from hrm.training.monitor import require_wandb

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


# Record keys written under tensorboard's "probe/" section (activation norms) rather than "train/".
PROBE_PREFIXES = ("act_rms_", "state_rms_")


class MetricsWriter:
    """Appends one JSON object per log step; on resume drops records past the restored step (and lines cut
    short). ``wandb_config`` (the run's config dict) also logs every record to a Weights & Biases run named
    after the run directory."""

    def __init__(
        self, run_dir: Path, start_step: int, total_steps: int, enabled: bool = True, wandb_config: dict | None = None
    ):
        self.enabled = enabled
        self.path = Path(run_dir) / METRICS_FILE
        self.tb = None
        self.bar = None
        self.wandb = None
        if not enabled:
            return
        if wandb_config is not None:
            self.wandb = require_wandb().init(
                project="hrm", name=Path(run_dir).name, dir=str(run_dir), config=wandb_config, resume="allow"
            )
        kept = [r for r in read_metrics(run_dir) if r["step"] <= start_step]
        tmp = self.path.with_name(METRICS_FILE + ".tmp")  # rewritten whole: repaired, never half-written
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(tmp, self.path)

        # heavy, kept off the start-up of every command that imports hrm: tensorboardX's writer imports torch
        # whenever it is installed
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
                section = "probe" if key.startswith(PROBE_PREFIXES) else "train"
                self.tb.add_scalar(f"{section}/{key}", value, step)
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if k != "step"}, step=step)
        summary = f"loss {record['loss']:.4f} lr {record['lr']:.2e} tok/s {record['tokens_per_sec']:,.0f}"
        summary += f" mfu {record['mfu']:.1%}" if "mfu" in record else " mfu n/a"
        if "epoch" in record:
            summary += f" epoch {record['epoch']:.2f}" if record["epoch"] >= 0.1 else f" epoch {record['epoch']:.2g}"
        if "peak_mem_gb" in record:
            summary += f" mem={record['peak_mem_gb']:.1f}GB"
        if self.bar is not None:
            self.bar.set_postfix_str(summary, refresh=False)
            self.bar.update(step - self.bar.n)
        else:
            print(f"step {step} {summary} grad_norm {record['grad_norm']:.3f}", flush=True)

    def write_eval(self, record: dict) -> None:
        """An evaluation record {"step", "eval_loss", "eval_perplexity"}: metrics.jsonl and tensorboard's
        eval/loss and eval/perplexity."""
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        for key in ("eval_loss", "eval_perplexity"):
            if key in record:
                self.tb.add_scalar(f"eval/{key[len('eval_') :]}", record[key], record["step"])
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])
        message = f"step {record['step']} eval_loss {record['eval_loss']:.4f}"
        if "eval_perplexity" in record:
            message += f" perplexity {record['eval_perplexity']:.2f}"
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()

"""Compare training runs: PNG curves from their metrics.jsonl.

    python scripts/plot_runs.py runs/a runs/b [--out plots/] [--smooth 0.9]

Writes to ``--out`` (default ``plots/``): ``loss_vs_step.png``, ``loss_vs_time.png`` (wall time from the
logged tokens/s: each record's tokens over its interval), ``eval_loss.png`` and ``lr.png``, one line per run
(labelled by the run directory's name). ``--smooth`` applies an exponential moving average to the training
loss (tensorboard's smoothing; 0 = raw). Needs matplotlib (``pip install matplotlib``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hrm.training.metrics import read_metrics  # noqa: E402


def smoothed(values: list[float], weight: float) -> list[float]:
    out, last = [], None
    for v in values:
        last = v if last is None else weight * last + (1 - weight) * v
        out.append(last)
    return out


def run_curves(run_dir: Path, smooth: float) -> dict:
    """{"step", "loss", "hours", "lr", "eval_step", "eval_loss"} lists from a run's metrics.jsonl."""
    records = read_metrics(run_dir)
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval_loss" in r]
    hours, elapsed, previous, per_step = [], 0.0, 0, _tokens_per_step(run_dir)
    for r in train:  # tokens_per_sec covers the interval since the previous record
        tokens = (r["step"] - previous) * per_step
        elapsed += tokens / r["tokens_per_sec"] if r.get("tokens_per_sec") else 0.0
        hours.append(elapsed / 3600)
        previous = r["step"]
    return {
        "step": [r["step"] for r in train],
        "loss": smoothed([r["loss"] for r in train], smooth),
        "hours": hours,
        "lr": [r["lr"] for r in train],
        "eval_step": [r["step"] for r in evals],
        "eval_loss": [r["eval_loss"] for r in evals],
    }


def _tokens_per_step(run_dir: Path) -> int:
    from hrm.config import Config

    config = Config.load_json(run_dir / "config.json")
    return config.train.batch_size * config.data.seq_len


def plot(curves: dict[str, dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    figures = [
        ("loss_vs_step.png", "step", "loss", "step", "training loss"),
        ("loss_vs_time.png", "hours", "loss", "wall time (hours)", "training loss"),
        ("eval_loss.png", "eval_step", "eval_loss", "step", "held-out loss"),
        ("lr.png", "step", "lr", "step", "learning rate"),
    ]
    written = []
    for name, x, y, x_label, y_label in figures:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for run, c in curves.items():
            if c[y]:
                ax.plot(c[x], c[y], label=run, marker="o" if len(c[y]) < 20 else None)
        ax.set_xlabel(x_label)
        ax.set_ylabel(y_label)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        written.append(out / name)
    return written


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (with metrics.jsonl)")
    parser.add_argument("--out", type=Path, default=Path("plots"), help="folder for the PNGs (default plots/)")
    parser.add_argument("--smooth", type=float, default=0.0, help="EMA weight for the training loss, in [0, 1)")
    args = parser.parse_args(argv)
    missing = [str(r) for r in args.runs if not (r / "metrics.jsonl").is_file()]
    if missing:
        parser.exit(2, f"error: no metrics.jsonl in {', '.join(missing)}; pass hrm.train run directories\n")
    if not 0 <= args.smooth < 1:
        parser.exit(2, f"error: --smooth must be in [0, 1), got {args.smooth}\n")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        parser.exit(2, "error: plotting needs matplotlib: pip install matplotlib\n")
    names = [r.name or str(r) for r in args.runs]
    curves = {
        name if names.count(name) == 1 else str(run): run_curves(run, args.smooth)
        for name, run in zip(names, args.runs)
    }
    for path in plot(curves, args.out):
        print(path)


if __name__ == "__main__":
    main()

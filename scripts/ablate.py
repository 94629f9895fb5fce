"""python scripts/ablate.py --configs A.py B.py ... --task synthetic:NAME --budget steps=N|seconds=N --out DIR
[--seed S] [--examples N] [--extrapolate_length L] [--config.section.key=value ...]

Trains every config on the same data (the task's generator), seed and budget, evaluates each, and writes
``DIR/results.md`` (config, family, parameters, forward FLOPs/token, tokens/s, final train and held-out loss,
exact-match accuracy), ``DIR/results.json`` and the curves ``DIR/loss_vs_step.png``, ``DIR/loss_vs_seconds.png``.
Each config trains in ``DIR/<config name>/`` (``hrm.train``'s run layout; re-running resumes or reuses it).

- ``--budget steps=N``: N optimizer steps each, the cosine schedule spanning them.
- ``--budget seconds=N``: N seconds of training each (compilation not counted, ``hrm.training.loop.train``'s
  ``time_limit_s``); the learning rate warms up and then stays constant (``train.min_lr_ratio=1``), since no
  step count is known in advance.
The configs must agree on every data and train setting (after the overrides, which apply to all), so only the
models differ; the loss is on the answers only (``data.completion_only``). Accuracy is exact match of greedy
generation on fresh examples (``hrm.eval``); ``--extrapolate_length L`` scores task length L too.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import platform
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hrm.cli import ArgumentParser, UsageError, run_main  # noqa: E402

LAST_RECORDS = 5  # final train loss: the mean of the last logged steps (one batch is noisy)
EVAL_POINTS = 5  # held-out evaluations per run (the eval curve)


def parse_budget(text: str) -> tuple[str, float]:
    kind, _, value = text.partition("=")
    try:
        amount = float(value)
    except ValueError:
        amount = 0
    if kind not in ("steps", "seconds") or amount <= 0 or (kind == "steps" and not amount.is_integer()):
        raise UsageError(f"--budget must be steps=N or seconds=N with N > 0 (whole steps), got {text!r}")
    return kind, amount


def ablation_config(path: str, task: str, budget: tuple[str, float], seed: int | None, overrides):
    """Config file ``path`` set up for the ablation: the task as its data (loss on answers), the budget, the
    seed, then the shared overrides."""
    from hrm.config import apply_override, load_config_file

    config = load_config_file(path)
    config.data.dataset, config.data.completion_only = task, True
    kind, amount = budget
    t = config.train
    if kind == "steps":
        t.steps = int(amount)
        t.warmup_steps = min(t.warmup_steps, t.steps // 10)
    else:
        t.steps, t.min_lr_ratio = 10**9, 1.0
    t.save_every = t.steps
    if seed is not None:
        t.seed = seed
    for key, value in overrides:
        apply_override(config, key, value)
    if kind == "steps" and not any(key == "train.eval_every" for key, _ in overrides):
        t.eval_every = max(1, t.steps // EVAL_POINTS)
    return config


def check_comparable(configs) -> None:
    """Only the models may differ: refuse configs whose data or train settings disagree."""
    from hrm.config import all_keys

    def settings(config) -> dict:
        values = {}
        for key in all_keys(config):
            if key.startswith(("data.", "train.")):
                value = config
                for part in key.split("."):
                    value = getattr(value, part)
                values[key] = value
        return values

    first = settings(configs[0])
    for config in configs[1:]:
        other = settings(config)
        changed = [key for key in first if first[key] != other[key]]
        if changed:
            raise UsageError(
                f"configs '{configs[0].name}' and '{config.name}' differ in "
                f"{', '.join(f'{k}: {first[k]} vs {other[k]}' for k in changed)}; an ablation compares "
                f"models only: align them, e.g. --config.{changed[0]}={first[changed[0]]}"
            )


def run_one(config, run_dir: Path, budget, examples: int, extrapolate_length: int | None, log=print) -> dict:
    """Train ``config`` in ``run_dir`` within the budget, then evaluate it; one results row."""
    import hrm
    from hrm.config import resolve_config
    from hrm.eval import perplexity
    from hrm.models.accounting import flops_per_token, parameter_table
    from hrm.training.loop import train
    from hrm.training.metrics import read_metrics

    kind, amount = budget
    train(config, run_dir, log=log, time_limit_s=amount if kind == "seconds" else None)
    model = hrm.load(run_dir)
    records = read_metrics(run_dir)
    steps = [r for r in records if "loss" in r]
    resolved = resolve_config(config)
    counts = parameter_table(resolved.model)
    held_out = perplexity(model, model.config.data, "held_out", config.train.batch_size, log=log)
    row = {
        "config": config.name,
        "family": config.model.family,
        "parameters": sum(counts.values()),
        "flops_per_token": flops_per_token(resolved.model, counts, config.data.seq_len),
        "tokens_per_sec": statistics.median(r["tokens_per_sec"] for r in steps[1:] or steps),
        "steps": model.step,
        "seconds": steps[-1].get("seconds", 0.0),
        "train_loss": statistics.mean(r["loss"] for r in steps[-LAST_RECORDS:]),
        "eval_loss": held_out["loss_per_token"],
        **accuracy(model, config.data.dataset, config.data.synthetic, examples),
    }
    if extrapolate_length:
        longer = dataclasses.replace(config.data.synthetic, length=extrapolate_length)
        row.update({f"{k}_longer": v for k, v in accuracy(model, config.data.dataset, longer, examples).items()})
    row["curve"] = [{k: r[k] for k in ("step", "loss", "seconds") if k in r} for r in steps]
    row["eval_curve"] = [{"step": r["step"], "eval_loss": r["eval_loss"]} for r in records if "eval_loss" in r]
    return row


def accuracy(model, task: str, synthetic_cfg, examples: int) -> dict:
    from hrm.eval import task_accuracy

    result = task_accuracy(model, task, synthetic_cfg, examples)
    return {"accuracy": result["exact_match"], "char_match": result["char_match"]}


def plot_curves(out: Path, rows: list[dict]) -> list[Path]:
    """Training loss (and held-out loss, dashed) of every run against steps and against training seconds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for axis, label in (("step", "step"), ("seconds", "training seconds (compilation excluded)")):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for row in rows:
            curve = [r for r in row["curve"] if axis in r]
            (line,) = ax.plot([r[axis] for r in curve], [r["loss"] for r in curve], label=f"{row['config']} train")
            if axis == "step" and row["eval_curve"]:
                ax.plot(
                    [r["step"] for r in row["eval_curve"]],
                    [r["eval_loss"] for r in row["eval_curve"]],
                    "--o",
                    color=line.get_color(),
                    markersize=3,
                    label=f"{row['config']} held-out",
                )
        ax.set_xlabel(label)
        ax.set_ylabel("cross-entropy on answers (nats/token)")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / f"loss_vs_{axis}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def machine() -> str:
    import os

    import jax

    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {platform.system()}; "
        f"Python {platform.python_version()}, jax {jax.__version__} on {jax.default_backend()}"
    )


PLOTS_EXTRA = "pip install 'hrm-mamba[plots]' (matplotlib)"


def can_plot() -> bool:
    """Whether matplotlib (the ``plots`` extra) imports; checked before any training."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def results_markdown(
    rows: list[dict], command: str, task: str, sizes: str, budget, when: str, plots: bool = True
) -> str:
    kind, amount = budget
    longer = [f"{k}_longer" for k in ("accuracy", "char_match") if any(f"{k}_longer" in r for r in rows)]
    header = (
        "| config | family | parameters | FLOPs/token | tokens/s | steps | train s | train loss | eval loss "
        "| accuracy | char match |" + "".join(f" {k.replace('_', ' ')} |" for k in longer)
    )
    lines = [
        f"# Ablation: {task} ({sizes}), budget {kind}={amount:g}",
        "",
        f"Command: `{command}`",
        f"Machine: {machine()}; {when}",
        "",
        header,
        "|" + "---|" * (header.count("|") - 1),
    ]
    for r in rows:
        cells = [
            r["config"],
            r["family"],
            f"{r['parameters']:,}",
            f"{r['flops_per_token'] / 1e6:.2f}M",
            f"{r['tokens_per_sec']:,.0f}",
            str(r["steps"]),
            f"{r['seconds']:.0f}",
            f"{r['train_loss']:.4f}",
            f"{r['eval_loss']:.4f}",
            f"{r['accuracy']:.3f}",
            f"{r['char_match']:.3f}",
        ]
        cells += [f"{r.get(k, float('nan')):.3f}" for k in longer]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "FLOPs/token: forward, at the row length (`hrm.info`). tokens/s: median over logged intervals after "
        "the first (row tokens, padding included). train s: training seconds, compilation excluded, held-out "
        f"evaluations included. train loss: mean of the last {LAST_RECORDS} logged steps; eval loss: every "
        "held-out target (`hrm.eval --perplexity`), both on answer tokens only. accuracy: exact match of greedy "
        "generation on fresh examples; char match: the share of answer characters right at their position"
        + ("; *longer*: the same at the extrapolation length." if longer else "."),
        "",
        "![loss vs step](loss_vs_step.png) ![loss vs seconds](loss_vs_seconds.png)"
        if plots
        else f"(no loss curves: matplotlib is not installed; {PLOTS_EXTRA} and re-run to draw them)",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    from hrm.config import parse_overrides

    parser = ArgumentParser(prog="python scripts/ablate.py", description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", required=True, help="config files, one model each")
    parser.add_argument("--task", required=True, help="synthetic:NAME (hrm/data/synthetic.py)")
    parser.add_argument("--budget", required=True, help="steps=N or seconds=N per config")
    parser.add_argument("--out", required=True, help="output folder (a run folder per config)")
    parser.add_argument("--seed", type=int, help="train.seed for every config (default: the configs')")
    parser.add_argument("--examples", type=int, default=200, help="fresh examples scored per run")
    parser.add_argument("--extrapolate_length", type=int, help="also score the task at this data.synthetic.length")
    args, extra = parser.parse_known_args(argv)
    budget = parse_budget(args.budget)
    from hrm.data.synthetic import sizes, task_name

    task = "synthetic:" + task_name(args.task)
    if args.examples < 1:
        raise UsageError(f"--examples must be positive, got {args.examples}")
    overrides = parse_overrides(extra)
    configs = [ablation_config(path, task, budget, args.seed, overrides) for path in args.configs]
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise UsageError(f"config names repeat ({', '.join(names)}); each config needs its own run folder")
    check_comparable(configs)
    length, targets, vocab = sizes(task_name(task), configs[0].data.synthetic)
    if args.extrapolate_length:
        sizes(task_name(task), dataclasses.replace(configs[0].data.synthetic, length=args.extrapolate_length))
    plots = can_plot()
    if not plots:
        print(f"note: no loss curves without matplotlib ({PLOTS_EXTRA}); the results table is still written")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for config in configs:
        print(f"== {config.name} ({config.model.family}) on {task}, budget {args.budget}", flush=True)
        rows.append(run_one(config, out / config.name, budget, args.examples, args.extrapolate_length))
    task_sizes = ", ".join(f"{k} {v}" for k, v in (("length", length), ("targets", targets), ("vocab", vocab)) if v)
    command = "python scripts/ablate.py " + " ".join(argv)
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    (out / "results.json").write_text(
        json.dumps(
            {"command": command, "task": task, "budget": args.budget, "machine": machine(), "date": when, "rows": rows},
            indent=1,
        )
    )
    if plots:
        plot_curves(out, rows)
    markdown = results_markdown(rows, command, task, task_sizes, budget, when, plots)
    (out / "results.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    run_main(main)

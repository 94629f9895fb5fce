"""python -m hrm.memtest --config configs/X.py | --model_size NAME | --test_all [--vram 16gb] [--batch_size B]
[--seq_len L] [--vram_safety_margin MB] [--json] [--config.section.key=value ...]

"Test memory first": compiles (does not run) the config's real train step — optimizer, accumulation, remat,
dtype — and reports one device's parameter, optimizer, temporary and total bytes from XLA's compiled memory
analysis, and whether that fits the VRAM minus the safety margin. When it does not, it also names the largest
micro-batch that does. On a CPU the figure is XLA's CPU estimate of the GPU's (see hrm/training/memory.py).
"""

from __future__ import annotations

import json

from hrm.cli import ArgumentParser, UsageError, add_config_source, run_main
from hrm.config import (
    DEFAULT_SAFETY_MARGIN_MB,
    build_config,
    config_dir,
    model_size_config,
    parse_overrides,
    resolve_config,
)
from hrm.training.memory import GIB, MIB, cached_train_step_memory, gpu_config, largest_micro_batch, parse_vram

# The VRAM figure each config is sized for (docs/MODELS.md "Documented sizes": the upper end of each range), in
# GB (GiB); --test_all checks every config against it.
DOCUMENTED_VRAM_GB = {
    "mamba_small": 6,
    "mamba_medium_lite": 10,
    "mamba_medium_plus": 12,
    "mamba_medium_x": 14,
    "mamba_medium": 16,
    "mamba_medium_extra": 18,
    "mamba_large_lite": 20,
    "mamba_large_plus": 24,
    "mamba_large": 32,
    "mamba_xlarge": 50,
    "mamba_xxlarge": 80,
    "hybrid_small": 10,
    "hybrid_small_mini": 13,
    "hybrid_small_standard": 14.5,
    "hybrid_small_plus": 15,
    "hybrid_small_pro": 16,
    "hybrid_medium": 20,
    "hybrid_large": 45,
    "hybrid_7030_small": 16,
    "hybrid_amam_1b": 80,
    "recursive_48x5": 6,
}


def report(config, vram_bytes: int | None, margin_mb: float) -> dict:
    """The memory record of one config: its step as configured, and the largest fitting micro-batch when
    that does not fit ``vram_bytes - margin``."""
    config = gpu_config(resolve_config(config))
    memory = cached_train_step_memory(config)
    record = {
        "config": config.name,
        **memory.to_dict(),
        "global_batch_size": config.train.batch_size,
        "vram_bytes": vram_bytes,
        "safety_margin_mb": margin_mb,
        "fits": None,
    }  # None: no VRAM to fit
    if vram_bytes is not None:
        budget = vram_bytes - int(margin_mb * MIB)
        record["fits"] = memory.peak_bytes <= budget
        if not record["fits"]:
            best = largest_micro_batch(config, budget)
            record["largest_fitting_micro_batch"] = best.micro_batch_size if best else None
    return record


def _gb(n: int | None) -> str:
    return "-" if n is None else f"{n / GIB:.2f}"


def describe(record: dict) -> str:
    lines = [
        f"{record['config']}: micro-batch {record['micro_batch_size']} x {record['accumulation_steps']} "
        f"accumulation = global batch {record['global_batch_size']}, seq_len {record['seq_len']}",
        f"  parameters {_gb(record['param_bytes'])} GB, optimizer state {_gb(record['optimizer_bytes'])} GB, "
        f"batch {_gb(record['batch_bytes'])} GB, temporaries {_gb(record['temp_bytes'])} GB",
        f"  total {_gb(record['total_bytes'])} GB per device (XLA compiled memory analysis)",
        f"  evaluation at the same micro-batch: temporaries {_gb(record['eval_temp_bytes'])} GB, total "
        f"{_gb(record['eval_total_bytes'])} GB with the train state resident",
    ]
    if record.get("vram_bytes") is not None:
        budget = record["vram_bytes"] - record["safety_margin_mb"] * MIB
        verdict = "fits" if record["fits"] else "does NOT fit"
        lines.append(
            f"  {verdict} {_gb(record['vram_bytes'])} GB VRAM - {record['safety_margin_mb']:g} MB margin "
            f"= {_gb(budget)} GB"
        )
        if not record["fits"]:
            best = record["largest_fitting_micro_batch"]
            lines.append(
                f"  largest micro-batch that fits: {best} (--config.train.accumulation_steps="
                f"{record['global_batch_size'] // best})"
                if best
                else "  even micro-batch 1 does not fit: lower data.seq_len, set model.remat=block or shard"
            )
    return "\n".join(lines)


def table(records: list[dict]) -> str:
    head = (
        "| config | micro x accum | seq | params GB | optimizer GB | temp GB | total GB | eval total GB | VRAM GB "
        "| fits |"
    )
    rows = [head, "|" + "---|" * 10]
    for r in records:
        rows.append(
            f"| {r['config']} | {r['micro_batch_size']} x {r['accumulation_steps']} | {r['seq_len']} | "
            f"{_gb(r['param_bytes'])} | {_gb(r['optimizer_bytes'])} | {_gb(r['temp_bytes'])} | "
            f"{_gb(r['total_bytes'])} | {_gb(r['eval_total_bytes'])} | {_gb(r['vram_bytes'])} | "
            f"{'yes' if r.get('fits') else 'NO'} |"
        )
    return "\n".join(rows)


def main(argv: list[str]) -> None:
    parser = ArgumentParser(prog="python -m hrm.memtest", description=__doc__.splitlines()[0])
    source = add_config_source(parser)
    source.add_argument("--test_all", action="store_true", help="every documented config at its documents' VRAM")
    parser.add_argument(
        "--vram", help="GPU memory: 24gb, 24 or 20.5 (GB = GiB); default: the documents' figure for the config, if any"
    )
    parser.add_argument(
        "--vram_safety_margin",
        type=float,
        default=DEFAULT_SAFETY_MARGIN_MB,
        help=f"MB kept free (default {DEFAULT_SAFETY_MARGIN_MB})",
    )
    parser.add_argument("--batch_size", type=int, help="global batch (train.batch_size)")
    parser.add_argument("--accumulation_steps", type=int, help="micro-batches per step (train.accumulation_steps)")
    parser.add_argument("--seq_len", type=int, help="tokens per row (data.seq_len)")
    parser.add_argument("--json", action="store_true", help="end with one JSON object per config")
    args, extra = parser.parse_known_args(argv)

    overrides = parse_overrides(extra)
    for flag, key in (
        ("batch_size", "train.batch_size"),
        ("accumulation_steps", "train.accumulation_steps"),
        ("seq_len", "data.seq_len"),
    ):
        if getattr(args, flag) is not None:
            overrides.insert(0, (key, str(getattr(args, flag))))
    if args.vram_safety_margin < 0:
        raise UsageError(f"--vram_safety_margin must be >= 0 MB, got {args.vram_safety_margin}")
    vram = parse_vram(args.vram) if args.vram else None
    if args.test_all:
        paths = [config_dir() / f"{name}.py" for name in DOCUMENTED_VRAM_GB]
    else:
        paths = [args.config or model_size_config(args.model_size)]
    records = []
    for path in paths:
        config = build_config(str(path), overrides)
        documented = DOCUMENTED_VRAM_GB.get(config.name)
        budget = vram if vram is not None else (int(documented * GIB) if documented else None)
        record = report(config, budget, args.vram_safety_margin)
        records.append(record)
        print(describe(record), flush=True)
    if args.test_all:
        print(table(records))
    if args.json:
        for record in records:
            print(json.dumps(record))


def cli() -> None:
    """The console script (pyproject.toml [project.scripts])."""
    run_main(main)


if __name__ == "__main__":
    cli()

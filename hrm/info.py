"""python -m hrm.info --config configs/X.py [--config.section.key=value ...]

Prints the model's parameters per component, effective depth, forward FLOPs per token and, when the config
file states it (``DOCUMENTED_PARAMS``), the documented size (docs/MODELS.md) next to ours. Shapes come from
``nnx.eval_shape`` (``jax.eval_shape``): nothing is allocated, so the largest configs inspect instantly.
No tokenizer is needed when ``model.vocab_size`` is set; otherwise the data tokenizer sets it.
"""

from __future__ import annotations

import runpy

from hrm.cli import ArgumentParser, add_config_source, run_main
from hrm.config import Config, build_config, model_size_config, parse_overrides, resolve_config
from hrm.models.accounting import effective_depth, flops_per_token, parameter_table


def documented(config_path: str) -> tuple[int | None, str]:
    if not config_path.endswith(".py"):  # a JSON config states no documented size
        return None, ""
    module = runpy.run_path(config_path)
    return module.get("DOCUMENTED_PARAMS"), module.get("DOCUMENTED_SOURCE", "")


def human(n: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def describe(config: Config, config_path: str | None = None) -> str:
    config = resolve_config(config)
    cfg = config.model
    counts = parameter_table(cfg)
    total = sum(counts.values())
    depth, depth_text = effective_depth(cfg)
    lines = [
        f"{config.name}: family {cfg.family}, d_model {cfg.d_model}, vocab {cfg.vocab_size}, "
        f"seq_len {config.data.seq_len}"
    ]
    width = max(len(k) for k in counts)
    for name, count in sorted(counts.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {name:<{width}}  {count:>14,}  {100 * count / total:5.1f}%")
    lines.append(
        f"  {'total':<{width}}  {total:>14,}  ({human(total)}; non-embedding "
        f"{human(total - counts.get('embedding (tied head)', 0))})"
    )
    lines.append(f"effective depth: {depth} ({depth_text})")
    lines.append(f"forward FLOPs per token: {human(flops_per_token(cfg, counts, config.data.seq_len))} (training ~3x)")
    if config_path:
        stated, source = documented(config_path)
        if stated:
            lines.append(
                f"documented size: {human(stated)} ({source}); ours: {human(total)} "
                f"({total / stated:.2f}x); the config's docstring explains the difference"
            )
        else:
            lines.append(f"documented size: not stated{' (' + source + ')' if source else ''}; ours: {human(total)}")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    parser = ArgumentParser(prog="python -m hrm.info", description=__doc__.splitlines()[0])
    add_config_source(parser)
    args, extra = parser.parse_known_args(argv)
    config_path = str(args.config or model_size_config(args.model_size))
    config = build_config(config_path, parse_overrides(extra))
    print(describe(config, config_path))


def cli() -> None:
    """The console script (pyproject.toml [project.scripts])."""
    run_main(main)


if __name__ == "__main__":
    cli()

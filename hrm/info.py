"""python -m hrm.info --config configs/X.py [--config.section.key=value ...]

Prints the model's parameters per component, effective depth, forward FLOPs per token and, when the config
file states it (``DOCUMENTED_PARAMS``), the documented size (docs/MODELS.md) next to ours. Shapes come from
``nnx.eval_shape`` (``jax.eval_shape``): nothing is allocated, so the largest configs inspect instantly.
No tokenizer is needed when ``model.vocab_size`` is set; otherwise the data tokenizer sets it.
"""

from __future__ import annotations

import re
import runpy
from collections import defaultdict

from hrm.cli import ArgumentParser, add_config_source, run_main
from hrm.config import Config, resolve_config

LAYER_COMPONENTS = {
    "mixer": "mamba",
    "mamba": "mamba",
    "attn": "attention",
    "mlp": "mlp",
    "recursive": "recursive processor",
    "attention": "hierarchical attention",
    "fuse": "fusion",
    "alpha": "fusion",
}


def _names(path) -> list:
    out = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                out.append(getattr(k, attr))
                break
    return out


def component_of(path) -> str:
    names = [n for n in _names(path) if n != "value"]
    modules = [n for n in names[:-1] if isinstance(n, str)]
    if any("norm" in n for n in modules) or names[-1] == "scale" and "adapters" not in modules:
        return "norms"
    if names[0] == "layers":
        key = [n for n in names if isinstance(n, str) and not re.fullmatch(r"layer\d+", n)][1]  # past a scanned unit's
        return LAYER_COMPONENTS.get(key, key)
    if names[0] == "embed":
        return "embedding (tied head)"
    return {"adapters": "depth adapters", "lm_head": "lm head"}.get(names[0], str(names[0]))


def parameter_table(cfg) -> dict[str, int]:
    """Parameter count per component, from shapes only: those of 1- and 2-layer versions of the model, as every
    family's count is linear in its layers (for ``hybrid_pattern``, in each letter's layers). Tracing every
    layer abstractly would take minutes for thousands of layers, and sizes are checked before that."""
    import dataclasses

    def table(**change) -> dict[str, int]:
        return _full_parameter_table(dataclasses.replace(cfg, **change))

    def per_layer(letter: str) -> tuple[dict, dict]:
        one = table(n_layers=1, layer_pattern=letter) if letter else table(n_layers=1)
        two = table(n_layers=2, layer_pattern=2 * letter) if letter else table(n_layers=2)
        return one, {k: two.get(k, 0) - one.get(k, 0) for k in two}

    if cfg.family == "hybrid_pattern":
        letters = {c: cfg.layer_pattern.count(c) for c in "MA" if c in cfg.layer_pattern}
    else:
        letters = {"": cfg.n_layers}
    base = None
    counts = defaultdict(int)
    for letter, n in letters.items():
        one, step = per_layer(letter)
        base = base or {k: one.get(k, 0) - step.get(k, 0) for k in one}
        for k, v in step.items():
            counts[k] += v * n
    for k, v in base.items():
        counts[k] += v
    return {k: v for k, v in counts.items() if v}


def _full_parameter_table(cfg) -> dict[str, int]:
    import jax
    from flax import nnx

    from hrm.models import build_model

    model = nnx.eval_shape(lambda: build_model(cfg))
    counts = defaultdict(int)
    for path, leaf in jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param)):
        counts[component_of(path)] += int(leaf.size)
    return dict(counts)


def effective_depth(cfg) -> tuple[int, str]:
    """Effective layers and what makes them up (the family's ``work``)."""
    from hrm.models import FAMILIES

    work = FAMILIES[cfg.family].work(cfg)
    return work.depth, work.description


def flops_per_token(cfg, counts: dict[str, int], context: int) -> int:
    """Forward FLOPs per token: 2 x weights applied (shared weights once per application, the family's
    ``work``), the tied head, attention scores/values over an average causal context of ``context / 2`` (scale
    ``s`` attends only its ``1/s`` pooled keys, hrm/models/attention.py: 1.75x one attention at scales 1,2,4),
    and the selective scan (~9 x d_inner x d_state per Mamba application). Model FLOPs: the blocked kernel also
    computes the masked half of each diagonal block, about ``BLOCK_SIZE / 2`` more keys per query."""
    from hrm.models import FAMILIES

    work = FAMILIES[cfg.family].work(cfg)
    applied = sum(
        count * work.weight_reuse.get(name, 1) for name, count in counts.items() if name != "embedding (tied head)"
    )
    d_inner = cfg.expand * cfg.d_model
    return int(
        2 * cfg.d_model * cfg.vocab_size
        + 2 * applied
        + 4 * cfg.d_model * (context / 2) * work.attention
        + 9 * d_inner * cfg.d_state * work.scans
    )


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
    from hrm.config import model_size_config
    from hrm.train import build_config, parse_overrides

    config_path = str(args.config or model_size_config(args.model_size))
    config = build_config(config_path, parse_overrides(extra))
    print(describe(config, config_path))


def cli() -> None:
    """The console script (pyproject.toml [project.scripts])."""
    run_main(main)


if __name__ == "__main__":
    cli()

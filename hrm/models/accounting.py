"""Parameter and FLOP accounting from shapes alone: parameters per component, effective depth, forward FLOPs.

Shapes come from ``nnx.eval_shape``: nothing is allocated, so the largest configs are counted instantly.
``python -m hrm.info`` prints these; training checks sizes (hrm.training.memory) and reports MFU
(hrm.training.monitor) with them.
"""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict

import jax
from flax import nnx

from hrm.models import FAMILIES, build_model

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

    def table(**change) -> dict[str, int]:
        return full_parameter_table(dataclasses.replace(cfg, **change))

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


def full_parameter_table(cfg) -> dict[str, int]:
    """Parameter count per component from the shapes of the whole model (``parameter_table`` extrapolates)."""
    model = nnx.eval_shape(lambda: build_model(cfg))
    counts = defaultdict(int)
    for path, leaf in jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param)):
        counts[component_of(path)] += int(leaf.size)
    return dict(counts)


def effective_depth(cfg) -> tuple[int, str]:
    """Effective layers and what makes them up (the family's ``forward_applications``)."""
    forward = FAMILIES[cfg.family].forward_applications(cfg)
    return forward.depth, forward.description


def flops_per_token(cfg, counts: dict[str, int], context: int) -> int:
    """Forward FLOPs per token: 2 x weights applied (shared weights once per application, the family's
    ``forward_applications``), the tied head, attention scores/values over an average causal context of
    ``context / 2`` (scale ``s`` attends only its ``1/s`` pooled keys, hrm/models/attention.py: 1.75x one
    attention at scales 1,2,4), and the selective scan (~9 x d_inner x d_state per Mamba application). Model
    FLOPs: the blocked kernel also computes the masked half of each diagonal block, about ``BLOCK_SIZE / 2`` more
    keys per query."""
    forward = FAMILIES[cfg.family].forward_applications(cfg)
    applied = sum(
        count * forward.weight_reuse.get(name, 1) for name, count in counts.items() if name != "embedding (tied head)"
    )
    d_inner = cfg.expand * cfg.d_model
    return int(
        2 * cfg.d_model * cfg.vocab_size
        + 2 * applied
        + 4 * cfg.d_model * (context / 2) * forward.attention
        + 9 * d_inner * cfg.d_state * forward.scans
    )

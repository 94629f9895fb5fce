"""Model families by name. Every model maps (tokens, cache=None, segment_ids=None) → (logits, cache)
and has ``init_cache(batch)`` for recurrent decoding.

Dimension letters used in shape comments throughout ``hrm/models`` (Mamba paper, Gu & Dao 2023, §3 and
Algorithm 2; state-spaces/mamba ``mamba_ssm/modules/mamba_simple.py``):

  b        batch (rows)                          l   length (tokens in the chunk)
  d        d_model, the residual stream width    v   vocabulary size
  d_inner  expand x d, the SSM's channels (``channels`` in ``kernels/``, ``di`` as a local in mamba.py)
  n        d_state, the SSM state per channel    r   dt_rank, the rank of the Δ projection
  k        d_conv, the causal conv's width       h   attention heads (head width d / h)
  s        an attention scale (keys pooled over s tokens)
"""

from __future__ import annotations

import jax
from flax import nnx

from hrm.config import ConfigError, ModelConfig
from hrm.models.hybrid import HybridPatternLM, HybridRecursiveLM
from hrm.models.lm import MambaLM, per_layer, stack_layer_params, unstack_layer_params
from hrm.models.recursive import RecursiveSSM

FAMILIES = {
    "mamba": MambaLM,
    "hybrid_recursive": HybridRecursiveLM,
    "recursive_ssm": RecursiveSSM,
    "hybrid_pattern": HybridPatternLM,
}


def build_model(cfg: ModelConfig, seed: int = 0) -> nnx.Module:
    if cfg.family not in FAMILIES:
        raise ConfigError(f"config key 'model.family' must be one of {', '.join(FAMILIES)}, got {cfg.family!r}")
    if cfg.vocab_size <= 0:
        raise ConfigError("model.vocab_size is unset; build models through hrm.training so the tokenizer sets it")
    return FAMILIES[cfg.family](cfg, rngs=nnx.Rngs(seed))


def count_params(model: nnx.Module) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def relayout_layers(params: dict, like: dict, cfg: ModelConfig) -> dict:
    """``params`` of a ``cfg`` model with its layers in the layout (stacked or per-layer, ``model.scan_layers``)
    of ``like``: a fine-tuning start from a run saved in the other layout."""
    if per_layer(params) == per_layer(like):
        return params
    size = FAMILIES[cfg.family].unit_size(cfg) or 1
    return unstack_layer_params(params, size) if per_layer(like) else stack_layer_params(params, size)

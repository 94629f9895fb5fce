"""How parameters are made: the weight-decay mark.

A parameter that must not be decayed carries ``weight_decay=False`` in its ``nnx.Param`` metadata from the
moment it is created; the optimizer's mask reads the marks (``decays``), never names or shapes. Unmarked
parameters decay. The marks live in the graph definition only: the parameter pure dict, and so every
checkpoint, is the same with or without them.

What is marked (no decay) follows mamba-ssm, whose ``A_log`` and ``D`` carry ``_no_weight_decay`` and whose
training recipes exempt biases and norms, and nanoGPT (decay the matrices that multiply activations, not
biases or gains): every bias (linears', the conv's, dt_proj's, which sets Δ's init range), norm scales,
``A_log``, ``D``, and the per-channel or scalar gains and offsets (the depth adapters' scale and shift, the
hybrid's fusion weight α, the attention-scale logits). Decayed: every kernel (projections, the conv, LoRA
factors) and the embedding, which is also the tied LM head (nanoGPT decays its tied ``wte``; hrm did before
marks existed).
"""

from __future__ import annotations

import jax
from flax import nnx

NO_DECAY = {"weight_decay": False}


def no_decay(value: jax.Array) -> nnx.Param:
    """A parameter weight decay leaves alone."""
    return nnx.Param(value, **NO_DECAY)


def linear(*args, **kwargs) -> nnx.Linear:
    """``nnx.Linear`` whose bias (if any) is not decayed."""
    return nnx.Linear(*args, bias_metadata=NO_DECAY, **kwargs)


def rms_norm(*args, **kwargs) -> nnx.RMSNorm:
    """``nnx.RMSNorm`` whose scale is not decayed."""
    return nnx.RMSNorm(*args, scale_metadata=NO_DECAY, **kwargs)


def decays(variable: nnx.Variable) -> bool:
    """Whether weight decay applies to ``variable`` (its mark; unmarked parameters decay)."""
    return isinstance(variable, nnx.Param) and variable.get_metadata().get("weight_decay", True)


def decay_mask(graphdef: nnx.GraphDef, params: dict) -> dict:
    """The parameter pure dict's structure with ``decays`` of each parameter: the marks come from ``graphdef``
    (``params`` may be arrays, tracers or shapes)."""
    state = nnx.state(nnx.merge(graphdef, params))
    return nnx.to_pure_dict(jax.tree.map(decays, state, is_leaf=lambda x: isinstance(x, nnx.Variable)))

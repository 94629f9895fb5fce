"""How parameters are made: the initialisers the layers share and the weight-decay mark.

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

from hrm.config import ModelConfig

# PyTorch's default Linear/Conv init, kaiming_uniform(a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_default_init = nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def out_init(cfg: ModelConfig):
    """The init of a projection that writes into the residual stream (Mamba's out_proj, attention's, the MLP's
    last): ``torch_default_init`` scaled by 1/sqrt(n_layers) with ``rescale_prenorm_residual`` (GPT-2's
    rescaled residual init, as state-spaces/mamba), so the stream's variance does not grow with depth."""
    if cfg.rescale_prenorm_residual:
        return nnx.initializers.variance_scaling(1 / (3 * cfg.n_layers), "fan_in", "uniform")
    return torch_default_init


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

"""Weight decay follows the parameters' marks (hrm/models/params.py): one AdamW step with zero gradients moves
exactly the decayed parameters, in every family, scanned and unrolled, with every optional parameter present."""

import dataclasses

import jax
import jax.numpy as jnp
import optax
import pytest

from hrm.config import Config, ModelConfig, TrainConfig
from hrm.training.optimizer import make_optimizer
from hrm.training.state import init_model

BASE = ModelConfig(
    d_model=16, n_layers=2, d_state=4, n_heads=2, vocab_size=32, bias=True, tie_embeddings=False, max_cache_len=16
)
FAMILIES = {
    "mamba": {},
    "hybrid_recursive": {"max_recursion_depth": 2, "attention_scales": (1, 2)},
    "recursive_ssm": {"recurrent_depth": 2, "adapter_rank": 2},
    "hybrid_pattern": {"layer_pattern": "AM", "n_layers": 2},
}
# last path name → decayed; a parameter named otherwise fails the test until it is classified here
DECAYED = {"kernel", "conv_kernel", "embedding", "lora_a", "lora_b"}
NOT_DECAYED = {"bias", "conv_bias", "scale", "shift", "A_log", "D", "alpha", "scale_logits"}


@pytest.mark.parametrize("scan_layers", [True, False])
@pytest.mark.parametrize("family", FAMILIES)
def test_weight_decay_moves_matrices_and_never_biases_norms_or_ssm_parameters(family, scan_layers):
    cfg = dataclasses.replace(BASE, family=family, scan_layers=scan_layers, **FAMILIES[family])
    graphdef, params = init_model(Config(model=cfg))
    optimizer = make_optimizer(TrainConfig(lr=0.1, weight_decay=0.5, warmup_steps=0, steps=10, grad_clip=0), graphdef)

    @jax.jit  # one compile (eager, each parameter's ops compile on their own)
    def moved(params):
        params = jax.tree.map(jnp.ones_like, params)  # lora_b, scale, shift start at 0: decay would not show
        zeros = jax.tree.map(jnp.zeros_like, params)
        updates, _ = optimizer.update(zeros, optimizer.init(params), params)
        return jax.tree.map(lambda u: jnp.any(u != 0), updates)

    moved = jax.tree.map(bool, moved(params))
    seen = set()
    for path, did in jax.tree_util.tree_flatten_with_path(moved)[0]:
        name, where = str(path[-1].key), jax.tree_util.keystr(path)
        seen.add(name)
        assert name in DECAYED | NOT_DECAYED, f"{where}: classify the new parameter in DECAYED or NOT_DECAYED"
        assert did == (name in DECAYED), f"{where} {'is' if did else 'is not'} decayed"
    assert {"bias", "scale", "kernel", "A_log", "D", "conv_bias", "embedding"} <= seen


def test_weight_decay_without_the_model_is_refused():
    with pytest.raises(ValueError, match="graphdef"):
        make_optimizer(TrainConfig(weight_decay=0.1))
    assert isinstance(make_optimizer(TrainConfig(weight_decay=0.0)), optax.GradientTransformation)

"""Dropout with ``model.scan_layers``: each layer draws the same masks scanned as unrolled (the layer index folded
into one key the stack shares), so a training step with dropout gives the same loss and gradients either way."""

import dataclasses

import jax
import numpy as np
import pytest

from hrm.config import Config, ModelConfig
from hrm.models import FAMILIES
from hrm.models.lm import stack_layer_params
from hrm.training.state import accumulated_gradients, init_model

VOCAB = 40
TINY = dict(d_model=16, d_state=4, n_heads=2, max_cache_len=16, vocab_size=VOCAB, dropout=0.3)
CONFIGS = {
    "mamba": ModelConfig(n_layers=3, **TINY),
    "hybrid_recursive": ModelConfig(family="hybrid_recursive", n_layers=2, max_recursion_depth=2, **TINY),
    "hybrid_pattern": ModelConfig(family="hybrid_pattern", n_layers=4, layer_pattern="AMAM", **TINY),
    # 3 blocks in segments of 2: a scanned segment of 2, then one of 1
    "recursive_ssm": ModelConfig(family="recursive_ssm", n_layers=3, recurrent_depth=2, checkpoint_segments=2, **TINY),
}


def batch(seed=0):
    tokens = np.random.default_rng(seed).integers(0, VOCAB, (4, 13))
    return {
        "inputs": tokens[:, :-1],
        "targets": tokens[:, 1:],
        "mask": np.ones((4, 12), bool),
        "segment_ids": np.repeat([[1] * 5 + [2] * 7], 4, axis=0),
    }


def gradients(config: Config):
    """The train step's (gradients, metrics), jitted."""
    graphdef, _ = init_model(config)
    return jax.jit(lambda params, key: accumulated_gradients(graphdef, params, batch(), 1, key))


@pytest.mark.parametrize("family", CONFIGS)
def test_a_dropout_training_step_is_the_same_scanned_and_unrolled(family):
    cfg = CONFIGS[family]
    scanned, unrolled = Config(model=cfg), Config(model=dataclasses.replace(cfg, scan_layers=False))
    _, params = init_model(unrolled)
    size = FAMILIES[family].unit_size(cfg)
    key = jax.random.PRNGKey(7)
    step = gradients(unrolled)
    grads_u, metrics_u = step(params, key)
    grads_s, metrics_s = gradients(scanned)(stack_layer_params(params, size), key)
    _, metrics_other = step(params, jax.random.PRNGKey(8))
    assert abs(float(metrics_u["loss"]) - float(metrics_other["loss"])) > 1e-3, "the masks follow the key"
    np.testing.assert_allclose(metrics_s["loss"], metrics_u["loss"], rtol=1e-5)
    jax.tree.map(
        lambda s, u: np.testing.assert_allclose(s, u, rtol=1e-4, atol=1e-6),
        grads_s,
        stack_layer_params(grads_u, size),
    )

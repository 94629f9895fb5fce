"""model.dropout: on in the train step only, deterministic per seed, and a no-op at rate 0."""

import dataclasses

import jax
import numpy as np
import pytest

from hrm.config import ModelConfig
from hrm.training.loop import train
from hrm.training.state import forward_terms, init_model
from tests.helpers import small_config

FAMILIES = {
    "mamba": {},
    "hybrid_recursive": {"n_heads": 2, "max_recursion_depth": 2},
    "recursive_ssm": {"recurrent_depth": 2},
    "hybrid_pattern": {"layer_pattern": "MA", "n_heads": 2},
}


def batch(seed=0):
    tokens = np.random.default_rng(seed).integers(1, 200, (2, 33))
    return {
        "inputs": tokens[:, :-1],
        "targets": tokens[:, 1:],
        "mask": np.ones((2, 32), bool),
        "segment_ids": np.ones((2, 32), np.int32),
    }


@pytest.mark.parametrize("family", FAMILIES)
def test_dropout_acts_only_with_a_training_key(family):
    config = small_config()
    config.model = dataclasses.replace(config.model, family=family, vocab_size=264, **FAMILIES[family])
    graphdef, params = init_model(config)
    with_rate = dataclasses.replace(config, model=dataclasses.replace(config.model, dropout=0.3))
    graphdef_rate, _ = init_model(with_rate)
    key, other = jax.random.PRNGKey(1), jax.random.PRNGKey(2)
    loss = lambda g, rng=None: float(forward_terms(g, params, batch(), rng)[0])
    plain = loss(graphdef)
    assert loss(graphdef, key) == plain  # rate 0: a training key changes nothing
    assert loss(graphdef_rate) == plain  # no key (evaluation, hrm.load, decoding): no dropout
    dropped = loss(graphdef_rate, key)
    assert dropped != plain and loss(graphdef_rate, key) == dropped and loss(graphdef_rate, other) != dropped


@pytest.mark.slow
def test_training_with_dropout_is_deterministic_per_seed(tmp_path):
    runs = {}
    for name, rate in (("a", 0.2), ("b", 0.2), ("none", 0.0)):
        config = small_config()
        config.model.dropout = rate
        runs[name] = [r["loss"] for r in train(config, tmp_path / name, log=lambda *_: None)]
    assert runs["a"] == runs["b"] and runs["a"] != runs["none"]


def test_dropout_must_be_a_probability():
    from hrm.config import Config, ConfigError, validate

    with pytest.raises(ConfigError, match="model.dropout"):
        validate(Config(model=ModelConfig(dropout=1.0)))

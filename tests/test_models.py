"""The Mamba LM: reference initialisation, causality, and recurrent decode equal to the full pass."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hrm.config import ModelConfig
from hrm.models import build_model, count_params
from tests.helpers import fresh_rng


def small_model(**overrides):
    cfg = ModelConfig(d_model=32, n_layers=3, d_state=8, vocab_size=64, **overrides)
    return cfg, build_model(cfg, seed=0)


def test_initialisation_follows_the_reference():
    cfg, model = small_model(scan_layers=False)  # a scanned model stacks these same layers (tests/test_scan_layers.py)
    mixer = model.layers[0].mixer
    di, n, r = 64, 8, math.ceil(32 / 16)
    np.testing.assert_allclose(jnp.exp(mixer.A_log[...]), np.tile(np.arange(1, n + 1), (di, 1)), rtol=1e-6)
    np.testing.assert_array_equal(mixer.D[...], np.ones(di))
    dt = jax.nn.softplus(mixer.dt_proj.bias[...])
    assert float(dt.min()) >= 1e-4 * 0.999 and float(dt.max()) <= 0.1 * 1.001
    assert float(jnp.abs(mixer.dt_proj.kernel[...]).max()) <= r**-0.5
    bound = 1 / math.sqrt(di) / math.sqrt(cfg.n_layers)  # rescale_prenorm_residual
    assert float(jnp.abs(mixer.out_proj.kernel[...]).max()) <= bound
    assert float(jnp.abs(mixer.out_proj.kernel[...]).max()) > 0.5 * bound
    assert abs(float(jnp.std(model.embed.embedding[...])) - 0.02) < 0.004


def test_parameter_count_matches_the_reference_formula():
    cfg, model = small_model()
    d, di, n, k, r, v = 32, 64, 8, 4, 2, 64
    per_layer = d * 2 * di + k * di + di + di * (r + 2 * n) + r * di + di + di * n + di + di * d + d
    assert count_params(model) == v * d + cfg.n_layers * per_layer + d


@pytest.mark.parametrize("backend", ["sequential", "reference"])
def test_changing_a_future_token_never_changes_earlier_logits(backend):
    _, model = small_model(scan_backend=backend)
    rng = fresh_rng()
    tokens = rng.integers(0, 64, (2, 20))
    base, _ = model(jnp.asarray(tokens))
    for position in (0, 7, 19):
        changed = tokens.copy()
        changed[:, position] = (changed[:, position] + 1 + rng.integers(0, 62)) % 64
        logits, _ = model(jnp.asarray(changed))
        np.testing.assert_array_equal(logits[:, :position], base[:, :position])
        assert not np.allclose(logits[:, position:], base[:, position:])


def test_recurrent_decode_equals_full_forward():
    _, model = small_model()
    tokens = jnp.asarray(fresh_rng().integers(0, 64, (2, 11)))
    full, _ = model(tokens)
    logits, cache = model(tokens[:, :5], model.init_cache(2))  # chunked prefill ...
    steps = [logits]
    for t in range(5, 11):  # ... then one token at a time
        step_logits, cache = model(tokens[:, t : t + 1], cache)
        steps.append(step_logits)
    np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, rtol=1e-5, atol=1e-5)


def test_bfloat16_compute_keeps_float32_parameters():
    _, model = small_model(dtype="bfloat16")
    params = nnx.state(model, nnx.Param)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    logits, _ = model(jnp.zeros((1, 6), jnp.int32))
    assert logits.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(logits)))


@pytest.mark.parametrize("backend", ["pallas", "sequential", "reference"])
def test_packed_documents_give_the_same_logits_as_documents_alone(backend):
    """Segment ids reset the conv and SSM state: no document sees its neighbour in a packed row."""
    _, model = small_model(scan_backend=backend)
    rng = fresh_rng()
    documents = [rng.integers(0, 64, n) for n in (7, 1, 12, 5)]
    packed = jnp.asarray(np.concatenate(documents))[None]
    segment_ids = jnp.asarray(np.concatenate([np.full(len(d), i + 1) for i, d in enumerate(documents)]))[None]
    logits, _ = model(packed, segment_ids=segment_ids)
    start = 0
    for document in documents:
        alone, _ = model(jnp.asarray(document)[None])
        np.testing.assert_allclose(logits[0, start : start + len(document)], alone[0], rtol=2e-5, atol=2e-5)
        start += len(document)
    unsegmented, _ = model(packed)
    assert not np.allclose(unsegmented[0, 7:], logits[0, 7:], atol=1e-4)

"""hrm/models/attention.py's blocked (flash) attention against the dense formulation it replaced, its
KV-cache path over several blocks, bfloat16 accumulation and the memory of a compiled training step."""

import dataclasses
import math

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hrm.config import ModelConfig
from hrm.models.attention import BLOCK_SIZE, NEVER, MultiScaleAttention, pool_windows, rope
from hrm.models.segments import positions_in_segment

CFG = ModelConfig(family="hybrid_recursive", d_model=32, n_layers=1, d_state=8, n_heads=4, max_cache_len=48)


def window_mean(x, s):
    """Mean of x (batch, length, ...) over the s positions ending at each position (zeros before 0)."""
    total = x.astype(jnp.float32)
    for i in range(1, s):
        total = total + jnp.pad(x, ((0, 0), (i, 0)) + ((0, 0),) * (x.ndim - 2))[:, : x.shape[1]]
    return (total / s).astype(x.dtype)


def dense_attention(attention, x, segment_ids=None):
    """The formulation blocked attention replaced, as the oracle: every scale scores all L positions,
    (batch, heads, L, L) logits masked to the complete, aligned windows of each query's document."""
    b, l, d = x.shape
    h, dh, theta = attention.n_heads, attention.head_dim, attention.cfg.rope_theta
    q, k, v = (proj(x).reshape(b, l, h, dh) for proj in (attention.q_proj, attention.k_proj, attention.v_proj))
    pos = jnp.broadcast_to(jnp.arange(l), (b, l))
    q = rope(q, pos, theta)
    in_doc = pos if segment_ids is None else positions_in_segment(segment_ids)
    causal = pos[:, None, :] <= pos[:, :, None]
    if segment_ids is not None:
        causal = causal & (segment_ids[:, :, None] == segment_ids[:, None, :])
    outs = []
    for s in attention.scales:
        pooled_k, pooled_v = rope(window_mean(k, s), pos, theta), window_mean(v, s)
        mask = causal & ((in_doc + 1) % s == 0)[:, None, :]
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, pooled_k, preferred_element_type=jnp.float32) / math.sqrt(dh)
        probs = jax.nn.softmax(jnp.where(mask[:, None], logits, -1e30), axis=-1)
        probs = probs * jnp.any(mask, axis=-1)[:, None, :, None]
        outs.append(jnp.einsum("bhqk,bkhd->bqhd", probs.astype(pooled_v.dtype), pooled_v))
    weights = jax.nn.softmax(attention.scale_logits[...]) if len(outs) > 1 else [1.0]
    return attention.out_proj(sum(w * o for w, o in zip(weights, outs)).reshape(b, l, d))


def test_pooled_keys_are_each_documents_complete_windows_compacted():
    """Documents of 7 and 9 positions at scale 4: windows end at 3, then (restarting at 7) at 10 and 14;
    the fourth slot is unused, and its position is one no query sees."""
    keys = jnp.arange(16, dtype=jnp.float32)[None, :, None, None] * jnp.ones((1, 16, 1, 2))
    segment_ids = jnp.asarray([[0] * 7 + [1] * 9])
    pooled, _, positions, segments = pool_windows(keys, keys, segment_ids, 4)
    np.testing.assert_array_equal(positions, [[3, 10, 14, NEVER]])
    np.testing.assert_array_equal(segments[:, :3], [[0, 1, 1]])
    np.testing.assert_allclose(pooled[0, :3, 0, 0], [1.5, 8.5, 12.5])  # means of 0..3, 7..10, 11..14


def output_and_grads(attention, x, segment_ids, forward):
    """forward's output and the gradients of sum(sin(output)) for the parameters and x."""
    graphdef, params = nnx.split(attention)

    @jax.jit
    def run(params, x):
        out, vjp = jax.vjp(lambda p, x: forward(nnx.merge(graphdef, p), x, segment_ids), params, x)
        return out, vjp(jnp.cos(out))

    return run(params, x)


blocked = lambda attention, x, segment_ids: attention(x, segment_ids=segment_ids)[0]


@pytest.mark.parametrize("scales,block_size", [((1,), 8), ((1, 2, 4), 8), ((1, 2, 4), 512), ((3,), 8)])
def test_blocked_attention_equals_the_dense_formulation_with_gradients(scales, block_size):
    """Packed documents of lengths that are not multiples of the scales or blocks next to a row of one
    document; 37 positions make padded query and key blocks; block 512 is one block."""
    attention = MultiScaleAttention(CFG, scales, block_size=block_size, rngs=nnx.Rngs(0))
    if len(scales) > 1:
        attention.scale_logits[...] = jnp.asarray([0.3, -0.2, 0.1])
    x = jax.random.normal(jax.random.key(0), (2, 37, 32))
    segment_ids = jnp.asarray([[0] * 7 + [1] * 2 + [2] * 19 + [3] * 9, [5] * 37])
    out, grads = output_and_grads(attention, x, segment_ids, blocked)
    expected, expected_grads = output_and_grads(attention, x, segment_ids, dense_attention)
    np.testing.assert_allclose(out, expected, atol=2e-6)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(expected_grads)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=5e-6)


def test_decoding_over_several_cache_blocks_equals_the_full_forward():
    attention = MultiScaleAttention(CFG, (1, 2, 4), block_size=8, rngs=nnx.Rngs(1))
    x = jax.random.normal(jax.random.key(1), (2, 30, 32))
    step = nnx.jit(lambda attention, x, cache=None: attention(x, cache))  # jitted: one compile per shape
    full, _ = step(attention, x)
    out, cache = step(attention, x[:, :11], attention.init_cache(2))  # a prefill of 2 query blocks ...
    outs = [out]
    for t in range(11, 30):  # ... then 19 steps over 6 key blocks
        out, cache = step(attention, x[:, t : t + 1], cache)
        outs.append(out)
    np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, atol=2e-6)


def test_bfloat16_attention_takes_logits_and_softmax_in_float32():
    attention = MultiScaleAttention(
        dataclasses.replace(CFG, dtype="bfloat16"), (1, 2, 4), block_size=8, rngs=nnx.Rngs(2)
    )
    x = jax.random.normal(jax.random.key(2), (1, 24, 32)).astype(jnp.bfloat16)
    graphdef, params = nnx.split(attention)
    loss = lambda p, x: jnp.sum(nnx.merge(graphdef, p)(x)[0].astype(jnp.float32) ** 2)

    def exp_dtypes(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "exp":
                yield eqn.outvars[0].aval.dtype
            for inner in jax.extend.core.jaxprs_in_params(eqn.params):
                yield from exp_dtypes(inner)

    assert set(exp_dtypes(jax.make_jaxpr(jax.grad(loss))(params, x).jaxpr)) == {jnp.dtype(jnp.float32)}
    float32 = MultiScaleAttention(CFG, (1, 2, 4), rngs=nnx.Rngs(2))  # the same parameters
    blocked_bf16, dense = nnx.jit(lambda a, f, x: (a(x)[0], dense_attention(f, x.astype(jnp.float32))))(
        attention, float32, x
    )  # jitted: one compile (eager, each primitive compiles on its own)
    np.testing.assert_allclose(blocked_bf16.astype(jnp.float32), dense, atol=3e-2)


def test_a_compiled_training_step_needs_no_length_squared_memory():
    """Compiled, not run: the gradient of hybrid_recursive's (1, 2, 4) attention at 2048 positions needs
    temporaries of a few (batch, length, d_model) arrays plus a few (batch, heads, block, block) logit
    blocks; the dense formulation needed ~1 GiB here, its (batch, heads, length, length) logits per scale."""
    b, l, d, h = 1, 2048, 64, 4
    cfg = dataclasses.replace(CFG, d_model=d, n_heads=h)
    graphdef, params = nnx.split(nnx.eval_shape(lambda: MultiScaleAttention(cfg, (1, 2, 4), rngs=nnx.Rngs(0))))
    loss = lambda p, x, segment_ids: jnp.mean(nnx.merge(graphdef, p)(x, segment_ids=segment_ids)[0] ** 2)
    compiled = (
        jax.jit(jax.grad(loss))
        .lower(params, jax.ShapeDtypeStruct((b, l, d), jnp.float32), jax.ShapeDtypeStruct((b, l), jnp.int32))
        .compile()
    )
    bound = 32 * b * l * d * 4 + 8 * b * h * BLOCK_SIZE**2 * 4  # 48 MiB; the dense form: 964 MiB
    assert compiled.memory_analysis().temp_size_in_bytes < bound

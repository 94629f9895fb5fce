"""hrm/inference.py: the sized and grown KV cache, power-of-two prefill chunks, per-row sampling and
refusals; the decode path of every family against the full forward."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hrm.config import ModelConfig
from hrm.inference import Generator, Sampling, SamplingArrays, SamplingError, prefill_chunks, sample_logits
from hrm.models import build_model
from hrm.models.attention import kv_cache_length, resize_kv_caches
from tests.helpers import fresh_rng

VOCAB = 48
SMALL = {
    "mamba": ModelConfig(family="mamba", d_model=32, n_layers=2, d_state=8, vocab_size=VOCAB),
    "hybrid_recursive": ModelConfig(
        family="hybrid_recursive",
        d_model=32,
        n_layers=1,
        d_state=8,
        n_heads=4,
        max_recursion_depth=2,
        max_cache_len=96,
        vocab_size=VOCAB,
    ),
    "recursive_ssm": ModelConfig(
        family="recursive_ssm", d_model=32, n_layers=2, d_state=8, recurrent_depth=2, vocab_size=VOCAB
    ),
    "hybrid_pattern": ModelConfig(
        family="hybrid_pattern",
        d_model=32,
        n_layers=2,
        layer_pattern="AM",
        d_state=8,
        n_heads=4,
        max_cache_len=96,
        vocab_size=VOCAB,
    ),
}


def setup(name, **overrides):
    """(Generator, params, jitted full forward) of a SMALL model whose zero-initialised parameters (the depth
    gate, the adapters, the scale mix) are made random, so that every path a decode cache carries matters."""
    model = build_model(dataclasses.replace(SMALL[name], **overrides), seed=2)
    graphdef, params = nnx.split(model)
    keys = iter(jax.random.split(jax.random.key(5), len(jax.tree.leaves(params))))
    params = jax.tree.map(
        lambda x: 0.5 * jax.random.normal(next(keys), x.shape, x.dtype) if not jnp.any(x) else x, params
    )
    forward = jax.jit(lambda p, tokens: nnx.merge(graphdef, p)(tokens)[0])
    return Generator(graphdef), params, forward


def assert_stepwise_argmax(forward, params, prompt, generated, length=80):
    """Each generated token is the argmax of one full forward over prompt + generated (zero-padded to one
    length, so one compile; causality makes the padding irrelevant), up to float ties."""
    sequence = list(prompt) + list(generated)
    logits = np.asarray(forward(params, jnp.asarray([sequence + [0] * (length - len(sequence))])))[0]
    for i, token in enumerate(generated):
        step = logits[len(prompt) - 1 + i]
        assert step[token] >= step.max() - 1e-5, (i, token, int(step.argmax()))


@pytest.mark.parametrize("name", list(SMALL))
def test_greedy_decode_past_the_first_buffer_equals_stepwise_argmax(name):
    """A 70-token prompt (chunks 64 + 4 + 2) and 6 new tokens, next to a 3-token prompt: the KV buffer (96
    positions, the limit) and the pooled windows completing during decode give the full forward's argmax."""
    generator, params, forward = setup(name)
    prompt = np.random.default_rng(0).integers(0, VOCAB, 70).tolist()
    short = [5, 6, 7]
    generated = generator.generate_ids(params, [prompt, short], 6, temperature=0)
    assert len(generated[0]) == len(generated[1]) == 6
    assert_stepwise_argmax(forward, params, prompt, generated[0])
    assert_stepwise_argmax(forward, params, short, generated[1])


def test_growing_the_kv_cache_keeps_decoding_exact():
    generator, params, forward = setup("hybrid_recursive")
    prompt = [3, 1, 4, 1, 5, 9, 2]
    state = generator.start(params, [prompt], 4)
    assert kv_cache_length(state.cache) == 64
    grown = state._replace(cache=resize_kv_caches(state.cache, 96))
    assert kv_cache_length(grown.cache) == 96
    settings = SamplingArrays.of([Sampling(0.0)])
    tokens, _ = generator.decode(params, grown, settings, 5)
    assert_stepwise_argmax(forward, params, prompt, tokens[0].tolist())


def test_a_request_past_max_cache_len_is_refused_up_front():
    generator, params, _ = setup("hybrid_pattern")
    with pytest.raises(SamplingError, match=r"model.max_cache_len \(96\)"):
        generator.generate_ids(params, [[1] * 90], 7, temperature=0)
    assert len(generator.generate_ids(params, [[1] * 90], 6, temperature=0)[0]) == 6
    # a pure SSM has no such limit
    generator, params, _ = setup("mamba")
    assert generator.context_limit(params) is None
    with pytest.raises(SamplingError, match=r"token ids must be in \[0, 48\)"):
        generator.generate_ids(params, [[1, 48]], 2)


def test_prefill_compiles_per_chunk_length_not_per_prompt_length():
    assert prefill_chunks(300) == [512] and prefill_chunks(2049) == [1024, 1024, 1] and prefill_chunks(0) == []
    generator, params, _ = setup("mamba")
    for length in (5, 6, 7, 12, 13, 15):  # one chunk of 8 or of 16, one row
        generator.start(params, [[1] * length], 1)
    assert generator._extend._cache_size() == 2
    generator.start(params, [[1] * length for length in (5, 6, 7, 12, 13, 15)], 1)  # two batches of 3 rows
    assert generator._extend._cache_size() == 4


@pytest.mark.parametrize("name", list(SMALL))
def test_batched_prefill_of_different_lengths_equals_the_full_forward_of_each_prompt(name):
    """Seven prompts (three padded batches: 84 and 70 in a chunk of 128, 37 and 50 in 64, 5 and 8 in 8, 3 in 4)
    prefill to each prompt's own last logits, and decoding on from the padded rows gives the full forward's
    logits: padding never reaches a recurrent state, a conv window, a KV position, a pooled window or the gate."""
    generator, params, forward = setup(name)
    rng = fresh_rng()
    prompts = [rng.integers(0, VOCAB, n).tolist() for n in (84, 70, 3, 37, 50, 5, 8)]
    state = generator.start(params, prompts, 4)
    tokens, after = generator.decode(params, state, SamplingArrays.of([Sampling(0.0)] * len(prompts)), 4)
    for row, prompt in enumerate(prompts):
        sequence = prompt + tokens[row].tolist()
        logits = np.asarray(forward(params, jnp.asarray([sequence + [0] * (96 - len(sequence))])))[0]
        np.testing.assert_allclose(after.logits[row], logits[len(sequence) - 1], rtol=1e-4, atol=1e-4)
        assert_stepwise_argmax(forward, params, prompt, tokens[row].tolist(), length=96)
    alone = generator.start(params, [prompts[3]], 4)
    np.testing.assert_allclose(alone.logits[0], generator.start(params, prompts, 4).logits[3], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["hybrid_recursive", "recursive_ssm"])
def test_a_chunk_of_padding_alone_leaves_the_state_as_it_was(name):
    """A row with no real token in a chunk (``lengths`` 0) keeps its recurrent state, KV position and logits."""
    generator, params, _ = setup(name)
    prompt = [3, 1, 4, 1, 5]
    state = generator.start(params, [prompt], 8)
    junk = jnp.asarray([[7, 9, 11, 13]], jnp.int32)
    _, padded_cache = generator._extend(params, junk, state.cache, jnp.zeros((1,), jnp.int32))
    padded = state._replace(cache=padded_cache)
    settings = SamplingArrays.of([Sampling(0.0)])
    tokens, after = generator.decode(params, padded, settings, 3)
    expected_tokens, expected = generator.decode(params, generator.start(params, [prompt], 8), settings, 3)
    np.testing.assert_array_equal(tokens, expected_tokens)
    np.testing.assert_allclose(after.logits, expected.logits, rtol=1e-6, atol=1e-6)


def test_decode_donates_its_state_unless_asked_to_keep_it():
    generator, params, _ = setup("hybrid_pattern")
    settings = SamplingArrays.of([Sampling(0.0)])
    state = generator.start(params, [[1, 2, 3]], 8)
    generator.decode(params, state, settings, 2, keep_input=True)
    assert not state.logits.is_deleted()
    generator.decode(params, state, settings, 2)
    assert state.logits.is_deleted()  # its buffers were reused in place: no copy of the KV buffer per call


def test_per_row_sampling_settings_and_keys():
    logits = jax.random.normal(jax.random.key(0), (4, 50)) * 3
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(1), i))(jnp.arange(4))
    rows = [Sampling(0.0), Sampling(1.0, top_k=1), Sampling(1.0, top_p=1e-6), Sampling(1.0, min_p=0.999)]
    tokens = sample_logits(logits, keys, SamplingArrays.of(rows))
    np.testing.assert_array_equal(tokens, jnp.argmax(logits, -1))
    # a row's token depends only on its own logits, settings and key
    hot = Sampling(1.5, top_k=20)
    alone = sample_logits(logits[2:3], keys[2:3], SamplingArrays.of([hot]))
    mixed = sample_logits(logits, keys, SamplingArrays.of([Sampling(0.0), hot, hot, Sampling(0.7)]))
    assert int(mixed[2]) == int(alone[0])
    # the repetition penalty moves the argmax off a seen token
    seen = jnp.zeros((1, 50), bool).at[0, int(jnp.argmax(logits[0]))].set(True)
    penalised = sample_logits(logits[:1], keys[:1], SamplingArrays.of([Sampling(0.0, repetition_penalty=1e3)]), seen)
    assert int(penalised[0]) != int(jnp.argmax(logits[0]))


@pytest.mark.parametrize(
    "bad,message",
    [
        (dict(temperature=float("nan")), "finite"),
        (dict(temperature=-1.0), ">= 0"),
        (dict(top_k=0), "top_k"),
        (dict(min_p=1.0), "min_p"),
        (dict(repetition_penalty=0.0), "repetition"),
        (dict(top_p=2.0), r"top_p must be in \(0, 1\]"),
        (dict(frequency_penalty=2.5), "frequency_penalty"),
        (dict(logit_bias=((3, 101.0),)), "logit_bias"),
    ],
)
def test_impossible_settings_are_refused(bad, message):
    with pytest.raises(SamplingError, match=message):
        Sampling(**bad).check()


def test_openai_penalties_and_logit_bias():
    """frequency x count + presence x (count > 0) off a generated token's logit; the bias added, greedy too."""
    logits = jnp.asarray([[5.0, 4.5, 4.0, 0.0]])
    keys = jax.random.key(0)[None]
    counts = jnp.asarray([[1, 0, 0, 0]], jnp.int32)
    pick = lambda **s: int(sample_logits(logits, keys, SamplingArrays.of([Sampling(0.0, **s)]), counts=counts)[0])
    assert pick() == 0
    assert pick(frequency_penalty=0.6) == 1 and pick(frequency_penalty=0.4) == 0  # 5 - 0.6 < 4.5
    assert pick(presence_penalty=0.6) == 1
    assert pick(logit_bias=((3, 6.0),)) == 3 and pick(logit_bias=((0, -100.0), (1, -100.0))) == 2


def test_one_decode_program_per_power_of_two_bucket_and_seeds_are_checked():
    generator, params, _ = setup("mamba")
    for n in (5, 6, 7, 8):
        assert len(generator.generate_ids(params, [[1, 2]], n, temperature=0)[0]) == n
    assert generator._decode._cache_size() == 1  # all in the bucket of 8
    assert generator.generate_ids(params, [[1, 2]], 5, temperature=0) == [
        generator.generate_ids(params, [[1, 2]], 8, temperature=0)[0][:5]
    ]
    for seed in (2**70, 1.5, "3", True):
        with pytest.raises(SamplingError, match="seed must be an integer"):
            generator.generate_ids(params, [[1, 2]], 2, seed=seed)

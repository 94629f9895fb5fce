"""The model families (hybrid_recursive, recursive_ssm, hybrid_pattern), their configs, hrm.info and the
--model_size / --training_preset flags."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hrm.config import (
    Config,
    ConfigError,
    DataConfig,
    ModelConfig,
    TrainConfig,
    config_files,
    load_config_file,
    validate,
)
from hrm.inference import Generator
from hrm.models import build_model, count_params
from hrm.models.attention import MultiScaleAttention
from hrm.models.recursive import segment_prefix_mean
from hrm.training.metrics import read_metrics
from tests.helpers import ROOT, run_module

# Forwards outside training (no nnx.capture) sow the gate's metrics into nothing; flax 0.12 warns about that.
pytestmark = pytest.mark.filterwarnings("ignore:Using 'Module.sow\\(\\)' outside:DeprecationWarning")
VOCAB = 48
SMALL = {
    "hybrid_recursive": ModelConfig(
        family="hybrid_recursive",
        d_model=32,
        n_layers=2,
        d_state=8,
        n_heads=4,
        max_recursion_depth=3,
        max_cache_len=64,
        vocab_size=VOCAB,
    ),
    "hybrid_recursive_per_token": ModelConfig(
        family="hybrid_recursive",
        d_model=32,
        n_layers=1,
        d_state=8,
        n_heads=4,
        gate_per_token=True,
        max_cache_len=64,
        vocab_size=VOCAB,
    ),
    "recursive_ssm": ModelConfig(
        family="recursive_ssm",
        d_model=32,
        n_layers=3,
        d_state=8,
        recurrent_depth=3,
        adapter_rank=2,
        checkpoint_segments=2,
        vocab_size=VOCAB,
    ),
    "hybrid_pattern": ModelConfig(
        family="hybrid_pattern",
        d_model=32,
        n_layers=3,
        layer_pattern="AMA",
        d_state=8,
        n_heads=4,
        max_cache_len=64,
        vocab_size=VOCAB,
    ),
}
FAMILIES = list(SMALL)
CONFIG_FILES = config_files()
_models = {}


def model_and_forward(name):
    """A small model of the family and a jitted forward (tokens, cache) → (logits, cache). The tests call it on
    (2, 24) tokens where they can, shorter sequences zero-padded to that length (causality, tested here, makes
    the padding irrelevant): each new shape is one more compile of the model, most of these tests' time."""
    if name not in _models:
        model = build_model(SMALL[name], seed=1)
        graphdef, params = nnx.split(model)
        forward = jax.jit(lambda p, tokens, cache=None: nnx.merge(graphdef, p)(tokens, cache))
        _models[name] = (model, graphdef, params, forward)
    return _models[name]


def padded(rows, length=24):
    """Token rows of different lengths, zero-padded on the right to one (batch, length) array."""
    out = np.zeros((len(rows), length), np.int32)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return jnp.asarray(out)


def tokens(batch=2, length=24, seed=0):
    return jax.random.randint(jax.random.key(seed), (batch, length), 0, VOCAB)


@pytest.mark.parametrize("name", FAMILIES)
def test_family_builds_and_maps_tokens_to_float32_logits(name):
    _, _, params, forward = model_and_forward(name)
    logits, _ = forward(params, tokens())
    assert logits.shape == (2, 24, VOCAB) and logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(logits)))


@pytest.mark.parametrize("name", FAMILIES)
def test_changing_a_future_token_never_changes_earlier_logits(name):
    """Covers the recursion (per-sequence gate) and every attention scale's window boundaries."""
    _, _, params, forward = model_and_forward(name)
    base = tokens()
    logits, _ = forward(params, base)
    for position in (1, 3, 4, 7, 8, 13, 22):
        changed = base.at[:, position].set((base[:, position] + 5) % VOCAB)
        new, _ = forward(params, changed)
        np.testing.assert_array_equal(np.asarray(new[:, :position]), np.asarray(logits[:, :position]))
        assert float(jnp.abs(new[:, position:] - logits[:, position:]).max()) > 0


@pytest.mark.parametrize("scale", [1, 2, 4])
def test_each_attention_scale_only_reads_completed_past_windows(scale):
    """One scale alone: output at t depends only on tokens of windows that end at or before t."""
    cfg = dataclasses.replace(SMALL["hybrid_pattern"], max_cache_len=32)
    attention = MultiScaleAttention(cfg, (scale,), rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (1, 16, 32))
    out, _ = attention(x)
    for position in range(16):
        y = x.at[:, position].add(1.0)
        new, _ = attention(y)
        changed = set(np.nonzero(np.abs(np.asarray(new - out)[0]).max(-1) > 0)[0].tolist())
        # other queries see p only from the end of p's window on; p's own query matters once it has two
        # complete windows to choose between
        window_end = (position // scale + 1) * scale - 1
        expected = set(range(window_end, 16)) | ({position} if position >= 2 * scale - 1 else set())
        assert changed == expected, (scale, position, sorted(changed))
    # before the first complete window, a pooled scale contributes nothing
    np.testing.assert_array_equal(np.asarray(out[0, : scale - 1]), 0.0)


def test_attention_treats_a_packed_document_as_if_alone():
    """Every scale restarts its windows at a document start, also at offsets that are not multiples of 4."""
    cfg = SMALL["hybrid_recursive"]
    graphdef, state = nnx.split(MultiScaleAttention(cfg, (1, 2, 4), rngs=nnx.Rngs(0)))
    attend = jax.jit(lambda x, segment_ids=None: nnx.merge(graphdef, state)(x, segment_ids=segment_ids)[0])
    x = jax.random.normal(jax.random.key(2), (1, 24, 32))
    packed = attend(x, jnp.asarray([[0] * 7 + [1] * 17]))
    # each document alone from position 0, zero-padded to one (2, 24) batch: causality (tested above) makes the
    # padding irrelevant, and one shape is one compile
    alone = attend(
        jnp.concatenate([jnp.pad(x[:, :7], ((0, 0), (0, 17), (0, 0))), jnp.pad(x[:, 7:], ((0, 0), (0, 7), (0, 0)))])
    )
    np.testing.assert_allclose(np.asarray(packed[0, :7]), np.asarray(alone[0, :7]), atol=1e-5)
    np.testing.assert_allclose(np.asarray(packed[0, 7:]), np.asarray(alone[1, :17]), atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_packed_documents_give_the_same_logits_as_documents_alone(name):
    """Segment ids reset the SSM and conv state, the gate's running mean and every attention scale. Two packed
    rows (the documents in two orders, so each starts at two offsets) against each document alone, through
    the plain forward (no segment ids)."""
    _, graphdef, params, forward = model_and_forward(name)
    documents = [np.random.default_rng(n).integers(0, VOCAB, n) for n in (5, 1, 11, 7)]  # 24 tokens in all
    orders = [[0, 1, 2, 3], [3, 2, 1, 0]]
    packed_rows = [np.concatenate([documents[i] for i in order]) for order in orders]
    segment_rows = [np.concatenate([np.full(len(documents[i]), i) for i in order]) for order in orders]
    with_segments = jax.jit(lambda p, t, s: nnx.merge(graphdef, p)(t, segment_ids=s)[0])
    packed = np.asarray(with_segments(params, jnp.asarray(np.stack(packed_rows)), jnp.asarray(np.stack(segment_rows))))
    alone = np.concatenate([np.asarray(forward(params, padded(documents[i : i + 2]))[0]) for i in (0, 2)])
    for row, order in enumerate(orders):
        start = 0
        for i in order:
            n = len(documents[i])
            np.testing.assert_allclose(packed[row, start : start + n], alone[i, :n], rtol=1e-4, atol=1e-4)
            start += n


def test_per_sequence_gate_mean_restarts_at_segments_and_carries_across_chunks():
    mean = jax.jit(segment_prefix_mean)  # one compile per shape (eager, each primitive compiles on its own)
    u = np.asarray(jax.random.normal(jax.random.key(3), (1, 10, 4)))
    zeros = (np.zeros((1, 4), np.float32), np.zeros((1,), np.float32))
    means, _ = mean(u, zeros, np.asarray([[0] * 4 + [1] * 6]))
    np.testing.assert_allclose(means[0, 5], u[0, 4:6].mean(0), rtol=1e-5)
    full, _ = mean(u, zeros, None)
    first, carry = mean(u[:, :3], zeros, None)
    rest, _ = mean(u[:, 3:], carry, None)
    np.testing.assert_allclose(np.concatenate([first, rest], 1), full, rtol=1e-5)


@pytest.mark.parametrize("name", FAMILIES)
def test_chunked_prefill_and_decode_steps_equal_the_full_forward(name):
    """Two 5-token chunks (neither starts or ends on a 2- or 4-window boundary) then single decode steps."""
    model, _, params, forward = model_and_forward(name)
    sequence = tokens()
    full, _ = forward(params, sequence)
    logits, cache = forward(params, sequence[:, :5], model.init_cache(2))
    outputs = [logits]
    logits, cache = forward(params, sequence[:, 5:10], cache)
    outputs.append(logits)
    for i in range(10, 14):
        logits, cache = forward(params, sequence[:, i : i + 1], cache)
        outputs.append(logits)
    np.testing.assert_allclose(np.concatenate(outputs, 1), full[:, :14], atol=2e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["hybrid_recursive", "recursive_ssm", "hybrid_pattern"])
def test_greedy_generation_of_prompts_of_different_lengths_matches_the_full_forward(name):
    _, graphdef, params, forward = model_and_forward(name)
    prompts = [[1, 2, 3, 4, 5], [7, 8]]
    generated = Generator(graphdef).generate_ids(params, prompts, max_new_tokens=3, temperature=0)
    sequences = [list(prompt) for prompt in prompts]
    for _ in range(3):  # both rows' next greedy token from one full forward
        logits, _ = forward(params, padded(sequences))
        for row, sequence in enumerate(sequences):
            sequence.append(int(jnp.argmax(logits[row, len(sequence) - 1])))
    for prompt, new, sequence in zip(prompts, generated, sequences):
        assert new == sequence[len(prompt) :]


def test_recursion_shares_parameters_across_depth():
    def params(family, **kw):
        return count_params(build_model(dataclasses.replace(SMALL[family], **kw)))

    d, r = 32, 2
    # recursive_ssm: only the per-depth adapters (scale, shift, rank-r A and B) grow with depth
    assert params("recursive_ssm", recurrent_depth=7) - params("recursive_ssm", recurrent_depth=2) == 5 * (
        2 * d + 2 * d * r
    )
    assert (
        params("recursive_ssm", recurrent_depth=7, adapter_rank=0)
        - params("recursive_ssm", recurrent_depth=2, adapter_rank=0)
        == 5 * 2 * d
    )
    # hybrid_recursive: one shared transform; only the gate's output row per depth is added (per layer)
    layers = SMALL["hybrid_recursive"].n_layers
    assert (
        params("hybrid_recursive", max_recursion_depth=5) - params("hybrid_recursive", max_recursion_depth=2)
        == 3 * (d + 1) * layers
    )


@pytest.mark.slow
@pytest.mark.parametrize("family", ["hybrid_recursive", "recursive_ssm", "hybrid_pattern"])
def test_tiny_variants_train_with_falling_loss(trained_run, family):
    """configs/tiny_{hybrid,recursive,pattern}.py, shrunk (the session's shared runs, tests/conftest.py)."""
    run = trained_run(family)
    losses = [r["loss"] for r in run.records]
    assert len(losses) == run.config.train.steps
    assert np.mean(losses[-4:]) < 0.8 * np.mean(losses[:2]), losses
    written = [r for r in read_metrics(run.path) if "loss" in r]
    if family == "hybrid_recursive":
        depth = load_config_file(ROOT / "configs" / "tiny_hybrid.py").model.max_recursion_depth
        assert run.config.model.max_recursion_depth == depth
        keys = {f"gate_depth_{k}" for k in range(1, depth + 1)} | {"gate_entropy", "aux_loss"}
        assert keys <= set(written[-1]), written[-1]
        assert sum(written[-1][f"gate_depth_{k}"] for k in range(1, depth + 1)) == pytest.approx(1, abs=1e-4)
        # the cross-entropy is reported on its own; the aux term is the KL of the gate to its prior
        assert written[-1]["aux_loss"] >= 0 and written[-1]["loss"] > written[-1]["aux_loss"]
        events = list((run.path / "tb").glob("events.out.tfevents.*"))
        assert events and b"train/gate_depth_1" in events[0].read_bytes()


def test_every_config_file_is_valid_and_hrm_info_describes_it():
    from hrm.info import describe

    assert {p.stem for p in CONFIG_FILES} >= {
        "mamba_small",
        "mamba_medium_lite",
        "mamba_medium_plus",
        "mamba_medium_x",
        "mamba_medium",
        "mamba_medium_extra",
        "mamba_large_lite",
        "mamba_large_plus",
        "mamba_large",
        "mamba_xlarge",
        "mamba_xxlarge",
        "hybrid_small",
        "hybrid_small_mini",
        "hybrid_small_standard",
        "hybrid_small_plus",
        "hybrid_small_pro",
        "hybrid_medium",
        "hybrid_large",
        "recursive_48x5",
        "hybrid_amam_1b",
        "hybrid_7030_small",
        "tiny_hybrid",
        "tiny_recursive",
        "tiny_pattern",
    }
    for path in CONFIG_FILES:
        config = load_config_file(path)
        text = describe(config, str(path))
        assert "total" in text and "effective depth" in text and "FLOPs per token" in text, path
        assert "documented size" in text, path
        if config.data.tokenizer == "gpt2":
            assert (config.model.vocab_size, config.model.token_vocab_size) == (50304, 50257), path  # padded to 128


def test_hrm_info_command_line(run_cli):
    from hrm.info import main

    result = run_module("hrm.info", "--config", ROOT / "configs/recursive_48x5.py")
    assert "effective depth: 240 (48 physical blocks x 5 depths" in result.stdout
    assert "depth adapters" in result.stdout
    code, out, _ = run_cli(main, "--model_size", "hybrid-small")
    assert code == 0 and "documented size: 75.00M" in out


def test_model_size_and_training_preset_flags():
    from hrm.config import model_sizes
    from hrm.train import parse_command_line

    documented = [
        "small",
        "medium-lite",
        "medium-plus",
        "medium-x",
        "medium",
        "medium-extra",
        "large-lite",
        "large-plus",
        "large",
        "xlarge",
        "xxlarge",
        "hybrid-small",
        "hybrid-small-mini",
        "hybrid-small-standard",
        "hybrid-small-plus",
        "hybrid-small-pro",
        "hybrid-medium",
        "hybrid-large",
        "recursive-48x5",
        "hybrid-amam-1b",
        "hybrid-7030-small",
    ]
    assert set(documented) <= set(model_sizes()), set(documented) - set(model_sizes())
    config, _ = parse_command_line(["--model_size", "hybrid-small"])
    assert config.model.family == "hybrid_recursive" and config.model.d_model == 512
    assert parse_command_line(["--model_size", "medium"])[0].model.d_model == 768
    config, _ = parse_command_line(
        ["--model_size", "hybrid_large", "--training_preset", "careful", "--config.train.lr=2e-4"]
    )
    assert (
        config.train.steps,
        config.train.lr,
        config.train.warmup_steps,
        config.train.save_every,
        config.train.eval_every,
    ) == (200_000, 2e-4, 5000, 10_000, 10_000)  # the override wins over the preset
    config, _ = parse_command_line(["--config", str(ROOT / "configs/tiny.py"), "--training_preset", "fast"])
    assert (config.train.steps, config.train.lr, config.train.warmup_steps) == (50_000, 5e-4, 1000)


def test_choosing_a_tokenizer_makes_the_model_vocab_follow_it():
    from hrm.config import resolve_config
    from hrm.train import parse_command_line

    config, _ = parse_command_line(["--model_size", "hybrid-small", "--tokenizer", "byte"])
    assert resolve_config(config).model.vocab_size == 384  # 258 padded to 128, not the config's GPT-2 50304
    config, _ = parse_command_line(
        ["--model_size", "hybrid-small", "--tokenizer", "byte", "--config.model.vocab_size=512"]
    )
    assert config.model.vocab_size == 512  # an explicit override still wins


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["--model_size", "gigantic"],
            "unknown --model_size 'gigantic'; choose one of ablate-hybrid-pattern,",
        ),
        (["--model_size", "small", "--training_preset", "slow"], "unknown --training_preset 'slow'"),
        (["--model_size", "small", "--config", "configs/tiny.py"], "not allowed with argument"),
        (
            ["--config", "configs/tiny.py", "--config.model.vocab_size=128"],
            "config key 'model.vocab_size' (128) is smaller than tokenizer 'byte' (258 tokens)",
        ),
    ],
)
def test_bad_flags_give_one_line_errors(run_cli, args, message):
    """The first through ``python -m hrm.train`` (nothing else on stderr, imports included), the rest in-process."""
    from hrm.train import main

    if args[:2] == ["--model_size", "gigantic"]:
        result = run_module("hrm.train", *args, check=False)
        code, err = result.returncode, result.stderr
    else:
        code, _, err = run_cli(main, *args)
    assert code == 2 and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("layer_pattern", "AMX", "model.layer_pattern"),
        ("n_heads", 5, "model.n_heads"),
        ("attention_scales", "1,0", "model.attention_scales"),
        ("ponder_prior", 1.0, "model.ponder_prior"),
        ("recurrent_depth", 0, "model.recurrent_depth"),
    ],
)
def test_bad_family_settings_name_the_key(key, value, message):
    model = dataclasses.replace(
        SMALL["hybrid_pattern"] if key == "layer_pattern" else SMALL["hybrid_recursive"], **{key: value}
    )
    with pytest.raises(ConfigError, match=message):
        validate(Config(model=model, data=DataConfig(), train=TrainConfig()))


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES)
def test_remat_changes_the_program_not_the_gradients(name):
    """Every family rematerialises under model.remat, and the gradients (gate loss included) stay the same."""

    def grads(remat):
        graphdef, params = nnx.split(build_model(dataclasses.replace(SMALL[name], remat=remat), seed=2))

        def loss(p):
            (logits, _), sown = nnx.capture(nnx.merge(graphdef, p), nnx.Intermediate)(tokens(length=8))
            return jnp.mean(logits**2) + sum(jnp.sum(x) for x in jax.tree.leaves(nnx.to_pure_dict(sown)))

        traced = jax.jit(jax.grad(loss)).trace(params)  # one trace: its jaxpr, then its compile
        return traced.lower().compile()(params), str(traced.jaxpr)

    plain, plain_jaxpr = grads("none")
    for policy in ("block", "dots_with_no_batch_dims_saveable"):
        remat, remat_jaxpr = grads(policy)
        assert "checkpoint" in remat_jaxpr or "remat" in remat_jaxpr
        assert "checkpoint" not in plain_jaxpr and "remat" not in plain_jaxpr
        for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(remat)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["hybrid_recursive", "recursive_ssm", "hybrid_pattern"])
def test_bfloat16_compute_runs_with_float32_parameters(name):
    model = build_model(dataclasses.replace(SMALL[name], dtype="bfloat16"))
    graphdef, params = nnx.split(model)
    logits, _ = jax.jit(lambda p, t: nnx.merge(graphdef, p)(t))(params, tokens(length=8))
    assert logits.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(logits)))
    assert {x.dtype for x in jax.tree.leaves(nnx.state(model, nnx.Param))} == {jnp.dtype(jnp.float32)}

"""``model.scan_layers``: the layer stack under ``nnx.scan`` computes what the unrolled loop does (forward,
decoding, packed rows, training), and the named remat policies keep what they name."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hrm.config import ModelConfig
from hrm.models import FAMILIES, build_model
from hrm.models.lm import stack_layer_params, unstack_layer_params
from hrm.training.loop import train
from tests.helpers import FAMILY_RUNS, tiny_file_config
from tests.test_families import SMALL as FAMILY_CONFIGS
from tests.test_families import VOCAB

pytestmark = pytest.mark.filterwarnings("ignore:Using 'Module.sow\\(\\)' outside:DeprecationWarning")
SMALL = {
    "mamba": ModelConfig(d_model=32, n_layers=3, d_state=8, vocab_size=VOCAB),
    "hybrid_recursive": FAMILY_CONFIGS["hybrid_recursive"],
    "hybrid_pattern": dataclasses.replace(FAMILY_CONFIGS["hybrid_pattern"], n_layers=4, layer_pattern="AMAM"),
    "recursive_ssm": FAMILY_CONFIGS["recursive_ssm"],  # 3 blocks in segments of 2: a segment of 2, then of 1
}
SCANNED = list(SMALL)


def pair(name, **change):
    cfg = dataclasses.replace(SMALL[name], **change)
    return build_model(dataclasses.replace(cfg, scan_layers=False), seed=3), build_model(cfg, seed=3)


def tokens(batch=2, length=12, seed=0):
    return jax.random.randint(jax.random.key(seed), (batch, length), 0, VOCAB)


@pytest.mark.parametrize("name", SCANNED)
def test_scanned_parameters_are_the_unrolled_layers_stacked(name):
    unrolled, scanned = pair(name)
    assert scanned.scanned and not unrolled.scanned
    per_layer = nnx.to_pure_dict(nnx.state(unrolled, nnx.Param))
    stacked = nnx.to_pure_dict(nnx.state(scanned, nnx.Param))
    size = FAMILIES[name].unit_size(SMALL[name])
    jax.tree.map(np.testing.assert_array_equal, stacked, stack_layer_params(per_layer, size))
    jax.tree.map(np.testing.assert_array_equal, unstack_layer_params(stacked, size), per_layer)
    assert jax.tree.leaves(stacked["layers"])[0].shape[0] == SMALL[name].n_layers // size


def test_a_pattern_that_does_not_repeat_stays_unrolled():
    model = build_model(dataclasses.replace(SMALL["hybrid_pattern"], n_layers=3, layer_pattern="AMM"))
    assert not model.scanned and len(model.layers) == 3


@pytest.mark.parametrize("name", SCANNED)
def test_scanned_forward_decoding_and_packing_equal_the_unrolled_loop(name):
    unrolled, scanned = pair(name)
    x = tokens()
    full, _ = unrolled(x)
    np.testing.assert_allclose(scanned(x)[0], full, rtol=1e-5, atol=1e-5)
    segments = jnp.array([[0] * 5 + [1] * 7] * 2)
    np.testing.assert_allclose(
        scanned(x, segment_ids=segments)[0], unrolled(x, segment_ids=segments)[0], rtol=1e-5, atol=1e-5
    )
    # a chunked prefill then one-token steps through the (batch, layer, ...) cache
    cache = scanned.init_cache(2)
    assert all(leaf.shape[0] == 2 and scanned.n_stacked in leaf.shape[1:3] for leaf in jax.tree.leaves(cache))
    logits, cache = scanned(x[:, :7], cache)
    steps = [logits]
    for t in range(7, x.shape[1]):
        logits, cache = scanned(x[:, t : t + 1], cache)
        steps.append(logits)
    np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, rtol=1e-5, atol=1e-5)
    # a ragged prefill: row 1's padding leaves its cache as its 4 real tokens left it, so its next step's logits
    # are those of the row decoded alone
    _, ragged = scanned(x[:, :7], scanned.init_cache(2), lengths=jnp.array([7, 4]))
    _, alone = scanned(x[1:, :4], scanned.init_cache(1))
    step, _ = scanned(jnp.stack([x[0, 7:8], x[1, 4:5]]), ragged)
    np.testing.assert_allclose(step[1], scanned(x[1:, 4:5], alone)[0][0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(step[1], full[1, 4:5], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", SCANNED)
def test_scanned_layers_sow_what_the_unrolled_ones_do(name):
    """The activation probes and the gate's metrics and loss come out of the scan, per layer, in layer order."""
    from hrm.training.monitor import activation_norms
    from hrm.training.state import forward_terms

    unrolled, scanned = pair(name)
    batch = {"inputs": tokens(), "targets": tokens(seed=1), "mask": jnp.ones((2, 12), bool)}
    for key in (activation_norms, forward_terms):
        a = key(*nnx.split(unrolled), batch)
        b = key(*nnx.split(scanned), batch)
        jax.tree.map(lambda u, s: np.testing.assert_allclose(u, s, rtol=1e-5, atol=1e-6), a, b)
    assert any(k.startswith("act_rms_layer_") for k in activation_norms(*nnx.split(scanned), batch))


def grads_and_jaxpr(model):
    graphdef, params = nnx.split(model)

    def loss(p):
        logits, _ = nnx.merge(graphdef, p)(tokens(length=8))
        return jnp.mean(logits**2)

    traced = jax.jit(jax.grad(loss)).trace(params)  # one trace: its jaxpr, then its compile
    return traced.lower().compile()(params), str(traced.jaxpr)


@functools.cache
def plain_grads(name):
    """The gradients without remat, which both policies' tests compare to."""
    return grads_and_jaxpr(build_model(SMALL[name], seed=2))[0]


@pytest.mark.parametrize("name", SCANNED)
@pytest.mark.parametrize("policy", ["save_named", "save_projections"])
def test_named_remat_policies_keep_the_gradients(name, policy):
    plain = plain_grads(name)
    remat, jaxpr = grads_and_jaxpr(build_model(dataclasses.replace(SMALL[name], remat=policy), seed=2))
    assert "checkpoint" in jaxpr or "remat" in jaxpr
    assert "name=conv_out" in jaxpr and "name=in_proj" in jaxpr
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(remat)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def step_temp_bytes(cfg: ModelConfig, batch=4, length=256) -> int:
    """Temporary bytes of the compiled gradient of the model's mean logit² (XLA's memory analysis)."""
    graphdef, params = nnx.split(build_model(cfg))
    x = jax.ShapeDtypeStruct((batch, length), jnp.int32)

    def loss(p, t):
        return jnp.mean(nnx.merge(graphdef, p).features(t)[0] ** 2)

    compiled = jax.jit(jax.grad(loss)).lower(params, x).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_remat_inside_the_scan_lowers_the_compiled_memory():
    """XLA credits remat on the scanned stack (an unrolled one schedules the recomputation early), and
    recomputing the conv output and dt ("save_projections") keeps less than saving them ("save_named")."""
    cfg = ModelConfig(d_model=64, n_layers=6, d_state=8, vocab_size=VOCAB, scan_backend="sequential")
    none = step_temp_bytes(cfg)
    block = step_temp_bytes(dataclasses.replace(cfg, remat="block"))
    named = step_temp_bytes(dataclasses.replace(cfg, remat="save_named"))
    projections = step_temp_bytes(dataclasses.replace(cfg, remat="save_projections"))
    assert block < 0.5 * none, (block, none)
    assert projections < named < none, (projections, named, none)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["mamba", *FAMILY_RUNS])
def test_training_steps_give_equal_losses_scanned_and_unrolled(tmp_path, trained_run, family):
    """Each family's configs/tiny*.py with every step made tiny (``helpers.tiny_file_config``): what scanning
    changes is the stack's structure, not its width. Dropout is on: each layer draws the same masks scanned as
    unrolled (hrm/models/dropout.py ``layer_key``). The scanned runs are the session's shared ones
    (tests/conftest.py); mamba's, of configs/tiny.py, trains here."""
    if family == "mamba":
        config = tiny_file_config("tiny.py")
        scanned = [r["loss"] for r in train(config, tmp_path / "scanned", log=lambda *_: None)]
    else:
        run = trained_run(family)
        config, scanned = run.config, [r["loss"] for r in run.records]
    assert config.model.scan_layers and config.model.dropout
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, scan_layers=False))
    unrolled = [r["loss"] for r in train(config, tmp_path / "unrolled", log=lambda *_: None)]
    assert len(scanned) == config.train.steps
    np.testing.assert_allclose(scanned, unrolled, rtol=1e-5)


def test_a_run_saved_with_per_layer_parameters_loads_and_fine_tunes_scanned(tmp_path):
    """A run whose config.json predates model.scan_layers holds per-layer parameters: it loads as saved
    (unrolled), and ``--init_from`` starts a scanned run from its weights, stacked."""
    import json

    from hrm import api
    from hrm.training import checkpoint
    from tests.helpers import small_config

    old = small_config(steps=2, save_every=2)
    old.model = dataclasses.replace(old.model, scan_layers=False)
    train(old, tmp_path / "old", log=lambda *_: None)
    raw = json.loads((tmp_path / "old" / "config.json").read_text())
    del raw["model"]["scan_layers"]  # as written before the option existed
    (tmp_path / "old" / "config.json").write_text(json.dumps(raw))

    loaded = api.load(tmp_path / "old")
    assert loaded.config.model.scan_layers is False and 0 in loaded.params["layers"]

    new = small_config(steps=1, save_every=1, lr=1e-9, warmup_steps=0)
    new.model = dataclasses.replace(loaded.config.model, scan_layers=True)
    train(new, tmp_path / "new", init_from=tmp_path / "old", log=lambda *_: None)
    from hrm.training.state import abstract_params

    start, _ = checkpoint.restore_params(tmp_path / "new", abstract_params(new))
    layers = loaded.params["layers"]
    for name in ("in_proj", "out_proj"):
        stacked = np.stack([np.asarray(layers[i]["mixer"][name]["kernel"]) for i in range(len(layers))])
        np.testing.assert_allclose(start["layers"]["mixer"][name]["kernel"], stacked, atol=1e-6)

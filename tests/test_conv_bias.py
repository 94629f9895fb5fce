"""``model.conv_bias=False``: no conv bias parameter (mamba-ssm's ``conv_bias`` flag), the same math as a zero bias,
and runs saved when hrm still created (and trained) one load or say how to."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

import hrm
from hrm.config import Config, ModelConfig
from hrm.training.checkpoint import CheckpointError, Checkpoints
from hrm.training.state import init_model

CFG = ModelConfig(d_model=32, n_layers=2, d_state=8, vocab_size=64, conv_bias=False)
TOKENS = np.random.default_rng(0).integers(0, 64, (2, 12))


@pytest.mark.parametrize("scan_layers", [True, False])
def test_no_conv_bias_parameter_and_the_math_of_a_zero_bias(scan_layers):
    cfg = dataclasses.replace(CFG, scan_layers=scan_layers)
    _, params = init_model(Config(model=cfg))
    names = {jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
    assert not [n for n in names if "conv_bias" in n], "conv_bias=False creates no conv bias to train"
    assert [n for n in names if "conv_kernel" in n]
    graphdef_without, _ = init_model(Config(model=cfg))
    graphdef_with, biased = init_model(Config(model=dataclasses.replace(cfg, conv_bias=True)))
    zero_bias = jax.tree_util.tree_map_with_path(
        lambda p, x: 0 * x if "conv_bias" in jax.tree_util.keystr(p) else x, biased
    )
    dropped = jax.tree.map(lambda x: x, biased)
    for mixer in [dropped["layers"]["mixer"]] if scan_layers else [l["mixer"] for l in dropped["layers"].values()]:
        del mixer["conv_bias"]
    logits = lambda graphdef, params: nnx.merge(graphdef, params)(TOKENS)[0]
    # two programs: XLA may fuse (and round) them differently, so equal up to float32 rounding, not bit for bit
    np.testing.assert_allclose(
        logits(graphdef_without, dropped), logits(graphdef_with, zero_bias), rtol=1e-5, atol=1e-6
    )


def save_run(path, config, params):
    path.mkdir()
    config.save_json(path / "config.json")
    mgr = Checkpoints(path, config=config)
    mgr.save(0, {"step": 0, "params": params}, final=True)
    mgr.close()


def test_a_run_saved_with_a_conv_bias_under_conv_bias_false_loads(tmp_path):
    """Older hrm created a conv bias under conv_bias=False (zeros at init) and trained it: a zero one is dropped,
    a trained one is an error naming the config change that keeps it."""
    config = Config(model=dataclasses.replace(CFG, scan_layers=False))
    _, params = init_model(dataclasses.replace(config, model=dataclasses.replace(config.model, conv_bias=True)))
    zeroed = jax.tree_util.tree_map_with_path(
        lambda path, x: np.zeros_like(x) if "conv_bias" in jax.tree_util.keystr(path) else x, params
    )
    save_run(tmp_path / "zero", config, zeroed)
    loaded = hrm.load(tmp_path / "zero")
    assert "conv_bias" not in loaded.params["layers"][0]["mixer"]
    save_run(tmp_path / "trained", config, params)
    with pytest.raises(CheckpointError, match='trained a conv bias under model.conv_bias=false.*"conv_bias": true'):
        hrm.load(tmp_path / "trained")
    fixed = dataclasses.replace(config, model=dataclasses.replace(config.model, conv_bias=True))
    fixed.save_json(tmp_path / "trained" / "config.json")
    np.testing.assert_array_equal(
        hrm.load(tmp_path / "trained").params["layers"][1]["mixer"]["conv_bias"],
        params["layers"][1]["mixer"]["conv_bias"],
    )

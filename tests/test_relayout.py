"""hrm/training/relayout.py: a run saved with per-layer parameters, converted to scanned layers, resumes exactly."""

import pytest

import hrm.training.loop as loop
from hrm import convert
from hrm.errors import UsageError
from hrm.models import per_layer
from hrm.training import checkpoint
from hrm.training.metrics import read_metrics
from tests.helpers import small_config


def quiet(*_):
    pass


def unrolled_config():
    config = small_config(steps=4, save_every=2)
    config.model.scan_layers = False
    return config


def test_a_per_layer_run_converted_to_stacked_layers_resumes_with_the_same_losses(tmp_path, capsys):
    old, new = tmp_path / "old", tmp_path / "new"
    loop.train(unrolled_config(), old, quiet, stop_at_step=2)
    convert.main([str(old), str(new)])
    assert f"wrote {new}: steps 2 of {old} with stacked layers" in capsys.readouterr().out
    saved = checkpoint.read_run_config(new)
    assert saved.model.scan_layers
    assert not per_layer(checkpoint.read_numpy_state(checkpoint.checkpoint_root(new) / "2", ("params",))["params"])

    loop.train(unrolled_config(), old, quiet)  # resumes unrolled
    loop.train(saved, new, quiet)  # resumes scanned from the converted step 2: its optimizer, data position, step
    losses = lambda run: [r["loss"] for r in read_metrics(run) if "loss" in r and r["step"] > 2]
    assert len(losses(new)) == 2
    assert losses(new) == pytest.approx(losses(old), rel=1e-5)

    with pytest.raises(UsageError, match="already holds stacked layers"):
        convert.main([str(new), str(tmp_path / "again")])

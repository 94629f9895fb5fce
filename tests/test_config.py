import json
import re

import pytest

from hrm.config import (
    RANGES,
    Config,
    ConfigError,
    TrainConfig,
    apply_override,
    load_config_file,
    numeric_fields,
    resolve_config,
    validate,
)
from tests.helpers import ROOT, TINY


def test_overrides_are_typed():
    config = load_config_file(ROOT / "configs/tiny.py")
    assert config.name == "tiny"
    apply_override(config, "train.steps", "12")
    apply_override(config, "train.lr", "1e-3")
    apply_override(config, "model.tie_embeddings", "false")
    apply_override(config, "data.tokenizer", "byte")
    assert (config.train.steps, config.train.lr, config.model.tie_embeddings) == (12, 1e-3, False)


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("train.stepz", "3", "unknown config key 'train.stepz'; did you mean train.steps"),
        ("train.steps", "many", "config key 'train.steps' expects int, got 'many'"),
        ("train.steps", "2.5", "config key 'train.steps' expects int"),
        ("model.tie_embeddings", "maybe", "expects bool"),
        ("train", "3", "unknown config key 'train'"),
    ],
)
def test_bad_overrides_name_the_key(key, value, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        apply_override(Config(), key, value)


@pytest.mark.parametrize(
    "key,value",
    [
        ("train.steps", "0"),
        ("model.d_model", "-4"),
        ("train.lr", "3"),
        ("model.dtype", "float8"),
        ("model.scan_backend", "cuda"),
    ],
)
def test_impossible_values_are_rejected(key, value):
    config = Config()
    with pytest.raises(ConfigError, match=key):
        apply_override(config, key, value)  # a choice outside its Literal fails here, a size in validate
        validate(config)


def test_choices_and_scales_parse_once_wherever_they_come_from():
    config = Config()
    apply_override(config, "model.attention_scales", "1,4")
    assert config.model.attention_scales == (1, 4)
    assert Config.from_dict({"model": {"attention_scales": [2, 8], "remat": "block"}}).model.attention_scales == (2, 8)
    with pytest.raises(ConfigError, match="'model.remat' must be one of none, block, dots_saveable"):
        apply_override(config, "model.remat", "everything")
    config.model.attention_scales, config.model.dtype = "1,2", "bfloat16"  # as a Python config file may set them
    validate(config)
    assert config.model.attention_scales == (1, 2)
    config.model.family = "transformer"
    with pytest.raises(ConfigError, match="'model.family' must be one of mamba, hybrid_recursive"):
        validate(config)


def test_config_round_trips_through_json(tmp_path):
    config = load_config_file(ROOT / "configs/tiny.py")
    config.save_json(tmp_path / "c.json")
    assert Config.load_json(tmp_path / "c.json") == config


def test_cli_config_errors_are_one_line_with_exit_code_2(run_cli):
    from hrm.train import main

    for args, expected in [
        (["--config.train.stepz=3"], "did you mean train.steps"),
        (["--config.train.batch_size", "x"], "expects int"),
        (["--nonsense"], "unrecognized argument '--nonsense'"),
    ]:
        code, _, err = run_cli(main, "--config", TINY, *args)
        assert code == 2
        lines = err.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0] and "Traceback" not in err
    code, _, err = run_cli(main, "--config", ROOT / "configs/missing.py")
    assert code == 2 and "configs/missing.py' not found" in err


@pytest.mark.slow
def test_an_installed_wheel_ships_the_configs_and_the_console_scripts(tmp_path):
    """A regular (non-editable) install has no checkout beside it: ``--model_size`` must find the configs the
    wheel installs as ``hrm.configs``, the kernels import as ``hrm.kernels``, the wheel claims no top-level
    name but ``hrm``, and the console scripts must be declared."""
    import importlib
    import os
    import shutil
    import subprocess
    import sys
    import zipfile

    source = tmp_path / "source"  # setuptools builds in-tree: keep the checkout clean
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".*", "__pycache__", "*.egg-info", "build", "runs"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp_path / "wheel", source],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "wheel").glob("hrm_mamba-*.whl")  # the distribution's own name (PyPI's hrm is another)
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    (dist_info,) = site.glob("hrm_mamba-*.dist-info")
    assert sorted(p.name for p in site.iterdir()) == sorted(["hrm", dist_info.name])  # no other top-level name
    assert (site / "hrm/configs/hybrid_small.py").is_file() and (site / "hrm/kernels/selective_scan.py").is_file()
    packages = {p.parent.relative_to(ROOT) for p in (ROOT / "hrm").rglob("__init__.py")}
    assert all((site / package / "__init__.py").is_file() for package in packages), packages  # every subpackage
    entry_points = (dist_info / "entry_points.txt").read_text()
    scripts = dict(
        line.split(" = ") for line in entry_points.split("[console_scripts]")[1].split("\n") if " = " in line
    )
    assert {"hrm-train", "hrm-sample", "hrm-serve", "hrm-eval"} <= set(scripts)
    for target in scripts.values():  # every script names a real zero-argument entry point
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), target
    env = {**os.environ, "PYTHONPATH": str(site), "JAX_PLATFORMS": "cpu"}
    script = (
        "import hrm.info, hrm.kernels, sys; print(hrm.info.__file__, hrm.kernels.__file__); "
        "sys.argv[1:] = ['--model_size', 'hybrid-small']; "
        "hrm.info.cli()"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    files = result.stdout.split("\n")[0].split()
    assert all(f.startswith(str(site)) for f in files) and "documented size: 75.00M" in result.stdout


def test_every_numeric_field_has_a_range_and_refuses_negatives_nan_and_infinity():
    """Flags, JSON and Python configs all reach validate(); no numeric field is negative-able or NaN-able."""
    fields = numeric_fields(Config())
    assert "train.grad_clip" in fields and "data.synthetic.examples" in fields and set(fields) == set(RANGES)
    for key, (_, kind) in fields.items():
        bad_values = [-1] + ([float("nan"), float("inf")] if kind is float else [])
        for bad in bad_values:
            config = Config()
            apply_override(config, key, str(bad))
            with pytest.raises(ConfigError, match=rf"^config key '{key}' must "):
                validate(config)


@pytest.mark.parametrize(
    "key,value",
    [
        ("train.grad_clip", "-1"),  # every update would be gradient ascent
        ("train.grad_clip", "nan"),
        ("train.b1", "1.0"),
        ("train.b2", "2.0"),
        ("train.weight_decay", "-5"),
        ("train.lr", "inf"),
        ("model.rope_theta", "nan"),  # every step would be non-finite
        ("model.norm_eps", "-1"),
        ("model.dt_init_floor", "0"),
        ("train.seed", str(2**40)),
    ],
)
def test_settings_that_train_wrong_are_refused_from_flags_json_and_python(tmp_path, key, value):
    section, name = key.split(".")
    config = Config()
    apply_override(config, key, value)  # a flag
    with pytest.raises(ConfigError, match=rf"config key '{key}' must "):
        validate(config)
    path = tmp_path / "c.json"
    path.write_text(json.dumps({section: {name: float(value) if "." in value or "n" in value else int(value)}}))
    with pytest.raises(ConfigError, match=rf"config key '{key}' must "):
        resolve_config(load_config_file(path))  # a JSON file
    python_config = tmp_path / "c.py"
    python_config.write_text(
        "from hrm.config import Config\n\n\ndef get_config():\n"
        f"    config = Config()\n    config.{key} = {value if value[0].isdigit() or value[0] == '-' else repr(value)}\n"
        "    return config\n"
    )
    with pytest.raises(ConfigError, match=rf"config key '{key}' "):
        resolve_config(load_config_file(python_config))  # a Python file (a string value is parsed, then refused)


def test_grad_clip_zero_is_off_not_a_frozen_model():
    import jax.numpy as jnp

    from hrm.training.optimizer import make_optimizer

    params = {"w": jnp.ones((2, 2))}
    grads = {"w": jnp.full((2, 2), 10.0)}
    for clip in (0.0, 1.0):
        optimizer = make_optimizer(TrainConfig(grad_clip=clip, warmup_steps=0, weight_decay=0.0))
        updates, _ = optimizer.update(grads, optimizer.init(params), params)
        assert float(jnp.abs(updates["w"]).max()) > 0  # clipping to 0 would zero every update


def test_the_documents_vram_section_is_parsed_before_arithmetic(tmp_path):
    path = tmp_path / "doc.json"
    path.write_text(json.dumps({"vram": {"batch_size": "4", "gradient_accumulation_steps": 2}}))
    config = load_config_file(path)
    assert (config.train.batch_size, config.train.accumulation_steps) == (8, 2)  # not "4" * 2 = "44"
    for vram, message in [
        ({"batch_size": "four"}, "config key 'vram.batch_size' expects int, got 'four'"),
        ({"batch_size": 2.5}, "config key 'vram.batch_size' expects int, got 2.5"),
        ({"batch_size": 4, "gradient_accumulation_steps": [2]}, "'vram.gradient_accumulation_steps' expects int"),
    ]:
        path.write_text(json.dumps({"vram": vram}))
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config_file(path)


@pytest.mark.parametrize(
    "raw,message",
    [
        ([1, 2, 3], "a config must be a JSON object of keys and values, got [1, 2, 3]"),
        ({"model": 7}, "section 'model' must be a JSON object of keys and values, got 7"),
        ({"train": {"steps": 5}, "data": "text"}, "section 'data' must be a JSON object"),
    ],
)
def test_a_config_json_of_the_wrong_shape_is_one_line(tmp_path, raw, message):
    from hrm.training.checkpoint import CheckpointError, read_run_config

    with pytest.raises(ConfigError, match=re.escape(message)):
        Config.from_dict(raw)
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match=r"config.json' is damaged \(ConfigError: .+\) and no checkpoint"):
        read_run_config(tmp_path)
    with pytest.raises(ConfigError, match="config file"):
        load_config_file(tmp_path / "config.json")

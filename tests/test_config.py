import pytest

from hrm.config import Config, ConfigError, apply_override, load_config_file, validate
from tests.helpers import ROOT, run_module


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


def test_cli_config_errors_are_one_line_with_exit_code_2():
    for args, expected in [
        (["--config.train.stepz=3"], "did you mean train.steps"),
        (["--config.train.batch_size", "x"], "expects int"),
        (["--nonsense"], "unrecognized argument '--nonsense'"),
    ]:
        result = run_module("hrm.train", "--config", "configs/tiny.py", *args, check=False)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0] and "Traceback" not in result.stderr
    missing = run_module("hrm.train", "--config", "configs/missing.py", check=False)
    assert missing.returncode == 2 and "configs/missing.py' not found" in missing.stderr


@pytest.mark.slow
def test_an_installed_wheel_ships_the_configs_and_the_console_scripts(tmp_path):
    """A regular (non-editable) install has no checkout beside it: ``--model_size`` must find the configs the
    wheel installs as ``hrm.configs``, and the console scripts must be declared."""
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
    (wheel,) = (tmp_path / "wheel").glob("hrm-*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    assert (site / "hrm/configs/hybrid_small.py").is_file() and not (site / "configs").exists()
    entry_points = next(site.glob("hrm-*.dist-info/entry_points.txt")).read_text()
    scripts = dict(
        line.split(" = ") for line in entry_points.split("[console_scripts]")[1].split("\n") if " = " in line
    )
    assert {"hrm-train", "hrm-sample", "hrm-serve", "hrm-eval"} <= set(scripts)
    for target in scripts.values():  # every script names a real zero-argument entry point
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), target
    env = {**os.environ, "PYTHONPATH": str(site), "JAX_PLATFORMS": "cpu"}
    script = (
        "import hrm.info, sys; print(hrm.info.__file__); sys.argv[1:] = ['--model_size', 'hybrid-small']; "
        "hrm.info.cli()"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(str(site)) and "documented size: 75.00M" in result.stdout

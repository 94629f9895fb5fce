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


@pytest.mark.parametrize("key,value,message", [
    ("train.stepz", "3", "unknown config key 'train.stepz'; did you mean train.steps"),
    ("train.steps", "many", "config key 'train.steps' expects int, got 'many'"),
    ("train.steps", "2.5", "config key 'train.steps' expects int"),
    ("model.tie_embeddings", "maybe", "expects bool"),
    ("train", "3", "unknown config key 'train'"),
])
def test_bad_overrides_name_the_key(key, value, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        apply_override(Config(), key, value)


@pytest.mark.parametrize("key,value", [("train.steps", "0"), ("model.d_model", "-4"), ("train.lr", "3"),
                                       ("model.dtype", "float8"), ("model.scan_backend", "cuda")])
def test_impossible_values_are_rejected(key, value):
    config = Config()
    apply_override(config, key, value)
    with pytest.raises(ConfigError, match=key):
        validate(config)


def test_config_round_trips_through_json(tmp_path):
    config = load_config_file(ROOT / "configs/tiny.py")
    config.save_json(tmp_path / "c.json")
    assert Config.load_json(tmp_path / "c.json") == config


def test_cli_config_errors_are_one_line_with_exit_code_2():
    for args, expected in [(["--config.train.stepz=3"], "did you mean train.steps"),
                           (["--config.train.batch_size", "x"], "expects int"),
                           (["--nonsense"], "unrecognized argument '--nonsense'")]:
        result = run_module("hrm.train", "--config", "configs/tiny.py", *args, check=False)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0] and "Traceback" not in result.stderr
    missing = run_module("hrm.train", "--config", "configs/missing.py", check=False)
    assert missing.returncode == 2 and "configs/missing.py' not found" in missing.stderr

"""Config files: the shipped ones (``configs/``) by ``--model_size`` name, and loading any one."""

from __future__ import annotations

import importlib.util
import json
import types
from importlib.resources import files
from pathlib import Path

from hrm.config.documents import config_from_json
from hrm.config.parse import ConfigError
from hrm.config.schema import Config


def config_dir() -> Path:
    """The shipped config files: ``configs/`` of a source checkout, else the installed ``hrm.configs`` package
    (pyproject.toml maps it onto ``configs/``)."""
    checkout = Path(__file__).resolve().parents[2] / "configs"
    if checkout.is_dir():
        return checkout
    return Path(str(files("hrm.configs")))


def config_files() -> list[Path]:
    """Every shipped config file, sorted by name."""
    return sorted(config_dir().glob("[!_]*.py"))


def model_sizes() -> dict[str, Path]:
    """``--model_size`` names → config files, derived from the file names: ``hybrid_small.py`` is
    ``hybrid-small``, and a ``mamba_*`` file is also its bare size (``mamba_medium_lite.py`` is ``medium-lite``,
    the names docs/MODELS.md "Documented sizes" gives the Mamba sizes)."""
    sizes = {}
    for path in config_files():
        name = path.stem.replace("_", "-")
        sizes[name] = path
        if name.startswith("mamba-"):
            sizes[name.removeprefix("mamba-")] = path
    return sizes


def model_size_config(name: str) -> Path:
    """The config file of a model size name (``hybrid-small``; underscores and capitals work too)."""
    sizes = model_sizes()
    key = name.strip().lower().replace("_", "-")
    if key not in sizes:
        names = [size for size in sizes if not size.startswith("mamba-")]
        raise ConfigError(f"unknown --model_size '{name}'; choose one of {', '.join(names)}")
    return sizes[key]


def load_config_file(path: str | Path) -> Config:
    """The config of a Python file's ``get_config()`` or of a JSON file (hrm's saved ``config.json`` or the
    design documents' format, ``config_from_json``); the file's stem becomes the default run name."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(
            f"--config '{path}' is a folder; pass a config file such as configs/tiny.py or a "
            f"run's config.json (--resume/--init_from take run folders)"
        )
    if not path.is_file():
        raise ConfigError(f"config file '{path}' not found; pass a file such as configs/tiny.py")
    if path.suffix.lower() == ".json":
        try:
            raw = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ConfigError(f"config file '{path}' is not readable JSON: {error}") from error
        config = config_from_json(raw, str(path))
    else:
        config = _run_get_config(path)
    if config.name == Config.name:
        config.name = path.stem
    return config


def _run_get_config(path: Path) -> Config:
    spec = importlib.util.spec_from_file_location(f"hrm_config_{path.stem}", path)
    if spec is None:
        raise ConfigError(f"config file '{path}' is neither a Python file with get_config() nor a .json file")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as error:  # a config file is user code: report, don't trace back
        raise ConfigError(f"config file '{path}' failed to run: {type(error).__name__}: {error}") from error
    if not isinstance(getattr(module, "get_config", None), types.FunctionType):
        raise ConfigError(f"config file '{path}' must define get_config() returning hrm.config.Config")
    try:
        config = module.get_config()
    except Exception as error:
        raise ConfigError(f"get_config() in config file '{path}' failed: {type(error).__name__}: {error}") from error
    if not isinstance(config, Config):
        raise ConfigError(f"get_config() in '{path}' returned {type(config).__name__}, expected Config")
    return config

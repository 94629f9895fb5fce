"""Run configuration: typed dataclasses, config files, dotted overrides and their error messages.

A config file is a plain Python file with ``get_config() -> Config``. On the command line,
``--config.train.steps=30`` overrides one field; the value is parsed with the field's type, and an
unknown key or a bad value raises ``ConfigError`` with one line that names the key.

One job per module: ``schema`` (the dataclasses), ``parse`` (values from strings and JSON, dotted keys),
``documents`` (the design documents' JSON format), ``files`` (config files and the ``--model_size`` registry),
``presets`` (training presets, the shipped configs' starting points), ``validate`` (ranges and rules),
``flags`` (a config assembled from command-line flags and overrides).
"""

from hrm.config.documents import config_from_json
from hrm.config.files import config_dir, config_files, load_config_file, model_size_config, model_sizes
from hrm.config.flags import DATA_FLAGS, build_config, parse_overrides
from hrm.config.parse import ConfigError, all_keys, apply_override
from hrm.config.presets import TRAINING_PRESETS, cpu_sized_config, documented_size_config
from hrm.config.schema import (
    DEFAULT_SAFETY_MARGIN_MB,
    GPT2_TOKENS,
    GPT2_VOCAB,
    VOCAB_MULTIPLE,
    Config,
    DataConfig,
    ModelConfig,
    SyntheticConfig,
    TrainConfig,
)
from hrm.config.validate import RANGES, check_ranges, numeric_fields, resolve_config, validate

__all__ = [
    "DATA_FLAGS",
    "build_config",
    "parse_overrides",
    "DEFAULT_SAFETY_MARGIN_MB",
    "GPT2_TOKENS",
    "GPT2_VOCAB",
    "RANGES",
    "TRAINING_PRESETS",
    "VOCAB_MULTIPLE",
    "Config",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "SyntheticConfig",
    "TrainConfig",
    "all_keys",
    "apply_override",
    "check_ranges",
    "config_dir",
    "config_files",
    "config_from_json",
    "cpu_sized_config",
    "documented_size_config",
    "load_config_file",
    "model_size_config",
    "model_sizes",
    "numeric_fields",
    "resolve_config",
    "validate",
]

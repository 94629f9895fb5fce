"""Config assembly from command-line flags: the data flags, ``--config.a.b=v`` overrides, presets, hints.

The command-line modules (hrm.train, hrm.eval, hrm.info, hrm.memtest) share these; a wrong flag gets a one-line
``UsageError`` naming what to write instead.
"""

from __future__ import annotations

from hrm.config.files import load_config_file
from hrm.config.parse import apply_override
from hrm.config.presets import TRAINING_PRESETS
from hrm.config.schema import Config
from hrm.errors import UsageError

OVERRIDE_PREFIX = "--config."
DATA_FLAGS = {  # shorthands for --config.data.<flag>, named as the design documents' trainer names them
    "data_dir": "a folder of .txt/.py/.md/.json files",
    "data_path": "a dialogue JSONL file ({context: [...], response, source} per line)",
    "dataset": "a local .jsonl/.json/.parquet/.csv file, a save_to_disk folder or a Hugging Face dataset name",
    "dataset_split": "the dataset split (default train)",
    "text_column": "comma-separated text columns, joined with a blank line (default text)",
    "tokenizer": "byte, cl100k_base, gpt2, r50k_base, o200k_base or a .tiktoken file (the model's vocab follows it)",
}


def parse_overrides(extra: list[str]) -> list[tuple[str, str]]:
    """``--config.a.b=v`` or ``--config.a.b v`` pairs from the arguments argparse did not know."""
    pairs, i = [], 0
    while i < len(extra):
        arg = extra[i]
        if not arg.startswith(OVERRIDE_PREFIX):
            raise UsageError(f"unrecognized argument '{arg}'; {flag_hint(arg)}")
        key, eq, value = arg[len(OVERRIDE_PREFIX) :].partition("=")
        if not eq:
            if i + 1 >= len(extra):
                raise UsageError(f"override '{arg}' needs a value, e.g. {arg}=VALUE")
            value, i = extra[i + 1], i + 1
        pairs.append((key, value))
        i += 1
    return pairs


# Flags of the design documents' trainer (docs/MODELS.md "Documented sizes") that hrm spells differently: where
# each lives here, so a command written for that trainer gets a hint instead of a bare "unrecognized argument".
DOCUMENT_FLAGS = {
    "n_blocks": "--config.model.n_layers",
    "n_layers": "--config.model.n_layers",
    "d_model": "--config.model.d_model",
    "d_state": "--config.model.d_state",
    "expand_factor": "--config.model.expand",
    "dropout": "--config.model.dropout",
    "recurrent_depth": "--config.model.recurrent_depth",
    "checkpoint_segments": "--config.model.checkpoint_segments",
    "use_checkpointing": "--config.model.remat=block",
    "max_grad_norm": "--config.train.grad_clip",
    "warmup_steps": "--config.train.warmup_steps",
    "max_steps": "--config.train.steps",
    "steps": "--config.train.steps",
    "lr": "--learning_rate",
    "save_steps": "--config.train.save_every",
    "save_interval": "--config.train.save_every",
    "eval_steps": "--config.train.eval_every",
    "weight_decay": "--config.train.weight_decay",
    "gradient_accumulation_steps": "--accumulation_steps",
    "max_length": "--max_seq_len",
    "seq_len": "--max_seq_len",
    "checkpoint_dir": "--output_dir",
    "resume_from": "--resume",
    "use_wandb": "--wandb",
    "cache_tokenization": "nothing (hrm always caches the tokenized data)",
    "use_8bit_adam": "nothing (hrm's AdamW keeps float32 moments; try --config.train.shard_params=True)",
}


def flag_hint(arg: str) -> str:
    """What to write instead of an unknown flag: a design-documents flag's hrm name, else the override syntax."""
    name = arg.lstrip("-").split("=", 1)[0].replace("-", "_")
    if name in DOCUMENT_FLAGS:
        return f"did you mean {DOCUMENT_FLAGS[name]}?"
    return "overrides look like --config.train.steps=100 (see --help)"


def apply_preset(config: Config, preset: str) -> None:
    if preset not in TRAINING_PRESETS:
        raise UsageError(f"unknown --training_preset '{preset}'; choose one of {', '.join(TRAINING_PRESETS)}")
    for key, value in TRAINING_PRESETS[preset].items():
        setattr(config.train, key, value)


def build_config(
    config_path: str | None,
    overrides: list[tuple[str, str]],
    preset: str | None = None,
    start: Config | None = None,
    resuming: bool = False,
) -> Config:
    """The config file's (or, with none, the starting run's) config; the model and tokenizer (and, ``resuming``,
    the row length) of ``start``, the config of the run that ``--init_from`` or ``--resume`` starts from; the
    preset; then the overrides."""
    config = load_config_file(config_path) if config_path else None
    if start is not None:
        config = config or start
        config.model, config.data.tokenizer = start.model, start.data.tokenizer
        if resuming:
            config.data.seq_len = start.data.seq_len
    if preset is not None:
        apply_preset(config, preset)
    for key, value in overrides:
        apply_override(config, key, value)
    return config

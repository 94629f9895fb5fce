"""Run configuration: typed dataclasses, config files, dotted overrides and their error messages.

A config file is a plain Python file with ``get_config() -> Config``. On the command line,
``--config.train.steps=30`` overrides one field; the value is parsed with the field's type, and an
unknown key or a bad value raises ``ConfigError`` with one line that names the key.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import importlib.util
import json
import math
import types
import typing
from pathlib import Path
from typing import Literal

from hrm.errors import UserError
from kernels import BACKENDS
from kernels.chunked_scan import MAX_CHUNK, MIN_CHUNK


class ConfigError(UserError):
    """A configuration problem the user can fix; the message is one line naming it."""


Family = Literal["mamba", "hybrid_recursive", "recursive_ssm", "hybrid_pattern"]  # hrm.models.FAMILIES
Dtype = Literal["float32", "bfloat16"]
LogitsDtype = Literal["auto", "float32", "bfloat16"]
ScanBackend = Literal[BACKENDS]  # kernels.selective_scan's backends
# model.remat: what each layer keeps for the backward pass (hrm.models.lm.REMAT_POLICIES maps them to jax's).
Remat = Literal["none", "block", "dots_saveable", "dots_with_no_batch_dims_saveable", "save_named", "save_projections"]


@dataclasses.dataclass
class ModelConfig:
    family: Family = "mamba"
    d_model: int = 256
    n_layers: int = 4
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int = 0  # 0: ceil(d_model / 16), as the reference
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    dt_init_floor: float = 1e-4
    conv_bias: bool = True
    bias: bool = False
    norm_eps: float = 1e-5
    vocab_size: int = 0  # embedding/head rows; 0: the tokenizer's size rounded up to a multiple of 128
    token_vocab_size: int = 0  # ids the tokenizer makes; logits of the rows past it are -inf (0: every row)
    tie_embeddings: bool = True
    rescale_prenorm_residual: bool = True
    residual_in_fp32: bool = True
    dtype: Dtype = "float32"  # compute dtype; parameters stay float32
    logits_dtype: LogitsDtype = "auto"  # the LM head's matmul inputs ("auto": the compute dtype); it
    # accumulates, and the softmax and loss run, in float32 either way
    scan_backend: ScanBackend = "auto"
    scan_chunk: int = 0  # the chunked scan's steps per chunk, 16..1024; 0: about sqrt(seq_len) within 64..256
    # --- attention (hybrid_recursive's hierarchical attention, hybrid_pattern's "A" layers) ---
    n_heads: int = 4  # attention heads; d_model must be a multiple
    rope_theta: float = 10000.0  # RoPE base
    attention_scales: tuple[int, ...] = (1, 2, 4)  # hybrid_recursive: pooling factors of the multi-scale attention
    # (on the command line and in JSON also "1,2,4")
    max_cache_len: int = 2048  # KV-cache positions for decoding (prompt + generated tokens must fit)
    mlp_ratio: int = 4  # hidden width / d_model of the MLPs (attention layers, recursive transform)
    # --- hybrid_recursive (docs/MODELS.md) ---
    max_recursion_depth: int = 3  # applications of the shared recursive transform
    gate_per_token: bool = False  # depth gate per token; False: per sequence (causal running mean)
    ponder_prior: float = 0.0  # depth prior: truncated geometric(p); 0 = uniform over depths
    gate_reg_weight: float = 0.01  # weight of KL(gate || prior), the anti-collapse term (0 disables)
    # --- hybrid_pattern (docs/MODELS.md) ---
    layer_pattern: str = ""  # one letter per layer: M = Mamba, A = attention + MLP; length n_layers
    # --- recursive_ssm: n_layers physical blocks applied recurrent_depth times ---
    recurrent_depth: int = 1
    adapter_rank: int = 0  # per-depth low-rank adapter rank (per-depth scale/shift always present)
    checkpoint_segments: int = 1  # recursive_ssm: blocks per remat segment (when remat is not "none")
    # --- memory ---
    dropout: float = 0.0  # residual dropout on every branch (Mamba, attention, MLP, recursion, fusion)
    # while training; never in evaluation or decoding; 0 = none
    remat: Remat = "none"  # rematerialise each layer in the backward pass: "none", "block" (keep only
    # its input), a jax.checkpoint_policies name (dots_with_no_batch_dims_saveable) or a named policy:
    # "save_named" keeps the values the layers tag (layer input, in/out projections, attention output, conv
    # output, dt), "save_projections" the same less the conv output and dt (recomputed in the backward)
    scan_layers: bool = True  # run the repeated layers under nnx.scan, parameters stacked on a leading layer
    # axis (compile time flat in depth, remat XLA honours); False: the unrolled Python loop (debugging)


@dataclasses.dataclass
class SyntheticConfig:
    """``--dataset synthetic:NAME``: generated task examples (hrm/data/synthetic.py; sizes 0 = task default)."""

    examples: int = 20000  # training documents generated (data.eval_fraction of them held out)
    length: int = 0  # task size: sequence length, key-value pairs, digits or operations
    targets: int = 0  # tokens to copy (selective_copying), queries (mqar)
    vocab: int = 0  # alphabet size (selective_copying, induction_heads)
    seed: int = 0  # the examples' seed (independent of train.seed)


@dataclasses.dataclass
class DataConfig:
    tokenizer: str = "byte"
    seq_len: int = 256
    data_dir: str = ""  # a folder of .txt/.py/.md/.json files
    data_path: str = ""  # a dialogue JSONL file: {"context": [...], "response": "...", "source": "..."}
    dataset: str = ""  # a local .jsonl/.json/.parquet/.csv file, a save_to_disk folder or a hub name
    dataset_split: str = "train"
    text_column: str = "text"  # comma-separated columns, joined with a blank line
    completion_only: bool = False  # loss only on the last column / the dialogue response
    eval_fraction: float = 0.01  # documents held out for evaluation (deterministic)
    cache_dir: str = ""  # tokenized-data cache (default ~/.cache/hrm/tokens)
    num_threads: int = 2
    prefetch: int = 8
    synthetic: SyntheticConfig = dataclasses.field(default_factory=SyntheticConfig)


@dataclasses.dataclass
class TrainConfig:
    steps: int = 1000
    epochs: float = 0.0  # > 0: train.steps follows from this many passes over the training tokens
    batch_size: int = 8  # global batch per optimizer step (all devices, all micro-batches)
    accumulation_steps: int = 1  # micro-batches per step, run in sequence: batch_size / this rows at a time
    shard_params: bool = False  # FSDP: shard parameters and optimizer state over the devices
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    grad_clip: float = 1.0  # the largest global gradient norm; 0 = no clipping
    save_every: int = 500
    log_every: int = 10
    log_activations: bool = True  # log steps also record activation RMS per layer and recursion depth
    eval_every: int = 0  # 0: evaluate at every checkpoint save and at the end
    eval_batches: int = 8
    keep_checkpoints: int = 3  # the newest N steps; the best (lowest eval loss) and final ones are kept too
    profile_steps: int = 0  # > 0: a jax.profiler trace of this many steps in RUN_DIR/profile
    max_bad_steps: int = 10  # non-finite steps in a row (each update skipped) that stop the run
    seed: int = 42


@dataclasses.dataclass
class Config:
    name: str = "run"
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> "Config":
        return _build(cls, raw, prefix="")

    def save_json(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load_json(cls, path: Path) -> "Config":
        return cls.from_dict(json.loads(Path(path).read_text()))


# The trainer guide's --training_preset table (docs/MODELS.md): train.* values (hrm.train --training_preset).
TRAINING_PRESETS = {
    "fast": {"steps": 50_000, "lr": 5e-4, "warmup_steps": 1000, "save_every": 2500, "eval_every": 2500},
    "default": {"steps": 100_000, "lr": 3e-4, "warmup_steps": 2000, "save_every": 5000, "eval_every": 5000},
    "careful": {"steps": 200_000, "lr": 1e-4, "warmup_steps": 5000, "save_every": 10_000, "eval_every": 10_000},
}
GPT2_TOKENS = 50257  # GPT-2 BPE's ids (hrm.tokenizer's "gpt2")
VOCAB_MULTIPLE = 128  # embedding/head rows are padded to a multiple of this (tensor-core tiles)
GPT2_VOCAB = -(-GPT2_TOKENS // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
DEFAULT_SAFETY_MARGIN_MB = 2048  # --vram_safety_margin: device memory (MB) kept free when sizing the batch


def documented_size_config(
    model: ModelConfig, *, seq_len: int = 2048, batch_size: int = 32, dtype: str = "bfloat16", **train
) -> Config:
    """A documented model size (docs/MODELS.md): GPT-2 BPE, rows of ``seq_len`` tokens, a global batch of 32 rows
    (the trainer guide's effective batch, 4 x 8 accumulation), bf16 compute (the guide trains in mixed precision)
    and the 'default' training preset; ``train`` overrides single ``TrainConfig`` fields (each config sets the
    ``accumulation_steps`` that fits its documented VRAM, measured with ``python -m hrm.memtest``)."""
    if not model.vocab_size:
        model.vocab_size, model.token_vocab_size = GPT2_VOCAB, GPT2_TOKENS
    model.dtype = dtype
    return Config(
        model=model,
        data=DataConfig(tokenizer="gpt2", seq_len=seq_len),
        train=TrainConfig(batch_size=batch_size, **{**TRAINING_PRESETS["default"], **train}),
    )


def cpu_sized_config(model: ModelConfig) -> Config:
    """A CPU-sized demo/test model: bytes, 128-token rows, 300 steps at lr 2e-3 (minutes on 2 cores); with no
    data flag it trains on the embedded default corpus (the interpreter's stdlib sources)."""
    return Config(
        model=model,
        data=DataConfig(tokenizer="byte", seq_len=128),
        train=TrainConfig(steps=300, batch_size=8, lr=2e-3, warmup_steps=30, save_every=100, log_every=10, seed=0),
    )


def _build(cls, raw: dict, prefix: str):
    if not isinstance(raw, dict):
        where = f"section '{prefix.rstrip('.')}'" if prefix else "a config"
        raise ConfigError(f"{where} must be a JSON object of keys and values, got {raw!r:.60}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in hints:
            raise ConfigError(_unknown_key(prefix + key, [prefix + n for n in names]))
        kind = hints[key]
        if dataclasses.is_dataclass(kind):
            kwargs[key] = _build(kind, value, prefix + key + ".")
        else:
            kwargs[key] = _coerce(prefix + key, kind, value)
    return cls(**kwargs)


def _unknown_key(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(close)}?" if close else f"; known keys: {', '.join(known)}"
    return f"unknown config key '{key}'{hint}"


def _coerce(key: str, kind, value):
    """Parse ``value`` (a string from the command line, or a JSON value) as ``kind``: the one parse of every
    config field, choices (``Literal``) and integer tuples ("1,2,4" or a list) included."""
    if dataclasses.is_dataclass(kind) and isinstance(value, dict):  # a nested section, e.g. data.synthetic
        return _build(kind, value, prefix=key + ".")
    if typing.get_origin(kind) is Literal:
        choices = typing.get_args(kind)
        if value not in choices:
            raise ConfigError(f"config key '{key}' must be one of {', '.join(choices)}, got {value!r}")
        return value
    if typing.get_origin(kind) is tuple:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"config key '{key}' expects integers such as '1,2,4', got {value!r}")
        return tuple(_coerce(key, int, item) for item in items)
    if isinstance(value, str) and kind is not str:
        text = value.strip()
        if kind is bool:
            if text.lower() in ("true", "1", "yes"):
                return True
            if text.lower() in ("false", "0", "no"):
                return False
        else:
            try:
                return kind(float(text)) if kind is int and float(text).is_integer() else kind(text)
            except ValueError:
                pass
        raise ConfigError(f"config key '{key}' expects {kind.__name__}, got {value!r}")
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"config key '{key}' expects {kind.__name__}, got {value!r}")
    return value


def all_keys(config) -> list[str]:
    keys = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            keys += [f"{f.name}.{k}" for k in all_keys(value)]
        else:
            keys.append(f.name)
    return keys


def apply_override(config: Config, key: str, value: str) -> None:
    """Set ``config.<key>`` from a command-line string, type-checked."""
    known = all_keys(config)
    if key not in known:
        raise ConfigError(_unknown_key(key, known))
    _set(config, key, value)


def _set(config: Config, key: str, value) -> None:
    """``config.<key> = value`` parsed with the field's type (``value``: a command-line string or JSON value)."""
    *parents, leaf = key.split(".")
    target = config
    for part in parents:
        target = getattr(target, part)
    setattr(target, leaf, _coerce(key, typing.get_type_hints(type(target))[leaf], value))


def config_dir() -> Path:
    """The shipped config files: ``configs/`` of a source checkout, else the installed ``hrm.configs`` package
    (pyproject.toml maps it onto ``configs/``)."""
    checkout = Path(__file__).resolve().parents[1] / "configs"
    if checkout.is_dir():
        return checkout
    from importlib.resources import files

    return Path(str(files("hrm.configs")))


def config_files() -> list[Path]:
    """Every shipped config file, sorted by name."""
    return sorted(config_dir().glob("[!_]*.py"))


def model_sizes() -> dict[str, Path]:
    """``--model_size`` names → config files, derived from the file names: ``hybrid_small.py`` is
    ``hybrid-small``, and a ``mamba_*`` file is also its bare size (``mamba_medium_lite.py`` is ``medium-lite``,
    the documents' names for the Mamba sizes)."""
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
    documents' format, ``config_from_json``); the file's stem becomes the default run name."""
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


# The documents' JSON config (seed 002, "Custom config format") → hrm's keys. Every section also takes hrm's own
# field names, so hrm's saved config.json is the same format with no aliases.
JSON_SECTIONS = {"model": "model", "data": "data", "train": "train", "training": "train"}
JSON_ALIASES = {
    "model": {"expand_factor": "model.expand", "max_seq_len": "data.seq_len", "n_blocks": "model.n_layers"},
    "train": {
        "learning_rate": "train.lr",
        "max_steps": "train.steps",
        "save_steps": "train.save_every",
        "eval_steps": "train.eval_every",
        "max_grad_norm": "train.grad_clip",
    },
}


def config_from_json(raw, source: str) -> Config:
    """A ``Config`` from a JSON object: hrm's saved ``config.json`` ({name, model, data, train}) or the
    documents' ``{"model": {d_model, n_layers, d_state, expand_factor, dropout, max_seq_len, vocab_size},
    "training": {learning_rate, warmup_steps, max_steps, save_steps, eval_steps}, "vram": {batch_size,
    gradient_accumulation_steps, effective_batch_size}}`` (``vram.batch_size`` is the micro-batch; the documents'
    models use GPT-2 BPE, so that format's ``data.tokenizer`` defaults to ``gpt2``). Keys not given keep
    ``Config()``'s defaults; unknown keys are one ``ConfigError`` naming all of them."""
    if not isinstance(raw, dict):
        raise ConfigError(f"config file '{source}' must hold a JSON object with sections model, data, train")
    flat, unknown = {}, []
    for section, values in raw.items():
        if section == "name":
            if not isinstance(values, str):
                raise ConfigError(f"config file '{source}': 'name' must be a string, got {values!r:.60}")
            flat["name"] = values
        elif section == "vram":
            flat.update(_vram_section(values, source))
        elif section in JSON_SECTIONS and isinstance(values, dict):
            target = JSON_SECTIONS[section]
            fields = {f.name for f in dataclasses.fields(getattr(Config(), target))}
            for key, value in values.items():
                alias = JSON_ALIASES.get(target, {}).get(key)
                if alias or key in fields:
                    flat[alias or f"{target}.{key}"] = value
                else:
                    unknown.append(f"{section}.{key}")
        elif section in JSON_SECTIONS:
            raise ConfigError(
                f"config file '{source}': section '{section}' must be an object of keys and values, got {values!r:.60}"
            )
        else:
            unknown.append(section)
    if unknown:
        known = [f"{s}.{k}" for s in ("model", "data", "train") for k in all_keys(getattr(Config(), s))]
        close = difflib.get_close_matches(unknown[0], known, n=2, cutoff=0.6)
        raise ConfigError(
            f"config file '{source}' has unknown keys {', '.join(map(repr, unknown))}"
            + (
                f"; did you mean {' or '.join(close)}?"
                if close
                else "; sections are model, data, train (or training) and vram"
            )
        )
    config = Config()
    if {"training", "vram"} & set(raw) and "data.tokenizer" not in flat:
        config.data.tokenizer = "gpt2"
    for key, value in flat.items():
        if key == "name":
            config.name = str(value)
        else:
            _set(config, key, value)
    return config


def _vram_section(values, source: str) -> dict:
    """The documents' "vram" section → train.batch_size (the global batch) and train.accumulation_steps."""
    if not isinstance(values, dict) or set(values) - {
        "batch_size",
        "gradient_accumulation_steps",
        "effective_batch_size",
    }:
        raise ConfigError(
            f"config file '{source}': section 'vram' takes batch_size, gradient_accumulation_steps "
            f"and effective_batch_size, got {values!r}"
        )
    # parsed before any arithmetic: "4" * 2 would be "44"
    micro, accumulation, effective = (
        None if values.get(key, default) is None else _coerce(f"vram.{key}", int, values.get(key, default))
        for key, default in (("batch_size", None), ("gradient_accumulation_steps", 1), ("effective_batch_size", None))
    )
    if micro is not None and effective is not None and micro * accumulation != effective:
        raise ConfigError(
            f"config file '{source}': vram.effective_batch_size ({effective}) must equal "
            f"vram.batch_size x vram.gradient_accumulation_steps ({micro} x {accumulation})"
        )
    out = {"train.accumulation_steps": accumulation}
    if effective is not None or micro is not None:
        out["train.batch_size"] = effective if effective is not None else micro * accumulation
    return out


def resolve_config(config: Config) -> Config:
    """A validated copy with what follows from other choices filled in (the vocab size from the tokenizer)."""
    config = copy.deepcopy(config)  # the caller's sections stay as they were (validate coerces fields in place)
    validate(config)  # before the tokenizer: a bad setting is named even where that tokenizer cannot load
    if config.model.vocab_size == 0:
        from hrm.tokenizer import get_tokenizer, padded_vocab_size

        tokenizer = get_tokenizer(config.data.tokenizer)
        config.model.vocab_size = padded_vocab_size(tokenizer, VOCAB_MULTIPLE)
        config.model.token_vocab_size = tokenizer.vocab_size
    validate(config)
    return config


# The allowed range of every numeric field (hrm.config.validate; tests/test_config.py checks that each numeric
# field has one): a rule and, where 0 means something, what.
POSITIVE, NON_NEGATIVE, FRACTION, UNIT_OPEN, UNIT_CLOSED = ">0", ">=0", "[0,1)", "(0,1)", "[0,1]"
SEED_LIMIT = 2**32  # jax.random.key takes a uint32 seed
RANGES = {
    "model.d_model": POSITIVE,
    "model.n_layers": POSITIVE,
    "model.d_state": POSITIVE,
    "model.d_conv": POSITIVE,
    "model.expand": POSITIVE,
    "model.dt_rank": (NON_NEGATIVE, "0 = automatic"),
    "model.dt_min": POSITIVE,
    "model.dt_max": POSITIVE,
    "model.dt_init_floor": POSITIVE,
    "model.norm_eps": POSITIVE,
    "model.vocab_size": (NON_NEGATIVE, "0 = the tokenizer's size"),
    "model.token_vocab_size": (NON_NEGATIVE, "0 = every row of model.vocab_size"),
    "model.scan_chunk": "scan chunk",
    "model.n_heads": POSITIVE,
    "model.rope_theta": POSITIVE,
    "model.max_cache_len": POSITIVE,
    "model.mlp_ratio": POSITIVE,
    "model.max_recursion_depth": POSITIVE,
    "model.ponder_prior": (FRACTION, "0 = uniform"),
    "model.gate_reg_weight": (NON_NEGATIVE, "0 = off"),
    "model.recurrent_depth": POSITIVE,
    "model.adapter_rank": (NON_NEGATIVE, "0 = none"),
    "model.checkpoint_segments": POSITIVE,
    "model.dropout": (FRACTION, "0 = none"),
    "data.seq_len": POSITIVE,
    "data.eval_fraction": (FRACTION, "0 = no held-out documents"),
    "data.num_threads": POSITIVE,
    "data.prefetch": (NON_NEGATIVE, "0 = no prefetching"),
    "data.synthetic.examples": POSITIVE,
    "data.synthetic.length": (NON_NEGATIVE, "0 = the task's default"),
    "data.synthetic.targets": (NON_NEGATIVE, "0 = the task's default"),
    "data.synthetic.vocab": (NON_NEGATIVE, "0 = the task's default"),
    "data.synthetic.seed": "seed",
    "train.steps": POSITIVE,
    "train.epochs": (NON_NEGATIVE, "0 = train.steps decides"),
    "train.batch_size": POSITIVE,
    "train.accumulation_steps": POSITIVE,
    "train.lr": UNIT_OPEN,
    "train.min_lr_ratio": UNIT_CLOSED,
    "train.warmup_steps": NON_NEGATIVE,
    "train.weight_decay": (NON_NEGATIVE, "0 = none"),
    "train.b1": FRACTION,
    "train.b2": FRACTION,
    "train.grad_clip": (NON_NEGATIVE, "0 = no clipping"),
    "train.save_every": POSITIVE,
    "train.log_every": POSITIVE,
    "train.eval_every": (NON_NEGATIVE, "0 = at every save"),
    "train.eval_batches": (NON_NEGATIVE, "0 = no evaluation"),
    "train.keep_checkpoints": POSITIVE,
    "train.profile_steps": (NON_NEGATIVE, "0 = no profile"),
    "train.max_bad_steps": POSITIVE,
    "train.seed": "seed",
}
_RULES = {
    POSITIVE: (lambda v: v > 0, "must be positive"),
    NON_NEGATIVE: (lambda v: v >= 0, "must be >= 0"),
    FRACTION: (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    UNIT_OPEN: (lambda v: 0 < v < 1, "must be in (0, 1)"),
    UNIT_CLOSED: (lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    "seed": (lambda v: 0 <= v < SEED_LIMIT, "must be in [0, 2**32)"),
    "scan chunk": (
        lambda v: v == 0 or MIN_CHUNK <= v <= MAX_CHUNK,
        f"must be 0 (automatic) or in [{MIN_CHUNK}, {MAX_CHUNK}]",
    ),
}


def numeric_fields(config, prefix: str = "") -> dict[str, tuple[object, type]]:
    """{dotted key: (value, type)} of every int and float field, nested sections included."""
    out = {}
    for name, kind in typing.get_type_hints(type(config)).items():
        value = getattr(config, name)
        if dataclasses.is_dataclass(kind):
            out.update(numeric_fields(value, f"{prefix}{name}."))
        elif kind in (int, float):
            out[prefix + name] = (value, kind)
    return out


def _coerce_fields(section, prefix: str) -> None:
    """Fields set in Python (config files) get the command line's parse, nested sections too."""
    for name, kind in typing.get_type_hints(type(section)).items():
        value = getattr(section, name)
        if dataclasses.is_dataclass(kind) and dataclasses.is_dataclass(value):
            _coerce_fields(value, f"{prefix}{name}.")
        else:
            setattr(section, name, _coerce(prefix + name, kind, value))


def check_ranges(config) -> None:
    """Every numeric field finite and within its ``RANGES`` rule: one ``ConfigError`` naming the first that is not."""
    for key, (value, _) in numeric_fields(config).items():
        rule = RANGES[key]
        rule, note = rule if isinstance(rule, tuple) else (rule, "")
        test, wording = _RULES[rule]
        if not (math.isfinite(value) and test(value)):
            raise ConfigError(f"config key '{key}' {wording}{f' ({note})' if note else ''}, got {value}")


def validate(config: Config) -> None:
    """Reject impossible sizes and settings before any work starts."""
    m, d, t = config.model, config.data, config.train
    for section, prefix in ((m, "model."), (d, "data."), (t, "train.")):
        if not dataclasses.is_dataclass(section):
            raise ConfigError(f"config section '{prefix.rstrip('.')}' must be a section of keys, got {section!r:.60}")
        _coerce_fields(section, prefix)
    check_ranges(config)
    if t.batch_size % t.accumulation_steps:
        raise ConfigError(
            f"config key 'train.accumulation_steps' ({t.accumulation_steps}) must divide "
            f"train.batch_size ({t.batch_size}), the global batch per optimizer step"
        )
    if m.dt_min > m.dt_max:
        raise ConfigError("config keys 'model.dt_min'/'model.dt_max' need 0 < dt_min <= dt_max")
    if m.vocab_size and m.token_vocab_size > m.vocab_size:  # vocab_size 0: both follow the tokenizer
        raise ConfigError(
            f"config key 'model.token_vocab_size' ({m.token_vocab_size}) exceeds model.vocab_size ({m.vocab_size})"
        )
    _validate_families(m)


def _validate_families(m: ModelConfig) -> None:
    """The family-specific model fields (attention, recursion, pattern)."""
    uses_attention = m.family == "hybrid_recursive" or (m.family == "hybrid_pattern" and "A" in m.layer_pattern)
    if uses_attention and (m.d_model % m.n_heads or (m.d_model // m.n_heads) % 2):
        raise ConfigError(
            f"config key 'model.n_heads' ({m.n_heads}) must divide d_model ({m.d_model}) into even head sizes"
        )
    scales = m.attention_scales
    if not scales or any(s <= 0 for s in scales) or len(set(scales)) != len(scales):
        raise ConfigError(
            f"config key 'model.attention_scales' must be distinct positive integers such as "
            f"'1,2,4', got {m.attention_scales!r}"
        )
    if m.max_cache_len % max(scales):
        raise ConfigError(
            f"config key 'model.max_cache_len' ({m.max_cache_len}) must be a multiple of the "
            f"largest attention scale ({max(scales)})"
        )
    if m.family == "hybrid_pattern":
        if not m.layer_pattern or set(m.layer_pattern) - set("MA"):
            raise ConfigError(
                f"config key 'model.layer_pattern' must be letters M (Mamba) and A (attention), got {m.layer_pattern!r}"
            )
        if len(m.layer_pattern) != m.n_layers:
            raise ConfigError(
                f"config key 'model.layer_pattern' has {len(m.layer_pattern)} letters but "
                f"model.n_layers is {m.n_layers}"
            )

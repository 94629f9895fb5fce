"""Validation: every numeric field's range and the rules between fields, before any work starts."""

from __future__ import annotations

import copy
import dataclasses
import math
import typing

from hrm.config.parse import ConfigError, coerce
from hrm.config.schema import VOCAB_MULTIPLE, Config, ModelConfig
from hrm.kernels.chunked_scan import MAX_CHUNK, MIN_CHUNK
from hrm.tokenizer import get_tokenizer, padded_vocab_size


def resolve_config(config: Config) -> Config:
    """A validated copy with what follows from other choices filled in (the vocab size from the tokenizer)."""
    config = copy.deepcopy(config)  # the caller's sections stay as they were (validate coerces fields in place)
    validate(config)  # before the tokenizer: a bad setting is named even where that tokenizer cannot load
    if config.model.vocab_size == 0:
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
            setattr(section, name, coerce(prefix + name, kind, value))


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

"""The design documents' JSON config format, read into a ``Config`` so that a config written for their trainer
runs unchanged (docs/MODELS.md "Documented sizes" says what those documents are; README.md "Training" lists the
format's keys)."""

from __future__ import annotations

import dataclasses
import difflib

from hrm.config.parse import ConfigError, all_keys, coerce, set_key
from hrm.config.schema import Config

# That format's keys → hrm's keys. Every section also takes hrm's own
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
    """A ``Config`` from a JSON object: hrm's saved ``config.json`` ({name, model, data, train}) or the design
    documents' ``{"model": {d_model, n_layers, d_state, expand_factor, dropout, max_seq_len, vocab_size},
    "training": {learning_rate, warmup_steps, max_steps, save_steps, eval_steps}, "vram": {batch_size,
    gradient_accumulation_steps, effective_batch_size}}`` (``vram.batch_size`` is the micro-batch; the design
    documents' models use GPT-2 BPE, so that format's ``data.tokenizer`` defaults to ``gpt2``). Keys not given keep
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
            set_key(config, key, value)
    return config


def _vram_section(values, source: str) -> dict:
    """The design documents' "vram" section → train.batch_size (the global batch) and train.accumulation_steps."""
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
        None if values.get(key, default) is None else coerce(f"vram.{key}", int, values.get(key, default))
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

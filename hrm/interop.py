"""Reference Mamba checkpoints ↔ hrm's ``mamba`` family (same math: hrm/models/mamba.py).

Two folder layouts hold the same PyTorch tensors:

- transformers (``models/mamba/modeling_mamba.py``, ``MambaForCausalLM.save_pretrained``): ``config.json``
  with ``model_type: "mamba"`` and ``model.safetensors`` (or shards with ``model.safetensors.index.json``);
  the embedding is ``backbone.embeddings.weight``; ``lm_head.weight`` is absent when tied.
- state-spaces/mamba (``mamba_ssm/models/mixer_seq_simple.py``, ``MambaLMHeadModel``): ``config.json`` with
  ``d_model``/``n_layer``/``ssm_cfg`` and ``pytorch_model.bin``; the embedding is ``backbone.embedding.weight``.

Layer sizes (d_state, d_conv, expand, dt_rank, biases, the padded vocabulary) are read off the tensors, so
they cannot disagree with the weights; config.json supplies what tensors cannot tell (norm epsilon, tied
head, residual dtype). PyTorch Linear weights are (out, in) and Flax kernels (in, out); the depthwise Conv1d
weight (d_inner, 1, d_conv) is hrm's ``conv_kernel`` (d_conv, d_inner). Reading ``pytorch_model.bin`` needs
PyTorch (``torch.load(weights_only=True)``: a pickle has no maintained torch-free reader); safetensors do not.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from hrm.config import Config, DataConfig, ModelConfig
from hrm.models.lm import stack_layer_params, unstack_layer_params
from hrm.models.mamba import d_inner, dt_rank
from hrm.training.checkpoint import CONFIG_FILE, CheckpointError
from hrm.training.state import abstract_params

TOKENIZER_FILE = "tokenizer.json"
SAFETENSORS, SAFETENSORS_INDEX, TORCH_BIN = "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"
EMBEDDING = {"transformers": "backbone.embeddings.weight", "state-spaces": "backbone.embedding.weight"}

_linear = (lambda w: w.T, lambda k: k.T)  # torch (out, in) ↔ Flax (in, out)
_conv = (lambda w: w[:, 0, :].T, lambda k: k.T[:, None, :])  # (d_inner, 1, K) ↔ (K, d_inner)
_same = (lambda w: w, lambda w: w)


def tensor_map(cfg: ModelConfig, embedding: str) -> list[tuple[str, tuple, tuple]]:
    """(PyTorch name, hrm parameter path, (to_hrm, to_torch)) for every tensor of a ``mamba`` model."""
    names = [(embedding, ("embed", "embedding"), _same), ("backbone.norm_f.weight", ("norm_f", "scale"), _same)]
    if not cfg.tie_embeddings:
        names.append(("lm_head.weight", ("lm_head", "kernel"), _linear))
    mixer = {
        "in_proj.weight": (("in_proj", "kernel"), _linear),
        "conv1d.weight": (("conv_kernel",), _conv),
        "x_proj.weight": (("x_proj", "kernel"), _linear),
        "dt_proj.weight": (("dt_proj", "kernel"), _linear),
        "dt_proj.bias": (("dt_proj", "bias"), _same),
        "A_log": (("A_log",), _same),
        "D": (("D",), _same),
        "out_proj.weight": (("out_proj", "kernel"), _linear),
    }
    if cfg.conv_bias:
        mixer["conv1d.bias"] = (("conv_bias",), _same)
    if cfg.bias:
        mixer |= {"in_proj.bias": (("in_proj", "bias"), _same), "out_proj.bias": (("out_proj", "bias"), _same)}
    for i in range(cfg.n_layers):
        names.append((f"backbone.layers.{i}.norm.weight", ("layers", i, "norm", "scale"), _same))
        names += [
            (f"backbone.layers.{i}.mixer.{name}", ("layers", i, "mixer", *path), fns)
            for name, (path, fns) in mixer.items()
        ]
    return names


# --- reading a reference folder ------------------------------------------------------------------------------


def reference_layout(path: str | Path) -> str | None:
    """ "transformers" or "state-spaces" when ``path`` is a reference Mamba folder, None for anything else."""
    file = Path(path) / CONFIG_FILE
    if not file.is_file():
        return None
    raw = _read_json(file)
    if "model_type" in raw:
        return "transformers"
    if "d_model" in raw and "n_layer" in raw:
        return "state-spaces"
    return None


def load_reference(path: str | Path) -> tuple[Config, dict]:
    """(hrm Config of family ``mamba``, float32 params as hrm's pure dict) from a reference folder."""
    path = Path(path)
    layout = reference_layout(path)
    raw = _read_json(path / CONFIG_FILE)
    if layout == "transformers" and raw["model_type"] != "mamba":
        raise CheckpointError(
            f"'{path}' holds a {raw['model_type']!r} model; hrm loads model_type 'mamba' (Mamba v1) folders only"
        )
    tensors = read_tensors(path)
    model = (_transformers_config if layout == "transformers" else _state_spaces_config)(raw, tensors, path)
    tokenizer = path / TOKENIZER_FILE
    data = DataConfig(tokenizer=str(tokenizer.resolve()) if tokenizer.is_file() else "")
    return Config(name=path.name, model=model, data=data), params_from_tensors(model, tensors, EMBEDDING[layout], path)


def read_tensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of the folder's weights as a float32 numpy array."""
    if (path / SAFETENSORS).is_file() or (path / SAFETENSORS_INDEX).is_file():
        files = (
            [SAFETENSORS]
            if (path / SAFETENSORS).is_file()
            else sorted(set(_read_json(path / SAFETENSORS_INDEX)["weight_map"].values()))
        )
        tensors = {}
        for file in files:
            with safe_open(path / file, framework="flax") as f:
                tensors |= {name: np.asarray(f.get_tensor(name), np.float32) for name in f.keys()}
        return tensors
    if (path / TORCH_BIN).is_file():
        try:
            import torch
        except ImportError:
            raise CheckpointError(
                f"'{path / TORCH_BIN}' is a PyTorch pickle and reading it needs PyTorch: "
                f"pip install torch (CPU is enough), or save the folder as {SAFETENSORS}"
            ) from None
        state = torch.load(path / TORCH_BIN, map_location="cpu", weights_only=True, mmap=True)
        return {name: t.detach().float().numpy() for name, t in state.items()}
    raise CheckpointError(
        f"'{path}' has no {SAFETENSORS} or {TORCH_BIN}; copy the model's weights next to its {CONFIG_FILE}"
    )


def params_from_tensors(cfg: ModelConfig, tensors: dict, embedding: str, path: Path) -> dict:
    """hrm's parameter pure dict from PyTorch-named tensors; every expected tensor must be there, and no other."""
    expected = abstract_params(Config(model=dataclasses.replace(cfg, scan_layers=False)))  # the per-layer names
    params, unused = {}, set(tensors) - ({"lm_head.weight"} if cfg.tie_embeddings else set())
    for name, hrm_path, (to_hrm, _) in tensor_map(cfg, embedding):
        target = _get(expected, hrm_path)
        if name not in tensors:
            raise CheckpointError(f"'{path}' lacks tensor {name}; is it a complete Mamba v1 checkpoint?")
        value = to_hrm(tensors[name])
        unused.discard(name)
        if value.shape != target.shape:
            raise CheckpointError(
                f"tensor {name} in '{path}' has shape {tensors[name].shape}, inconsistent with "
                f"the rest of the model; is it a Mamba v1 checkpoint?"
            )
        _set(params, hrm_path, np.ascontiguousarray(value, np.float32))
    if unused:
        raise CheckpointError(
            f"'{path}' has tensors a Mamba v1 model does not ({', '.join(sorted(unused)[:3])}"
            f"{', ...' if len(unused) > 3 else ''}); hrm loads Mamba v1 checkpoints only"
        )
    return stack_layer_params(params) if cfg.scan_layers else params


def _sizes(tensors: dict, embedding: str, path: Path) -> dict:
    """The ModelConfig sizes the tensors fix."""
    if embedding not in tensors:
        raise CheckpointError(f"'{path}' lacks tensor {embedding}; is it a Mamba v1 checkpoint?")
    vocab, d_model = tensors[embedding].shape
    layers = {int(m.group(1)) for name in tensors if (m := re.match(r"backbone\.layers\.(\d+)\.", name))}
    mixer = "backbone.layers.0.mixer."
    if not layers or any(mixer + name not in tensors for name in ("A_log", "conv1d.weight", "dt_proj.weight")):
        raise CheckpointError(
            f"'{path}' has no Mamba v1 layer tensors ({mixer}A_log, ...); hrm loads Mamba v1 checkpoints only"
        )
    d_inner, d_state = tensors[mixer + "A_log"].shape
    if d_inner % d_model:
        raise CheckpointError(
            f"'{path}': d_inner {d_inner} is not a multiple of d_model {d_model}; hrm's mamba needs an integer expand"
        )
    return dict(
        family="mamba",
        d_model=d_model,
        n_layers=max(layers) + 1,
        d_state=d_state,
        d_conv=tensors[mixer + "conv1d.weight"].shape[-1],
        expand=d_inner // d_model,
        dt_rank=tensors[mixer + "dt_proj.weight"].shape[1],
        conv_bias=mixer + "conv1d.bias" in tensors,
        bias=mixer + "in_proj.bias" in tensors,
        vocab_size=vocab,
        dtype="float32",
    )


def _transformers_config(raw: dict, tensors: dict, path: Path) -> ModelConfig:
    if raw.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"'{path}' uses hidden_act {raw['hidden_act']!r}; hrm's mamba uses silu")
    return ModelConfig(
        **_sizes(tensors, EMBEDDING["transformers"], path),
        norm_eps=raw.get("layer_norm_epsilon", 1e-5),
        tie_embeddings=raw.get("tie_word_embeddings", True),
        residual_in_fp32=raw.get("residual_in_fp32", True),
        rescale_prenorm_residual=raw.get("rescale_prenorm_residual", False),
        dt_min=raw.get("time_step_min", 1e-3),
        dt_max=raw.get("time_step_max", 1e-1),
        dt_init_floor=raw.get("time_step_floor", 1e-4),
    )


def _state_spaces_config(raw: dict, tensors: dict, path: Path) -> ModelConfig:
    ssm = raw.get("ssm_cfg") or {}
    unsupported = {
        "ssm_cfg.layer": ssm.get("layer", "Mamba1") != "Mamba1",
        "d_intermediate": raw.get("d_intermediate", 0) != 0,
        "attn_layer_idx": bool(raw.get("attn_layer_idx")),
        "rms_norm": not raw.get("rms_norm", True),
    }
    if any(unsupported.values()):
        key = next(k for k, bad in unsupported.items() if bad)
        raise CheckpointError(
            f"'{path}' config.json sets {key} beyond plain Mamba v1 (Mamba1 mixers, RMSNorm, "
            f"no MLP or attention layers); hrm loads Mamba v1 checkpoints only"
        )
    return ModelConfig(
        **_sizes(tensors, EMBEDDING["state-spaces"], path),
        norm_eps=1e-5,  # MixerModel's default
        tie_embeddings=raw.get("tie_embeddings", True),
        residual_in_fp32=raw.get("residual_in_fp32", True),
        dt_min=ssm.get("dt_min", 1e-3),
        dt_max=ssm.get("dt_max", 1e-1),
        dt_init_floor=ssm.get("dt_init_floor", 1e-4),
    )


# --- writing the transformers layout --------------------------------------------------------------------------


def transformers_config(cfg: ModelConfig, eos_id: int = 0) -> dict:
    """The config.json of transformers' MambaConfig for an hrm ``mamba`` model config."""
    return {
        "architectures": ["MambaForCausalLM"],
        "model_type": "mamba",
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.n_layers,
        "state_size": cfg.d_state,
        "conv_kernel": cfg.d_conv,
        "expand": cfg.expand,
        "intermediate_size": d_inner(cfg),
        "time_step_rank": dt_rank(cfg),
        "use_bias": cfg.bias,
        "use_conv_bias": cfg.conv_bias,
        "layer_norm_epsilon": cfg.norm_eps,
        "vocab_size": cfg.vocab_size,
        "tie_word_embeddings": cfg.tie_embeddings,
        "residual_in_fp32": cfg.residual_in_fp32,
        # an init-time rescale: transformers re-applies it to the loaded out_proj weights (its _init_weights
        # runs on from_pretrained), so the trained weights go out with it off
        "rescale_prenorm_residual": False,
        "hidden_act": "silu",
        "time_step_min": cfg.dt_min,
        "time_step_max": cfg.dt_max,
        "time_step_floor": cfg.dt_init_floor,
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
        "pad_token_id": eos_id,
        "torch_dtype": "float32",
    }


def save_transformers(cfg: ModelConfig, params: dict, out: str | Path, eos_id: int = 0) -> None:
    """Write ``out/config.json`` and ``out/model.safetensors`` (float32) that ``MambaForCausalLM`` loads.

    A vocabulary hrm padded past the tokenizer's ids (``model.token_vocab_size``) goes out with the tokenizer's
    rows only: transformers cannot mask padded logits, and those rows carry nothing (never read, no probability)."""
    if cfg.scan_layers:
        params = unstack_layer_params(params)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {
        name: np.ascontiguousarray(to_torch(np.asarray(_get(params, hrm_path), np.float32)))
        for name, hrm_path, (_, to_torch) in tensor_map(cfg, EMBEDDING["transformers"])
    }
    if 0 < cfg.token_vocab_size < cfg.vocab_size:  # rows padded for the head's matmul tiles: never a token
        for name in (EMBEDDING["transformers"], "lm_head.weight"):
            if name in tensors:
                tensors[name] = np.ascontiguousarray(tensors[name][: cfg.token_vocab_size])
        cfg = dataclasses.replace(cfg, vocab_size=cfg.token_vocab_size, token_vocab_size=0)
    save_file(tensors, out / SAFETENSORS, metadata={"format": "pt"})
    (out / CONFIG_FILE).write_text(json.dumps(transformers_config(cfg, eos_id), indent=2) + "\n")


def _read_json(file: Path) -> dict:
    try:
        return json.loads(file.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"'{file}' is not readable JSON ({type(error).__name__}); restore the file") from None


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _set(tree: dict, path, value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value

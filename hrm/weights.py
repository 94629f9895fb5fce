"""The final-weights folder a trainer ships (``python -m hrm.export --format hrm``): ``config.json`` (the run's
config), ``model.safetensors`` (every parameter in its stored dtype, named by its path in the model, e.g.
``layers.0.mixer.in_proj.kernel``) and ``tokenizer.json`` when the run used one. ``hrm.load``, ``hrm.sample``
and ``hrm.serve`` read it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from hrm.config import Config
from hrm.training.checkpoint import CheckpointError, saved_config
from hrm.training.state import abstract_params

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"


def _names(tree) -> tuple[list[str], object]:
    paths, treedef = jax.tree_util.tree_flatten_with_path(tree)
    names = [".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path) for path, _ in paths]
    return names, treedef


def save_final(config: Config, params, out: str | Path, step: int = 0) -> Path:
    """Write the final-weights folder (see the module docstring); returns it."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names, _ = _names(params)
    leaves = jax.tree.leaves(params)
    save_file(
        {n: np.ascontiguousarray(np.asarray(x)) for n, x in zip(names, leaves)},
        out / WEIGHTS_FILE,
        metadata={"format": "hrm", "step": str(step)},
    )
    raw = config.to_dict()
    tokenizer = config.data.tokenizer
    if tokenizer.endswith(".json") and Path(tokenizer).is_file():
        shutil.copy(tokenizer, out / TOKENIZER_FILE)
        raw["data"]["tokenizer"] = TOKENIZER_FILE
    (out / CONFIG_FILE).write_text(json.dumps(raw, indent=2) + "\n")
    return out


def is_final_folder(path: str | Path) -> bool:
    path = Path(path)
    return (
        (path / WEIGHTS_FILE).is_file()
        and (path / CONFIG_FILE).is_file()
        and "model" in json.loads((path / CONFIG_FILE).read_text())
    )


def load_final(path: str | Path):
    """(Config, params, step) of a final-weights folder; a tokenizer.json in it is used by its full path."""
    path = Path(path)
    config = saved_config(json.loads((path / CONFIG_FILE).read_text()))
    if config.data.tokenizer == TOKENIZER_FILE:
        config.data.tokenizer = str(path / TOKENIZER_FILE)
    tensors = load_file(path / WEIGHTS_FILE)
    abstract = abstract_params(config)
    names, treedef = _names(abstract)
    missing = [n for n in names if n not in tensors]
    if missing:
        raise CheckpointError(
            f"'{path / WEIGHTS_FILE}' lacks {len(missing)} parameter(s) of its config.json's "
            f"model, e.g. {missing[0]}; export it again with python -m hrm.export"
        )
    leaves = []
    for name, spec in zip(names, jax.tree.leaves(abstract)):
        if tensors[name].shape != spec.shape:
            raise CheckpointError(
                f"'{path / WEIGHTS_FILE}': {name} has shape {tensors[name].shape}, its "
                f"config.json's model needs {spec.shape}"
            )
        leaves.append(jax.numpy.asarray(tensors[name], spec.dtype))
    with safe_open(path / WEIGHTS_FILE, "np") as f:
        step = int((f.metadata() or {}).get("step", 0))
    return config, jax.tree.unflatten(treedef, leaves), step

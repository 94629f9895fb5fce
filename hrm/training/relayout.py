"""A run in the other layer layout (``model.scan_layers``), resumable exactly: ``python -m hrm.convert OLD NEW``.

A run saved with per-layer parameters (``model.scan_layers=False``, or by hrm before scanned stacks) resumes in
its own layout: unrolled, so its compile grows with depth (docs/BENCHMARKS.md "Scanned layer stacks").
``--init_from`` starts a new run from its weights only. Converting rewrites every good step's parameters and
AdamW moments in the other layout (``relayout_layers``) and keeps the step number, the data position, the eval
losses and the final mark, so ``hrm.train --output_dir NEW`` continues where OLD stopped with the same
schedule, data order and numbers.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import jax

from hrm.config import Config
from hrm.errors import UsageError
from hrm.models import FAMILIES, relayout_layers
from hrm.training import checkpoint, faults
from hrm.training.state import abstract_train_state


class _Position:
    """A data iterator's saved position, carried from one checkpoint to another unchanged (grain's handler calls
    ``set_state`` on restore and ``get_state`` on save, through ``checkpoint.ExactIteratorState``)."""

    state = None

    def get_state(self):
        return self.state

    def set_state(self, state) -> None:
        self.state = state

    def start_prefetch(self) -> None:
        pass


def _on_device(abstract: dict) -> dict:
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract)


def _relayout_state(node, params_def, like: dict, config: Config):
    """``node`` with every subtree shaped like the old parameters (the parameters and AdamW's moments) relaid
    out like ``like``."""
    recurse = lambda child: _relayout_state(child, params_def, like, config)
    if isinstance(node, dict):
        if jax.tree.structure(node) == params_def:
            return relayout_layers(node, like, config.model)
        return {k: recurse(v) for k, v in node.items()}
    if isinstance(node, tuple) and hasattr(node, "_fields"):  # optax states are named tuples
        return type(node)(*map(recurse, node))
    if isinstance(node, (list, tuple)):
        return type(node)(map(recurse, node))
    return node


def relayout_run(src: Path, out: Path, scan_layers: bool = True, log=print) -> list[int]:
    """Write ``src``'s run into ``out`` (new or empty) with ``model.scan_layers=scan_layers``; returns the
    converted steps. Its other files (data fingerprint, metrics, event logs) are copied; damaged steps are
    skipped, said in one line each."""
    src, out = Path(src), Path(out)
    config = checkpoint.read_run_config(src, log)
    layout = "stacked" if scan_layers else "per-layer"
    if config.model.scan_layers == scan_layers:
        raise UsageError(f"'{src}' already holds {layout} layers (model.scan_layers={scan_layers}); nothing to convert")
    if scan_layers and FAMILIES[config.model.family].unit_size(config.model) is None:
        raise UsageError(
            f"'{src}''s layer pattern {config.model.layer_pattern!r} does not repeat, so its layers cannot be "
            f"stacked; it trains unrolled as it is"
        )
    steps = checkpoint.finished_steps(src)
    if not steps:
        raise UsageError(f"'{src}' has no finished checkpoint to convert")
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"'{out}' already exists and is not empty; pass a new directory")
    new_config = dataclasses.replace(config, model=dataclasses.replace(config.model, scan_layers=scan_layers))
    _, old_abstract = abstract_train_state(config)
    _, new_abstract = abstract_train_state(new_config)
    params_def = jax.tree.structure(old_abstract["params"])

    out.mkdir(parents=True, exist_ok=True)
    for path in src.iterdir():  # everything but the checkpoints, the config and a training process's lock
        if path.name in (checkpoint.CHECKPOINT_DIR, checkpoint.CONFIG_FILE) or path.name.startswith(faults.LOCK_FILE):
            continue
        (shutil.copytree if path.is_dir() else shutil.copy2)(path, out / path.name)
    new_config.save_json(out / checkpoint.CONFIG_FILE)

    converted = []
    mgr = checkpoint.Checkpoints(out, keep=len(steps), config=new_config)
    try:
        for step in steps:
            problem = checkpoint.damage(checkpoint.checkpoint_root(src) / str(step))
            if problem:
                log(f"skipping step {step} of '{src}': {problem}")
                continue
            position = _Position()
            state = checkpoint.restore_state(src, step, _on_device(old_abstract), position)
            state = _relayout_state(state, params_def, new_abstract["params"], new_config)
            if jax.tree.structure(state) != jax.tree.structure(new_abstract):
                raise UsageError(
                    f"step {step} of '{src}' holds a train state this hrm cannot relay out (an optimizer state "
                    f"other than AdamW's); start a {layout} run from its weights with --init_from {src}"
                )
            info = checkpoint.step_info(src, step)
            mgr.save(
                step,
                state,
                position if position.state is not None else None,
                eval_loss=info.get("eval_loss"),
                final=bool(info.get("final")),
            )
            converted.append(step)
    finally:
        mgr.close()
    return converted

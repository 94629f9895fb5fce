"""orbax checkpoints of the train state and the grain iterator, saved together per step.

Layout: ``DIR/config.json`` (the run's config, written once) and ``DIR/checkpoints/<step>/`` with
items ``state`` (step, params, opt_state) and ``data`` (iterator position). orbax writes each step
into a temporary folder and renames it when complete, so a killed process never leaves a
restorable half-written step.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import grain
import jax
import orbax.checkpoint as ocp

from hrm.config import Config
from hrm.errors import UserError

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"


class CheckpointError(UserError):
    """A missing or unusable checkpoint; the message is one line naming it and the fix."""


def quiet_orbax() -> None:
    """orbax logs every save at INFO through absl; keep the console for the progress bar."""
    for name in ("absl", "orbax", "jax._src.distributed"):
        logging.getLogger(name).setLevel(logging.ERROR)


def manager(run_dir: Path, keep: int = 3, read_only: bool = False):
    options = (ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0,
                                            max_to_keep=None) if read_only else
               ocp.CheckpointManagerOptions(max_to_keep=keep))
    return ocp.CheckpointManager(Path(run_dir).absolute() / CHECKPOINT_DIR, options=options)


class ExactIteratorState:
    """A grain iterator as grain's orbax handler sees it: its state as JSON bytes, restored with tuples.

    grain's handler (0.2.x) JSON-encodes a DatasetIterator's state, which turns ConcatThenSplit's tuple
    slices into lists; restored as lists, that iterator takes its empty marker ``(-1, -1)`` for a pending
    remainder and resumes at the wrong batch. Handing the handler bytes makes it call us both ways.
    """

    def __init__(self, iterator):
        self.iterator = iterator

    def get_state(self) -> bytes:
        return json.dumps(self.iterator.get_state()).encode()

    def set_state(self, state: bytes) -> None:
        self.iterator.set_state(_lists_as_tuples(json.loads(state)))

    def start_prefetch(self) -> None:
        self.iterator.start_prefetch()


def _lists_as_tuples(value):
    if isinstance(value, dict):
        return {k: _lists_as_tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_lists_as_tuples(v) for v in value)
    return value


def save(mgr: ocp.CheckpointManager, step: int, state, data_iterator=None, force: bool = False) -> bool:
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
        items["data"] = grain.checkpoint.CheckpointSave(ExactIteratorState(data_iterator))
    return mgr.save(step, args=ocp.args.Composite(**items), force=force)


def restore(mgr: ocp.CheckpointManager, step: int, abstract_state, data_iterator=None):
    """The train state at ``step``; the data iterator (when given) is moved to its saved position."""
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
        items["data"] = grain.checkpoint.CheckpointRestore(ExactIteratorState(data_iterator))
    return mgr.restore(step, args=ocp.args.Composite(**items))["state"]


def restore_params(run_dir: Path, abstract_params, step: int | None = None):
    """Only the model parameters from the latest (or given) step of a run directory."""
    run_dir = Path(run_dir)
    mgr = manager(run_dir, read_only=True)
    step = mgr.latest_step() if step is None else step
    if step is None:
        raise CheckpointError(f"no finished checkpoint in '{run_dir / CHECKPOINT_DIR}'; "
                              f"train first with python -m hrm.train --output_dir {run_dir}")
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), abstract_params)
    restored = mgr.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(item={"params": target}, partial_restore=True,
                                     restore_args=ocp.checkpoint_utils.construct_restore_args({"params": target}))))
    mgr.close()
    return restored["state"]["params"], step


def read_run_config(run_dir: Path) -> Config:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"checkpoint directory '{run_dir}' does not exist; pass a run's --output_dir")
    if not (run_dir / CONFIG_FILE).is_file():
        raise CheckpointError(f"'{run_dir}' has no {CONFIG_FILE}; pass the --output_dir of an hrm.train run")
    return Config.load_json(run_dir / CONFIG_FILE)

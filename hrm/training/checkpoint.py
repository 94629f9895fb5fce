"""A run's checkpoints: orbax saves of the train state and the grain iterator, verified, named and pruned.

Layout: ``DIR/config.json`` (the run's config) and ``DIR/checkpoints/<step>/`` with items ``state`` (step,
params, opt_state, non-finite step counters) and ``data`` (iterator position), plus ``hrm_manifest.json``: the
size and SHA-256 of every file of the step and of every parameter array's values, its eval loss, whether it is
the run's final step, and a copy of the config. orbax writes a step into ``<step>.orbax-checkpoint-tmp`` and
renames it when complete; the manifest is written inside that folder before the rename (orbax's
post-finalization callback), so a finished step always has one. Leftover temporary folders of killed saves are
removed when a writer opens the run.

Loading verifies the manifest: a damaged step (a truncated, overwritten or deleted file) is named, and
resuming moves it to ``DIR/damaged/`` and falls back to the newest good step. Retention keeps the newest
``train.keep_checkpoints`` steps plus ``best`` (lowest eval loss) and ``final`` (the end of training); both
names (and ``latest``) are accepted wherever a step is (``resolve_step``).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import sys
from pathlib import Path

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from hrm.config import Config, ConfigError
from hrm.errors import UserError

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
MANIFEST_FILE = "hrm_manifest.json"
DAMAGED_DIR = "damaged"
TMP_SUFFIX = ".orbax-checkpoint-tmp"
STEP_NAMES = ("latest", "best", "final")
# Written by orbax after the manifest (the commit marker, the commit timestamp): not covered by the checksums.
UNHASHED_FILES = {MANIFEST_FILE, "commit_success.txt", "_CHECKPOINT_METADATA"}
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
PARAMS = ("params",)  # what a model load reads of a step (``damage`` checks only that)


def is_disk_full(error: Exception) -> bool:
    """An OSError with ENOSPC/EDQUOT, or orbax's (tensorstore's) ValueError ``RESOURCE_EXHAUSTED: ... No space
    left on device``."""
    if isinstance(error, OSError):
        return error.errno in DISK_FULL
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "No space left on device" in text or "Disk quota exceeded" in text


class CheckpointError(UserError):
    """A missing or unusable checkpoint; the message is one line naming it and the fix."""


def quiet_orbax() -> None:
    """orbax logs every save at INFO through absl (and a failed background save as a traceback); keep the
    console for the progress bar and our one-line errors."""
    for name in ("absl", "orbax", "jax._src.distributed"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


# --- manifests: checksums, eval loss, final flag, config copy -----------------------------------------------


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 23):
            digest.update(chunk)
    return digest.hexdigest()


def _hashed_files(step_dir: Path) -> list[Path]:
    return sorted(
        p for p in step_dir.rglob("*") if p.is_file() and not (p.parent == step_dir and p.name in UNHASHED_FILES)
    )


def _key(path) -> str:
    """A tree path as ``params.layers.0.mixer.D`` (orbax restores integer keys as strings)."""
    return jax.tree_util.keystr(path, simple=True, separator=".")


def _array_digests(tree) -> dict[str, str]:
    """SHA-256 of each array of a numpy tree (dtype, shape and values), keyed by its path (``params.embed...``).
    orbax's OCDBT format packs params and optimizer state into shared files, so a model load, which reads only
    the params, checks these instead of hashing every file of the step."""
    digests = {}
    for path, value in jax.tree_util.tree_flatten_with_path(tree)[0]:
        value = np.ascontiguousarray(value)
        digest = hashlib.sha256(f"{value.dtype.str}{value.shape}".encode())
        digest.update(value.data)
        digests[_key(path)] = digest.hexdigest()
    return digests


def write_manifest(step_dir: Path, info: dict) -> None:
    """``info`` plus the size and SHA-256 of every file under ``step_dir`` (the step's own folder) and of every
    parameter array (read back from what was written)."""
    files = {str(p.relative_to(step_dir)): [p.stat().st_size, _file_digest(p)] for p in _hashed_files(step_dir)}
    manifest = {**info, "files": files}
    # Reading the params back is an orbax restore, whose multi-process barriers would run on process 0 alone
    # here: multi-process runs keep the files' checksums only (their loads hash every file).
    if jax.process_count() == 1:
        try:
            manifest["arrays"] = _array_digests(read_numpy_state(step_dir, PARAMS))
        except KeyError:  # a state without params (not a model's train state): its files' checksums only
            pass
    (step_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1) + "\n")


def read_manifest(step_dir: Path) -> dict | None:
    """The step's manifest; None when it has none (written by an older hrm); raises ValueError if unreadable."""
    path = step_dir / MANIFEST_FILE
    if not path.exists():
        return None
    manifest = json.loads(path.read_text())
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise ValueError(f"{MANIFEST_FILE} is not a manifest")
    return manifest


def damage(step_dir: Path, parts: tuple[str, ...] | None = None) -> str | None:
    """What is wrong with a finished step (a missing, resized or changed file), or None when it checks out.
    ``parts``: what of the train state will be read: None (a resume: every file's checksum) or ``PARAMS`` (a
    model load: file sizes and the parameter arrays' checksums, ``read_params``; the optimizer state is not
    read). A step without a manifest (saved before checksums existed) cannot be checked file by file: the
    ``parts`` that will be read are read instead, and unreadable or non-finite values are its damage."""
    if parts == PARAMS:
        return read_params(step_dir)[0]
    try:
        manifest = read_manifest(step_dir)
    except (ValueError, OSError) as error:
        return f"unreadable {MANIFEST_FILE}: {error}"
    if manifest is None:
        return _unverified_read(step_dir, parts)[0]
    return _size_damage(step_dir, manifest) or _file_damage(step_dir, manifest)


def _size_damage(step_dir: Path, manifest: dict) -> str | None:
    for name, (size, _) in sorted(manifest["files"].items()):
        path = step_dir / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} were saved"
    return None


def _file_damage(step_dir: Path, manifest: dict) -> str | None:
    for name, (_, digest) in sorted(manifest["files"].items()):
        if _file_digest(step_dir / name) != digest:
            return f"{name} does not match its checksum"
    return None


def read_params(step_dir: Path) -> tuple[str | None, dict | None]:
    """(damage, params as numpy arrays): a model load's check and read in one pass over the params only.
    Steps with parameter checksums (the manifest's ``arrays``) are checked as they are read; older manifests
    by every file's checksum; manifest-less steps by their values (``_unverified_read``)."""
    try:
        manifest = read_manifest(step_dir)
    except (ValueError, OSError) as error:
        return f"unreadable {MANIFEST_FILE}: {error}", None
    if manifest is None:  # checked by the values it reads: read once
        problem, state = _unverified_read(step_dir, PARAMS)
        return problem, None if problem else state["params"]
    problem = _size_damage(step_dir, manifest)
    if problem is None and not isinstance(manifest.get("arrays"), dict):
        problem = _file_damage(step_dir, manifest)
    if problem is not None:
        return problem, None
    try:
        params = read_numpy_state(step_dir, PARAMS)
    except Exception as error:  # orbax/tensorstore raise many types for a damaged step
        return f"its parameters cannot be read ({type(error).__name__})", None
    if isinstance(saved := manifest.get("arrays"), dict):
        digests = _array_digests(params)
        if digests.keys() != saved.keys():
            return f"its parameters are not the {len(saved)} arrays that were saved", None
        changed = [key for key in sorted(saved) if digests[key] != saved[key]]
        if changed:
            return f"parameter {changed[0]} does not match its checksum", None
    return None, params["params"]


def verified(step_dir: Path) -> bool:
    """Whether the step has a manifest whose checksums ``damage`` checks (steps of older hrm versions do not)."""
    return (Path(step_dir) / MANIFEST_FILE).is_file()


def _unverified_read(step_dir: Path, parts: tuple[str, ...] | None) -> tuple[str | None, dict | None]:
    """(damage, state read) of a manifest-less step: state that cannot be read, or values that are not all
    finite (overwritten bytes decode as NaN and garbage; a resume from them trains only skipped steps)."""
    what = "parameters" if parts == ("params",) else "train state"
    try:
        state = read_numpy_state(step_dir, parts)
    except Exception as error:  # orbax/tensorstore raise many types for a damaged step
        return f"no {MANIFEST_FILE}, and its {what} cannot be read ({type(error).__name__})", None
    floats = [x for x in jax.tree.leaves(state) if np.issubdtype(np.asarray(x).dtype, np.floating)]
    bad = sum(int(np.size(x) - np.isfinite(x).sum()) for x in floats)
    return (f"no {MANIFEST_FILE}, and {bad:,} values of its {what} are not finite" if bad else None), state


def read_numpy_state(step_dir: Path, parts: tuple[str, ...] | None = None) -> dict:
    """The saved train state of a step (only its top-level ``parts`` when given, e.g. ``("params",)``) as numpy
    arrays, shaped by the step's own metadata."""
    path = Path(step_dir).absolute() / "state"
    with ocp.PyTreeCheckpointer() as reader:
        shapes = reader.metadata(path).item_metadata
        target = {k: jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), shapes[k]) for k in parts or shapes}
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
        item = ocp.args.PyTreeRestore(item=target, partial_restore=True, restore_args=restore_args)
        return reader.restore(path, args=item)


# --- steps and names ---------------------------------------------------------------------------------------


def checkpoint_root(run_dir: Path) -> Path:
    return Path(run_dir).absolute() / CHECKPOINT_DIR


def finished_steps(run_dir: Path) -> list[int]:
    root = checkpoint_root(run_dir)
    return sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit()) if root.is_dir() else []


def step_info(run_dir: Path, step: int) -> dict:
    """A finished step's manifest without its file list ({} without a readable manifest)."""
    try:
        manifest = read_manifest(checkpoint_root(run_dir) / str(step)) or {}
    except (ValueError, OSError):
        return {}
    return {k: v for k, v in manifest.items() if k != "files"}


def named_steps(run_dir: Path, steps: list[int] | None = None) -> dict[str, int]:
    """{"latest", "best" (lowest eval loss), "final" (newest end of training)} among ``steps`` (default: the
    finished ones) where they exist."""
    steps = finished_steps(run_dir) if steps is None else steps
    infos = {s: step_info(run_dir, s) for s in steps}
    names = {"latest": max(steps)} if steps else {}
    evaluated = [(info["eval_loss"], s) for s, info in infos.items() if info.get("eval_loss") is not None]
    if evaluated:
        names["best"] = min(evaluated)[1]
    final = [s for s, info in infos.items() if info.get("final")]
    if final:
        names["final"] = max(final)
    return names


def _available(run_dir: Path) -> str:
    steps = finished_steps(run_dir)
    names = named_steps(run_dir, steps)
    named = ", ".join(f"{name}={step}" for name, step in names.items() if name != "latest")
    return (
        (f"available steps: {', '.join(map(str, steps))}" + (f" ({named})" if named else ""))
        if steps
        else "no finished step"
    )


def resolve_step(run_dir: str | Path, step: int | str | None = None, log=warn, parts=PARAMS) -> int:
    """The checkpoint step of a run directory that ``step`` names: None or ``latest`` (the newest step that
    checks out; a damaged newer step is reported through ``log``), ``best``, ``final`` or a number.
    Raises ``CheckpointError`` (one line: the problem and the available steps) for a missing, unknown,
    negative or damaged step. ``parts``: what of the train state will be read (``damage``; None: all of it)."""
    return _resolve(run_dir, step, log, lambda step_dir: (damage(step_dir, parts), None))[0]


def _resolve(run_dir: str | Path, step: int | str | None, log, check) -> tuple[int, object]:
    """``resolve_step`` with ``check(step_dir) -> (damage, value)``: the step and its check's value."""
    run_dir = Path(run_dir)
    steps = finished_steps(run_dir)
    if not steps:
        raise CheckpointError(
            f"no finished checkpoint in '{checkpoint_root(run_dir)}'; "
            f"train first with python -m hrm.train --output_dir {run_dir}"
        )
    if step is None or step == "latest":
        for candidate in reversed(steps):
            problem, value = check(checkpoint_root(run_dir) / str(candidate))
            if problem is None:
                return candidate, value
            log(f"checkpoint step {candidate} in '{run_dir}' is damaged ({problem}); trying an older step")
        raise CheckpointError(f"every checkpoint in '{checkpoint_root(run_dir)}' is damaged; retrain")
    if isinstance(step, str) and not step.lstrip("-").isdigit():
        names = named_steps(run_dir, steps)
        if step not in STEP_NAMES:
            raise CheckpointError(
                f"unknown step '{step}'; pass a number or one of {', '.join(STEP_NAMES)} ({_available(run_dir)})"
            )
        if step not in names:
            raise CheckpointError(f"'{run_dir}' has no '{step}' checkpoint yet; {_available(run_dir)}")
        resolved = names[step]
    else:
        resolved = int(step)
        if resolved not in steps:
            raise CheckpointError(f"'{run_dir}' has no checkpoint at step {resolved}; {_available(run_dir)}")
    problem, value = check(checkpoint_root(run_dir) / str(resolved))
    if problem is not None:
        raise CheckpointError(
            f"checkpoint step {resolved} in '{run_dir}' is damaged ({problem}); pass another "
            f"--step: {_available(run_dir)}"
        )
    return resolved, value


# --- the run's checkpoints ---------------------------------------------------------------------------------


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


class Checkpoints:
    """Writes and restores a run's checkpoints (every process of a run calls every method, in the same order).

    ``save`` is asynchronous; its manifest is written by orbax's background thread just before the step's
    folder is renamed into place. Process 0 writes manifests and moves damaged steps."""

    def __init__(self, run_dir: str | Path, keep: int = 3, config: Config | None = None):
        self.run_dir = Path(run_dir)
        self.keep = keep
        self.config = config.to_dict() if config is not None else None
        self.is_main = jax.process_index() == 0
        self._pending = collections.deque()  # (step, info) of saves whose manifest is not written yet
        self._in_flight = None  # (step, bytes) of the newest save not known to be finished
        remove_tmp_dirs(self.run_dir)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None, async_options=ocp.AsyncOptions(post_finalization_callback=self._write_pending_manifest)
        )
        self.mgr = ocp.CheckpointManager(checkpoint_root(self.run_dir), options=options)

    def _write_pending_manifest(self) -> None:
        step, info = self._pending.popleft()
        if self.is_main:
            root = checkpoint_root(self.run_dir)
            tmp = root / f"{step}{TMP_SUFFIX}"
            write_manifest(tmp if tmp.is_dir() else root / str(step), info)

    def latest_step(self) -> int | None:
        return self.mgr.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.mgr.all_steps())

    def save(self, step: int, state, data_iterator=None, eval_loss: float | None = None, final: bool = False) -> None:
        """Start saving ``state`` (and the iterator's position) as ``step``. Retention (the newest ``keep`` steps
        plus the best and final ones) prunes only committed steps, once the save before this one has committed:
        a kill during this save always leaves the previous step to resume from. Disk full: ``CheckpointError``
        naming the bytes needed."""
        self.wait_until_finished()  # surfaces a failed previous save before starting this one
        self._prune()
        items = {"state": ocp.args.StandardSave(state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(ExactIteratorState(data_iterator))
        info = {"step": step, "eval_loss": eval_loss, "final": final, "config": self.config}
        self._pending.append((step, info))
        self._in_flight = (step, sum(getattr(x, "nbytes", 8) for x in jax.tree.leaves(state)))
        try:
            self.mgr.save(step, args=ocp.args.Composite(**items), force=True)
        except (OSError, ValueError) as error:
            self._failed(error)

    def wait_until_finished(self) -> None:
        try:
            self.mgr.wait_until_finished()
        except (OSError, ValueError) as error:
            self._failed(error)
        self._in_flight = None

    def _failed(self, error: Exception):
        step, nbytes = self._in_flight or (None, 0)
        self._pending.clear()
        self._in_flight = None
        remove_tmp_dirs(self.run_dir)
        if not is_disk_full(error):
            raise error
        free = shutil.disk_usage(self.run_dir).free
        last = [s for s in finished_steps(self.run_dir) if s != step]
        raise CheckpointError(
            f"disk full saving checkpoint step {step} in '{self.run_dir}': it needs about {nbytes:,} bytes, "
            f"{free:,} are free; free some space and re-run to "
            + (f"resume from step {max(last)} (its checkpoint is intact)" if last else "start again")
        ) from None

    def _prune(self) -> None:
        """Delete committed steps other than the newest ``keep`` and the best and final ones."""
        finished = [s for s in self.all_steps() if (checkpoint_root(self.run_dir) / str(s)).is_dir()]
        names = named_steps(self.run_dir, finished)
        keep = set(sorted(finished)[-self.keep :]) | {names[name] for name in ("best", "final") if name in names}
        for step in finished:
            if step not in keep:
                self.mgr.delete(step)

    def restore(self, step: int, abstract_state, data_iterator=None):
        """The train state at ``step``; the data iterator (when given) is moved to its saved position."""
        return _restore_state(self.mgr, self.run_dir, step, abstract_state, data_iterator)

    def newest_good_step(self, log) -> int | None:
        """The newest finished step that checks out; damaged newer ones are moved to ``DIR/damaged/`` (process
        0) with one line each through ``log``. Every process checks the same files and reaches the same step."""
        for step in reversed(finished_steps(self.run_dir)):
            problem = damage(checkpoint_root(self.run_dir) / str(step))
            if problem is None:
                return step
            moved = self.run_dir / DAMAGED_DIR / str(step)
            older = [s for s in finished_steps(self.run_dir) if s < step]
            log(
                f"checkpoint step {step} is damaged ({problem}); moved to {moved}, resuming from "
                f"{'step ' + str(max(older)) if older else 'the start'}"
            )
            _sync("hrm_damaged_check")
            if self.is_main:
                moved.parent.mkdir(exist_ok=True)
                shutil.rmtree(moved, ignore_errors=True)
                os.replace(checkpoint_root(self.run_dir) / str(step), moved)
            _sync("hrm_damaged_moved")
            self.mgr.reload()
        return None

    def close(self) -> None:
        self.wait_until_finished()
        self._prune()
        self.mgr.close()


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def remove_tmp_dirs(run_dir: Path) -> None:
    """Remove the temporary folders of unfinished saves (process 0; the run lock keeps other runs out)."""
    if jax.process_index() == 0 and checkpoint_root(run_dir).is_dir():
        for tmp in checkpoint_root(run_dir).glob(f"*{TMP_SUFFIX}*"):
            shutil.rmtree(tmp, ignore_errors=True)


def _restore_state(mgr, run_dir: Path, step: int, abstract_state, data_iterator=None):
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
        items["data"] = grain.checkpoint.CheckpointRestore(ExactIteratorState(data_iterator))
    try:
        return mgr.restore(step, args=ocp.args.Composite(**items))["state"]
    except (ValueError, KeyError, TypeError, OSError) as error:
        raise CheckpointError(
            f"cannot resume from '{checkpoint_root(run_dir) / str(step)}' "
            f"({type(error).__name__}: {str(error).splitlines()[0][:200]}); it was "
            f"written by another model or hrm version: pass a new --output_dir"
        ) from None


def restore_state(run_dir: Path, step: int, abstract_state, data_iterator=None):
    """The train state (and data position) at ``step`` of another run, read-only (``--resume PATH``)."""
    with read_only_manager(run_dir) as mgr:
        return _restore_state(mgr, Path(run_dir), step, abstract_state, data_iterator)


def restore_params(run_dir: Path, abstract_params, step: int | str | None = None, log=warn):
    """Only the model parameters of the latest good (or given: number or name) step of a run directory, checked
    as they are read (``read_params``) and placed on the first device in ``abstract_params``' dtypes."""
    run_dir = Path(run_dir)
    step, params = _resolve(run_dir, step, log, read_params)
    saved = {_key(path): x for path, x in jax.tree_util.tree_flatten_with_path(params)[0]}
    wanted, treedef = jax.tree_util.tree_flatten_with_path(abstract_params)
    saved = _without_untrained_conv_bias(saved, {_key(path) for path, _ in wanted}, run_dir, step)
    if saved.keys() != {_key(path) for path, _ in wanted} or any(
        saved[_key(path)].shape != tuple(a.shape) for path, a in wanted
    ):
        raise CheckpointError(
            f"checkpoint step {step} in '{run_dir}' holds parameters of other names or shapes than its "
            f"{CONFIG_FILE}'s model; it was written by another hrm version: retrain or convert it"
        )
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    leaves = [jax.device_put(saved[_key(path)].astype(a.dtype, copy=False), device) for path, a in wanted]
    return jax.tree_util.tree_unflatten(treedef, leaves), step


def _without_untrained_conv_bias(saved: dict, wanted: set, run_dir: Path, step: int) -> dict:
    """Parameters saved before ``model.conv_bias=False`` dropped the conv bias (hrm used to create one, zeros at
    init, and train it): an all-zero one is dropped (the model computes the same without it); a trained one
    cannot be, so the error says how to keep it."""
    extra = [k for k in saved.keys() - wanted if k.endswith(".conv_bias")]
    if not extra or any(k.rsplit(".", 1)[0] + ".conv_kernel" not in wanted for k in extra):
        return saved
    if any(np.any(saved[k]) for k in extra):
        raise CheckpointError(
            f"checkpoint step {step} in '{run_dir}' trained a conv bias under model.conv_bias=false (older hrm); "
            f'set "conv_bias": true under "model" in its {CONFIG_FILE} to load it with that bias'
        )
    return {k: v for k, v in saved.items() if k not in extra}


@contextlib.contextmanager
def read_only_manager(run_dir: Path):
    """An orbax manager over another run's checkpoints that never writes, creates or prunes there; closed on exit."""
    mgr = ocp.CheckpointManager(
        checkpoint_root(run_dir),
        options=ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0, max_to_keep=None),
    )
    try:
        yield mgr
    finally:
        mgr.close()


def saved_config(raw: dict) -> Config:
    """The Config a run or a final-weights folder saved. One written before ``model.scan_layers`` existed holds
    per-layer parameters, so it reads as ``scan_layers=False``: its weights load as saved and a resumed run keeps
    that layout (``--init_from`` converts between the two, ``relayout_layers``)."""
    model = raw.get("model") if isinstance(raw, dict) else None
    if isinstance(model, dict) and "scan_layers" not in model:
        raw = {**raw, "model": {**model, "scan_layers": False}}
    return Config.from_dict(raw)


def read_run_config(run_dir: Path, log=warn) -> Config:
    """The run's config; if ``config.json`` is damaged, the copy in the newest step's manifest (said in one line)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"checkpoint directory '{run_dir}' does not exist; pass a run's --output_dir")
    if not (run_dir / CONFIG_FILE).is_file():
        raise CheckpointError(f"'{run_dir}' has no {CONFIG_FILE}; pass the --output_dir of an hrm.train run")
    try:
        return saved_config(json.loads((run_dir / CONFIG_FILE).read_text()))
    except (ValueError, OSError) as error:  # JSONDecodeError and ConfigError are ValueErrors
        problem = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    for step in reversed(finished_steps(run_dir)):
        saved = step_info(run_dir, step).get("config")
        if saved is not None:
            try:
                config = saved_config(saved)
            except ConfigError:
                continue
            log(f"'{run_dir / CONFIG_FILE}' is damaged ({problem}); using the copy saved with step {step}")
            return config
    raise CheckpointError(
        f"'{run_dir / CONFIG_FILE}' is damaged ({problem}) and no checkpoint holds a copy; "
        f"restore it or pass a new --output_dir"
    )

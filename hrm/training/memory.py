"""Device memory of a train step, from XLA's compiled memory analysis — no device memory is touched.

``train_step_memory`` compiles (does not run) the real train step — optimizer, accumulation, remat, dtype —
for abstract inputs (``jax.ShapeDtypeStruct``) and reads ``compiled.memory_analysis()``: the bytes of the
arguments (train state + batch), the outputs and the temporaries, with the donated state counted once. On a
CPU it is XLA's CPU estimate of the GPU figure (fusion differs); it sizes batches and catches O(L²)
temporaries. ``largest_micro_batch`` binary-searches the micro-batch that fits a budget.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
from pathlib import Path

import jax
import jax.numpy as jnp

from hrm import kernels
from hrm.config import Config, ConfigError
from hrm.models.accounting import parameter_table
from hrm.training.state import abstract_train_state, eval_sums, make_train_step

GIB = 2**30
MIB = 2**20


@dataclasses.dataclass
class StepMemory:
    """Bytes one device needs for a train step at ``micro_batch_size`` rows of ``seq_len`` tokens."""

    micro_batch_size: int
    accumulation_steps: int
    seq_len: int
    param_bytes: int
    optimizer_bytes: int
    batch_bytes: int
    temp_bytes: int  # activations, gradients and every other intermediate XLA keeps live
    total_bytes: int  # arguments + outputs - aliased (donated) + temporaries
    eval_temp_bytes: int = 0  # the evaluation forward's temporaries at the same micro-batch
    eval_total_bytes: int = 0  # the evaluation forward's arguments, outputs and temporaries + the optimizer state

    @property
    def peak_bytes(self) -> int:
        """What the device must hold: the larger of the train step and the evaluation (with the train state
        resident)."""
        return max(self.total_bytes, self.eval_total_bytes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def parse_vram(text: str) -> int:
    """Bytes from a --vram figure as README.md "Memory" writes it: "24gb", "24", "20.5" (GB, i.e. GiB: GPU
    memory sizes are powers of two), also "16GiB" and "16384MB"."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(gb|gib|g|mb|mib|m)?\s*", str(text).lower())
    if not match or float(match.group(1)) <= 0:
        raise ConfigError(f"--vram expects a size such as 24gb, 24 or 20.5 (GB), got {text!r}")
    unit = MIB if (match.group(2) or "gb").startswith("m") else GIB
    return int(float(match.group(1)) * unit)


def device_memory_limit() -> int | None:
    """The first local device's memory limit in bytes (``memory_stats()["bytes_limit"]``), None where the
    backend does not report one (CPU)."""
    stats = jax.local_devices()[0].memory_stats() or {}
    return stats.get("bytes_limit")


def peak_memory_in_use() -> int | None:
    """The peak bytes in use on the first local device so far, None where the backend does not say."""
    stats = jax.local_devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def _nbytes(tree) -> int:
    return sum(int(x.size) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


# The train step's batch: token ids, next-token targets, the loss mask and the packed documents' segment ids.
BATCH_DTYPES = {"inputs": jnp.int32, "targets": jnp.int32, "mask": jnp.bool_, "segment_ids": jnp.int32}


def abstract_batch(rows: int, seq_len: int, sharding=None) -> dict:
    """The shapes and dtypes of a batch of ``rows`` rows of ``seq_len`` tokens (laid out by ``sharding``)."""
    return {k: jax.ShapeDtypeStruct((rows, seq_len), dtype, sharding=sharding) for k, dtype in BATCH_DTYPES.items()}


def gpu_config(config: Config) -> Config:
    """The config as a GPU runs it: "auto" takes the fused Pallas scan there (the CPU takes other kernels,
    whose memory differs), so the estimate is compiled for that kernel (interpreted on a CPU)."""
    if config.model.scan_backend != "auto":
        return config
    return dataclasses.replace(config, model=dataclasses.replace(config.model, scan_backend="pallas"))


def train_step_memory(config: Config, micro_batch_size: int | None = None, devices: int = 1) -> StepMemory:
    """Compile the train step of a resolved ``config`` and report one device's memory when the global batch
    runs in micro-batches of ``micro_batch_size`` rows (default: the config's) over ``devices`` data-parallel
    devices (each compiles its share: ``micro_batch_size / devices`` rows per micro-batch)."""
    t = config.train
    micro = micro_batch_size or t.batch_size // t.accumulation_steps
    steps = t.batch_size // micro
    if t.batch_size % micro or micro % devices:
        raise ConfigError(
            f"micro-batch {micro} must divide train.batch_size ({t.batch_size}) and be a multiple "
            f"of the {devices} devices"
        )
    share = dataclasses.replace(t, batch_size=t.batch_size // devices, accumulation_steps=steps)
    config = dataclasses.replace(config, train=share)
    graphdef, state = abstract_train_state(config)
    batch = abstract_batch(share.batch_size, config.data.seq_len)
    step = jax.jit(make_train_step(graphdef, config), donate_argnums=0)
    evaluate = jax.jit(functools.partial(eval_sums, graphdef))
    compiled_eval = evaluate.lower(state["params"], abstract_batch(micro // devices, config.data.seq_len)).compile()
    return step_memory(
        step.lower(state, batch).compile(), state, batch, micro, steps, config.data.seq_len, compiled_eval
    )


def _compiled_bytes(compiled) -> tuple[int, int]:
    """(arguments + outputs - aliased + temporaries, temporaries) of a compiled function, per device."""
    analysis = compiled.memory_analysis()
    total = (
        analysis.argument_size_in_bytes
        + analysis.output_size_in_bytes
        - analysis.alias_size_in_bytes
        + analysis.temp_size_in_bytes
    )
    return int(total), int(analysis.temp_size_in_bytes)


def step_memory(
    compiled,
    state,
    batch,
    micro_batch_size: int,
    accumulation_steps: int,
    seq_len: int,
    compiled_eval=None,
    devices: int = 1,
) -> StepMemory:
    """One device's ``StepMemory`` from a compiled train step's memory analysis (the state donated) and, when
    given, the compiled evaluation forward's (``eval_sums`` on one micro-batch of the parameters, with the rest
    of the train state, the optimizer moments, resident beside it); ``devices`` divides the state's bytes
    when it is sharded (``state`` holds global shapes)."""
    total, temp = _compiled_bytes(compiled)
    eval_total, eval_temp = _compiled_bytes(compiled_eval) if compiled_eval is not None else (0, 0)
    optimizer_bytes = _nbytes(state["opt_state"])
    if compiled_eval is not None:
        eval_total += optimizer_bytes // devices
    return StepMemory(
        micro_batch_size=micro_batch_size,
        accumulation_steps=accumulation_steps,
        seq_len=seq_len,
        param_bytes=_nbytes(state["params"]),
        optimizer_bytes=optimizer_bytes,
        batch_bytes=_nbytes(batch),
        temp_bytes=temp,
        total_bytes=total,
        eval_temp_bytes=eval_temp,
        eval_total_bytes=eval_total,
    )


# float32 parameters, gradients and AdamW's two moments: the least a train step holds per parameter.
TRAIN_BYTES_PER_PARAM = 16


def memory_budget() -> tuple[int, str]:
    """(bytes, what they are) one device may use: the device's memory limit, or on a CPU the host memory
    available now shared by the local devices."""
    limit = device_memory_limit()
    if limit is not None:
        return limit, f"{jax.local_devices()[0].device_kind} memory"
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return available // jax.local_device_count(), "available host memory" + (
        f" / {jax.local_device_count()} devices" if jax.local_device_count() > 1 else ""
    )


def check_parameters_fit(config: Config, devices: int = 1, n_params: int | None = None) -> int:
    """The parameter count (``n_params``, else from shapes, ``parameter_table``); a ``ConfigError`` before anything
    is traced or allocated when their weights, gradients and optimizer moments alone exceed ``memory_budget``."""
    if n_params is None:
        n_params = sum(parameter_table(config.model).values())
    need = n_params * TRAIN_BYTES_PER_PARAM // (devices if config.train.shard_params else 1)
    budget, what = memory_budget()
    if need > budget:
        raise ConfigError(
            f"{config.name} has {n_params:,} parameters: their weights, gradients and AdamW moments "
            f"need {need / GIB:,.1f} GB per device, more than the {budget / GIB:,.1f} GB of {what}; "
            f"lower model.d_model or model.n_layers"
        )
    return n_params


def check_step_fits(memory: StepMemory, config: Config) -> None:
    """A ``ConfigError`` naming the need, the budget and the fix when a compiled train step needs more than
    ``memory_budget`` (XLA's estimate, before the state is allocated)."""
    budget, what = memory_budget()
    if memory.peak_bytes > budget:
        which = "train step" if memory.total_bytes >= memory.eval_total_bytes else "evaluation"
        raise ConfigError(
            f"{config.name} does not fit: its {which} needs {memory.peak_bytes / GIB:,.1f} GB per "
            f"device (micro-batch {memory.micro_batch_size} x {memory.seq_len} tokens; XLA estimate), "
            f"more than the {budget / GIB:,.1f} GB of {what}; lower data.seq_len or the micro-batch "
            f"(--accumulation_steps), or set model.remat=block"
        )


@functools.cache
def _code_fingerprint() -> str:
    """A hash of the sources a train step is built from (models, training, config, kernels): a cached
    estimate is only valid for the code that made it."""
    hrm_dir, kernels_dir = Path(__file__).parents[1], Path(kernels.__file__).parent
    paths = [
        *(hrm_dir / "models").rglob("*.py"),
        *(hrm_dir / "training").rglob("*.py"),
        *(hrm_dir / "config").rglob("*.py"),
        *kernels_dir.rglob("*.py"),
    ]
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _cache_path(config: Config, micro_batch_size: int | None, devices: int) -> Path:
    key = json.dumps(
        [config.to_dict(), micro_batch_size, devices, jax.__version__, jax.default_backend(), _code_fingerprint()],
        sort_keys=True,
    )
    root = Path(os.environ.get("HRM_CACHE_DIR") or Path.home() / ".cache" / "hrm") / "memtest"
    return root / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.json"


def cached_train_step_memory(
    config: Config, micro_batch_size: int | None = None, devices: int = 1, compile_at=None
) -> StepMemory:
    """``train_step_memory``, remembered on disk per config, micro-batch and device count (a compile takes
    seconds to a minute). ``compile_at(config at the micro-batch) -> StepMemory`` measures a miss instead
    (the training plan's own compile, whose program it keeps)."""
    micro = micro_batch_size or config.train.batch_size // config.train.accumulation_steps
    config = dataclasses.replace(
        config, train=dataclasses.replace(config.train, accumulation_steps=max(1, config.train.batch_size // micro))
    )  # one key per micro-batch
    path = _cache_path(config, micro, devices)
    try:
        return StepMemory(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        pass
    memory = compile_at(config) if compile_at else train_step_memory(config, micro, devices)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(memory.to_dict()))
    except OSError:
        pass  # a read-only cache only costs a recompile
    return memory


def micro_batch_candidates(global_batch: int, devices: int = 1) -> list[int]:
    """Micro-batch sizes that split ``global_batch`` evenly and share evenly over ``devices``, ascending."""
    return [m for m in range(devices, global_batch + 1, devices) if global_batch % m == 0]


def largest_micro_batch(config: Config, budget_bytes: int, devices: int = 1, compile_at=None) -> StepMemory | None:
    """The step memory at the largest micro-batch that fits ``budget_bytes`` per device, keeping the global
    batch (None when even the smallest does not fit); a binary search over ``micro_batch_candidates``
    (memory grows with the micro-batch): about log2(#candidates) compiles."""
    candidates = micro_batch_candidates(config.train.batch_size, devices)
    best, lo, hi = None, 0, len(candidates) - 1
    while lo <= hi:
        mid = (lo + hi) // 2
        memory = cached_train_step_memory(config, candidates[mid], devices, compile_at)
        if memory.peak_bytes <= budget_bytes:
            best, lo = memory, mid + 1
        else:
            hi = mid - 1
    return best


def fit_to_vram(config: Config, budget_bytes: int, devices: int = 1, compile_at=None) -> tuple[Config, StepMemory]:
    """``config`` with the largest micro-batch (and the accumulation that keeps its global batch) whose train
    step fits ``budget_bytes`` per device; a ``ConfigError`` naming the need and the budget when none does.
    ``compile_at``: see ``cached_train_step_memory``."""
    best = largest_micro_batch(gpu_config(config), budget_bytes, devices, compile_at)
    if best is None:
        need = cached_train_step_memory(gpu_config(config), devices, devices, compile_at)
        raise ConfigError(
            f"{config.name} does not fit: its train step or evaluation needs {need.peak_bytes / GIB:.2f} GB per "
            f"device even at micro-batch {devices} (seq_len {config.data.seq_len}), the budget is "
            f"{budget_bytes / GIB:.2f} GB; lower data.seq_len, set model.remat=block, or use a "
            f"larger GPU"
        )
    train = dataclasses.replace(config.train, accumulation_steps=best.accumulation_steps)
    return dataclasses.replace(config, train=train), best

"""The training loop: data → jitted step (data parallel over local devices) → metrics → checkpoints."""

from __future__ import annotations

import collections
import dataclasses
import math
import os
import signal
import time
from functools import partial
from pathlib import Path

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from hrm import kernels
from hrm.config import DEFAULT_SAFETY_MARGIN_MB, Config, ConfigError, resolve_config
from hrm.data import (
    check_data_fingerprint,
    data_fingerprint,
    document_pieces,
    eval_batches,
    holds_out,
    packing_efficiency,
    packing_summary,
    split_batch,
    split_documents,
    tokenized_corpus,
    training_batches,
)
from hrm.models import relayout_layers
from hrm.models.accounting import parameter_table
from hrm.tokenizer import get_tokenizer
from hrm.training import checkpoint, faults, memory, runinfo
from hrm.training.evaluation import held_out_loss
from hrm.training.faults import TrainingError
from hrm.training.metrics import MetricsWriter
from hrm.training.monitor import Utilisation, make_probe
from hrm.training.prefetch import Prefetcher
from hrm.training.profiling import StepProfiler
from hrm.training.resume import resume_point
from hrm.training.state import abstract_params, abstract_train_state, eval_sums, init_train_state, make_train_step


def check_same_run(run_dir: Path, config: Config) -> None:
    """A run directory belongs to one model and one tokenization; refuse to resume another."""
    if not (run_dir / checkpoint.CONFIG_FILE).exists():
        return
    saved = checkpoint.read_run_config(run_dir)
    fixed = {
        "model": (saved.model, config.model),
        "data.tokenizer": (saved.data.tokenizer, config.data.tokenizer),
        "data.seq_len": (saved.data.seq_len, config.data.seq_len),
    }
    for key, (old, new) in fixed.items():
        if old != new:
            diff = ""
            if dataclasses.is_dataclass(old):
                changed = [f.name for f in dataclasses.fields(old) if getattr(old, f.name) != getattr(new, f.name)]
                diff = f" ({', '.join(f'{key}.{n}: {getattr(old, n)} -> {getattr(new, n)}' for n in changed)})"
            raise ConfigError(
                f"'{run_dir}' holds a run with a different {key}{diff}; "
                f"pass a new --output_dir or the original settings"
            )


def init_distributed(coordinator_address: str, num_processes: int, process_id: int) -> None:
    """Join a multi-process run (one process per host, each driving its local devices) through
    ``jax.distributed``; on CPU the processes' collectives go through gloo."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)


def data_mesh() -> Mesh:
    return Mesh(np.array(jax.devices()), ("data",))


def state_shardings(state, mesh: Mesh, shard_params: bool):
    """Replicated state, or (``train.shard_params``, FSDP-style) every array split over the data axis along
    its largest dimension that the device count divides (parameters and the optimizer's moments alike; XLA
    gathers a parameter where a layer needs it). Arrays with no such dimension stay replicated."""
    n = mesh.shape["data"]

    def spec(x):
        dims = [i for i in sorted(range(x.ndim), key=lambda i: -x.shape[i]) if x.shape[i] % n == 0]
        if not shard_params or n == 1 or not dims:
            return NamedSharding(mesh, P())
        return NamedSharding(mesh, P(*(("data" if i == dims[0] else None) for i in range(x.ndim))))

    return jax.tree.map(spec, state)


@dataclasses.dataclass
class VramRequest:
    """``--vram_auto`` (read the device's memory limit) or ``--vram`` bytes, less a safety margin in MB."""

    vram_bytes: int | None = None
    safety_margin_mb: float = DEFAULT_SAFETY_MARGIN_MB


def fit_batch_to_vram(config: Config, request: VramRequest, log, compile_at=None) -> Config:
    """The config with the largest micro-batch that fits the requested memory (the global batch kept).
    ``compile_at(config) -> StepMemory`` measures a micro-batch not yet in the estimate cache
    (``memory.cached_train_step_memory``)."""
    vram = request.vram_bytes or memory.device_memory_limit()
    if vram is None:
        log(
            f"--vram_auto: the {jax.default_backend()} backend reports no memory limit; keeping micro-batch "
            f"{config.train.batch_size // config.train.accumulation_steps} x {config.train.accumulation_steps} "
            f"accumulation (pass --vram to size for a GPU)"
        )
        return config
    budget = vram - int(request.safety_margin_mb * memory.MIB)
    config, step = memory.fit_to_vram(config, budget, jax.device_count(), compile_at)
    log(
        f"vram: micro-batch {step.micro_batch_size} x {step.accumulation_steps} accumulation = global batch "
        f"{config.train.batch_size}; {step.total_bytes / memory.GIB:.2f} GB per device of "
        f"{vram / memory.GIB:.2f} GB - {request.safety_margin_mb:g} MB margin (XLA estimate)"
    )
    return config


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """A run as settled before its first step, each part built once: the resolved config (``train.steps`` from
    ``train.epochs``, the micro-batch from a ``VramRequest``), the parameters per component, the device mesh, the
    train state's shapes laid out by their shardings (from one abstract model) and the compiled train step and
    evaluation, whose memory was checked. A run that never evaluates (``train.eval_batches`` 0, or no held-out
    documents) compiles no evaluation: ``eval_fn`` is None."""

    config: Config
    parameters: dict[str, int]  # per component, from shapes (hrm.models.accounting.parameter_table)
    epoch_tokens: int  # row tokens of one pass over the training documents
    mesh: Mesh
    graphdef: object  # the model's nnx.GraphDef
    state_sharding: dict
    abstract_state: dict  # jax.ShapeDtypeStruct leaves carrying their shardings: what a restore fills
    step_fn: object  # compiled (state, batch) -> (state, metrics)
    eval_fn: object | None  # compiled (params, micro-batch) -> eval_sums; None without held-out batches

    @property
    def n_params(self) -> int:
        return sum(self.parameters.values())

    @property
    def micro_batch(self) -> int:
        return self.config.train.batch_size // self.config.train.accumulation_steps


def plan_run(config: Config, corpus, vram: VramRequest | None = None, log=print) -> RunPlan:
    """The plan of training a resolved ``config`` on ``corpus``. Sizes that cannot fit raise a ``ConfigError``
    before anything is allocated: the parameters' bytes first, from shapes only (``memory.check_parameters_fit``),
    then the compiled step's and evaluation's memory (``compile_steps``)."""
    epoch_tokens = training_tokens(config.data, corpus)
    if config.train.epochs:
        config = with_epoch_steps(config, epoch_tokens, log)
    parameters = parameter_table(config.model)
    memory.check_parameters_fit(config, jax.device_count(), n_params=sum(parameters.values()))
    mesh = data_mesh()
    evaluates = holds_out(config.data, corpus, config.train.eval_batches)
    graphdef, shapes = abstract_train_state(config)  # the micro-batch changes the step, not the state
    state_sharding = state_shardings(shapes, mesh, config.train.shard_params)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, state_sharding)
    searched = {}  # accumulation -> the run's (step, evaluation, memory) the --vram search compiled: kept
    requested = config

    def compile_at(candidate: Config) -> memory.StepMemory:
        run_config = dataclasses.replace(requested, train=candidate.train)
        searched[run_config.train.accumulation_steps] = compiled = _compile_steps(
            graphdef, run_config, abstract, state_sharding, mesh, evaluates
        )
        return compiled[2]

    if vram is not None:
        # The search measures the program a GPU runs (``memory.gpu_config``); where that is this run's program
        # (on a GPU; on a CPU where the scan backend resolves the same: a named one, or "auto" for float32) its
        # compiles are the run's own and the chosen one is kept.
        same_program = _resolved_backend(memory.gpu_config(config)) == _resolved_backend(config)
        config = fit_batch_to_vram(config, vram, log, compile_at if same_program else None)
    t = config.train
    if (t.batch_size // t.accumulation_steps) % jax.device_count():
        raise ConfigError(
            f"the micro-batch (train.batch_size {t.batch_size} / train.accumulation_steps "
            f"{t.accumulation_steps}) must be a multiple of the {jax.device_count()} devices; "
            f"change --config.train.batch_size or --config.train.accumulation_steps"
        )
    if t.accumulation_steps in searched:
        step_fn, eval_fn, step_memory = searched[t.accumulation_steps]
        memory.check_step_fits(step_memory, config)
    else:
        step_fn, eval_fn = compile_steps(graphdef, config, abstract, state_sharding, mesh, evaluates)  # and checks
    return RunPlan(config, parameters, epoch_tokens, mesh, graphdef, state_sharding, abstract, step_fn, eval_fn)


def _resolved_backend(config: Config) -> str:
    return kernels.resolve_backend(config.model.scan_backend, dtype=config.model.dtype)


def read_corpus(config: Config, log):
    """The tokenized training data of a resolved ``config``: data errors come before anything is built."""
    tokenizer = get_tokenizer(config.data.tokenizer)
    if tokenizer.vocab_size > config.model.vocab_size:
        raise ConfigError(
            f"config key 'model.vocab_size' ({config.model.vocab_size}) is smaller than tokenizer "
            f"'{config.data.tokenizer}' ({tokenizer.vocab_size} tokens); set "
            f"--config.model.vocab_size=0 to follow the tokenizer"
        )
    return tokenized_corpus(config.data, tokenizer, log)


def train(
    config: Config,
    run_dir: str | Path,
    log=print,
    stop_at_step: int | None = None,
    vram: VramRequest | None = None,
    allow_data_change: bool = False,
    init_from: str | Path | None = None,
    resume_from: str | Path | None = None,
    wandb: bool = False,
    time_limit_s: float | None = None,
) -> list[dict]:
    """Train (or resume) the run in ``run_dir``; returns the metrics records written this call.

    ``stop_at_step`` ends this call early with a checkpoint, as a preemption would (the schedule
    still spans ``train.steps``); calling again resumes. ``vram`` sizes the micro-batch to a memory budget.
    A resumed run refuses data other than it started with unless ``allow_data_change``
    (``--allow_data_change``).
    ``init_from`` (a run directory) supplies the starting weights when ``run_dir`` has no checkpoint yet;
    ``resume_from`` (a run directory or ``DIR/checkpoints/N``, hrm/training/resume.py) the whole state: weights,
    optimizer, step and data position. ``wandb`` also logs the records to Weights & Biases.
    ``time_limit_s`` ends this call (with a checkpoint) once that many seconds of training have passed;
    training seconds (``seconds`` in the metrics) start after this call's first step, so compilation is
    not counted.

    Setup reads the data first (its errors come before anything is built), then settles the ``RunPlan`` (sizes
    that cannot fit stop the run before anything is allocated), then opens the run (``OpenRun``: lock, state,
    data stream, writers) and runs its steps (``run_steps``).
    """
    checkpoint.quiet_orbax()
    config = resolve_config(config)
    run_dir = Path(run_dir)
    corpus = read_corpus(config, log)
    check_same_run(run_dir, config)
    plan = plan_run(config, corpus, vram, log)
    t = plan.config.train
    for line in packing_summary(plan.config.data, corpus, t.batch_size, t.seed):  # after the size checks: it packs
        log(line)  # rows of data.seq_len tokens
    run = OpenRun.open(plan, run_dir, corpus, log, allow_data_change, init_from, resume_from, wandb)
    try:
        records = run_steps(plan, run, log, stop_at_step, time_limit_s)
    except TrainingError:
        run.mgr.wait_until_finished()
        raise
    finally:
        run.close()
    if run.is_main and run.step == t.steps:
        runinfo.write_summary(run_dir)
    log(f"done: step {run.step}, checkpoint in {run_dir / checkpoint.CHECKPOINT_DIR / str(run.step)}")
    return records


@dataclasses.dataclass
class OpenRun:
    """A run directory opened for training: its lock, the train state and step, the data stream and held-out
    batches on the devices, the checkpoint manager and the writers. ``close`` releases them all."""

    run_dir: Path
    lock: faults.RunLock
    is_main: bool
    mgr: checkpoint.Checkpoints
    batches: Prefetcher
    held_out: list
    state: dict
    step: int
    writer: MetricsWriter
    stop: faults.StopSignals
    bad: faults.BadSteps
    profiler: StepProfiler
    probe: object  # jitted activation norms on log steps, or None
    utilisation: Utilisation
    eval_loss: float | None = None

    @classmethod
    def open(cls, plan: RunPlan, run_dir: Path, corpus, log, allow_data_change, init_from, resume_from, wandb):
        """Lock ``run_dir``, write its config, and restore (a checkpoint here, else ``resume_from``) or initialise
        (from ``init_from``'s weights when given) the train state into the plan's shardings."""
        config, t = plan.config, plan.config.train
        sharded = NamedSharding(plan.mesh, P("data"))
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = faults.RunLock(run_dir, jax.process_index()).acquire()
        try:  # a setup that fails (a refused data change, an unreadable checkpoint) leaves no lock behind
            is_main = jax.process_index() == 0
            if is_main:
                tmp = run_dir / (checkpoint.CONFIG_FILE + ".tmp")
                config.save_json(tmp)
                os.replace(tmp, run_dir / checkpoint.CONFIG_FILE)

            def to_device(batch):
                """A global batch (every process holds all of it) as arrays sharded over the data axis; each
                process feeds its own contiguous block of rows."""
                n = len(batch["inputs"]) // jax.process_count()
                rows = slice(jax.process_index() * n, (jax.process_index() + 1) * n)
                return {
                    k: jax.make_array_from_process_local_data(sharded, v[rows].astype(memory.BATCH_DTYPES[k]))
                    for k, v in batch.items()
                }

            def prepare(raw):  # runs on the prefetch thread
                batch = split_batch(raw)
                return to_device(batch), packing_efficiency(batch)

            # Every process reads the same global batches and feeds its own rows, so losses, data order and
            # checkpoints do not depend on the number of processes.
            batches = Prefetcher(iter(training_batches(config.data, corpus, t.batch_size, t.seed)), prepare)
            # Evaluation runs in micro-batches (the memory the step was checked for), each held-out target once.
            held_out = [
                to_device(b)
                for b in eval_batches(config.data, corpus, plan.micro_batch, t.eval_batches * t.accumulation_steps)
            ]
            mgr = checkpoint.Checkpoints(run_dir, keep=t.keep_checkpoints, config=config)
            start = mgr.newest_good_step(log) or 0
            source = resume_point(resume_from) if resume_from and not start else None
            fingerprint = data_fingerprint(config.data, corpus)
            if source:  # the data must be the one the resumed run read, or its position means nothing
                check_data_fingerprint(source[0], fingerprint, True, allow_data_change, log, write=False)
            check_data_fingerprint(run_dir, fingerprint, bool(start), allow_data_change, log, write=is_main)
            # A resume restores straight into the sharded abstract state: no initialised state exists beside it.
            if start:
                state = mgr.restore(start, plan.abstract_state, batches)
                log(f"resumed from {run_dir / checkpoint.CHECKPOINT_DIR / str(start)}")
            elif source:
                state = checkpoint.restore_state(source[0], source[1], plan.abstract_state, batches)
                start = source[1]
                log(f"resumed from {source[0] / checkpoint.CHECKPOINT_DIR / str(start)} into {run_dir}")
            else:
                state = sharded_init(config, plan.state_sharding)()
                if init_from:
                    state = with_initial_params(state, Path(init_from), log)
            log(
                f"model {config.model.family}: {plan.n_params:,} parameters; "
                f"{kernels.banner(config.model.scan_backend, config.model.dtype)}"
            )
            utilisation = Utilisation(config, plan.parameters)
            log(utilisation.describe())
            probe = make_probe(plan.graphdef, plan.state_sharding["params"], sharded) if t.log_activations else None
            writer = MetricsWriter(
                run_dir, start, t.steps, enabled=is_main, wandb_config=config.to_dict() if wandb else None
            )
            replicated = NamedSharding(plan.mesh, P())
            stop, bad = faults.StopSignals().install(), faults.BadSteps(t.max_bad_steps, replicated)
            profiler = StepProfiler(run_dir, t.profile_steps if is_main else 0, log)
        except BaseException:
            lock.release()
            raise
        return cls(
            run_dir,
            lock,
            is_main,
            mgr,
            batches,
            held_out,
            state,
            start,
            writer,
            stop,
            bad,
            profiler,
            probe,
            utilisation,
        )

    def last_good(self) -> str:
        latest = self.mgr.latest_step()
        return (
            str(self.run_dir / checkpoint.CHECKPOINT_DIR / str(latest)) if latest else "none (a re-run starts afresh)"
        )

    def save(self, total_steps: int, log) -> None:
        self.bad.check(self.step, self.last_good, log)  # never a checkpoint after a stopping run of bad steps
        self.mgr.save(self.step, self.state, self.batches, eval_loss=self.eval_loss, final=self.step == total_steps)

    def close(self) -> None:
        self.batches.close()
        self.profiler.close()
        self.stop.restore()
        self.writer.close()
        self.lock.release()


def run_steps(plan: RunPlan, run: OpenRun, log, stop_at_step: int | None, time_limit_s: float | None) -> list[dict]:
    """Train from ``run.step`` to ``train.steps`` (or ``stop_at_step``, a stop signal, ``time_limit_s``): log,
    evaluate and save on their steps; returns the metrics records written.

    The loop never waits for the device on an ordinary step: batches are prepared and put on the devices by a
    thread ahead of the step (``Prefetcher``), skipped steps are counted on the device, and metrics, the skip
    counters and (with several processes) the stop signal are read only at log, evaluation and save steps."""
    config, t = plan.config, plan.config.train
    records = []
    timer, tokens, packed = time.perf_counter(), 0, []
    clock = None  # training seconds: from the end of this call's first (compiling) step
    in_flight = collections.deque()  # the newest steps' outputs: the host runs at most RUN_AHEAD steps ahead
    first = run.step
    while run.step < min(t.steps, stop_at_step or t.steps):
        if time_limit_s is not None and clock is not None and time.perf_counter() - clock >= time_limit_s:
            break
        batch, efficiency = next(run.batches)
        packed.append(efficiency)
        run.state, metrics = plan.step_fn(run.state, batch)
        run.step += 1
        step = run.step
        run.bad.count(step, metrics["skipped"])
        run.profiler.after_step(metrics)
        in_flight.append(metrics["skipped"])
        if len(in_flight) > RUN_AHEAD:
            jax.block_until_ready(in_flight.popleft())
        if clock is None:
            jax.block_until_ready(metrics)
            clock = time.perf_counter()
        tokens += batch["mask"].size
        log_step = step % t.log_every == 0 or step == t.steps
        if log_step:
            values = {k: float(v) for k, v in jax.device_get(metrics).items() if k != "skipped"}
            run.bad.check(step, run.last_good, log)
            elapsed = time.perf_counter() - timer
            record = {
                "step": step,
                **values,
                "tokens_per_sec": tokens / elapsed,
                "packing_efficiency": float(np.mean(packed)),
                "skipped_steps": run.bad.total,
                "seconds": time.perf_counter() - clock,
                "epoch": step * t.batch_size * (config.data.seq_len + 1) / max(plan.epoch_tokens, 1),
            }
            mfu = run.utilisation.mfu(record["tokens_per_sec"])
            if mfu is not None:
                record["mfu"] = mfu
            peak = memory.peak_memory_in_use()
            if peak is not None:
                record["peak_mem_gb"] = peak / memory.GIB
            timer, tokens, packed = time.perf_counter(), 0, []  # the probe and the writes count in the next
            if run.probe is not None:
                record.update({k: float(v) for k, v in jax.device_get(run.probe(run.state["params"], batch)).items()})
            run.writer.write(record)
            records.append(record)
        # A step's records are written before the checkpoint that covers them (and dropped when resuming
        # from an older one), so each is written exactly once across kills.
        run.eval_loss = None
        if (step % t.eval_every == 0) if t.eval_every else (step % t.save_every == 0 or step == t.steps):
            run.bad.check(step, run.last_good, log)
            run.eval_loss = evaluate(plan, run, step)
        if step % t.save_every == 0 and step != t.steps:
            run.save(t.steps, log)
        # One process reads its own flag every step for free; several agree on it at log steps only (a
        # collective there waits for the device anyway), so they all stop at the same step.
        if jax.process_count() == 1:
            signum = run.stop.received
        else:
            signum = faults.agreed_signal(run.stop.received) if log_step else 0
        if signum:  # preempted: save at this step (the data position is that of its batch), exit
            if step not in run.mgr.all_steps():
                run.save(t.steps, log)
            run.mgr.close()
            log(
                f"stopped by {signal.Signals(signum).name}: checkpoint {run.last_good()}; run the same command "
                f"to resume"
            )
            raise SystemExit(faults.exit_code(signum))
    if run.step not in run.mgr.all_steps():
        run.save(t.steps, log)
    run.mgr.close()
    run.bad.check(run.step, run.last_good, log)
    if run.step > first and run.bad.total == run.step - first:
        raise TrainingError(
            f"every one of the {run.step - first} steps of this run had a non-finite loss or gradient and was "
            f"skipped (nothing was learned); check the model settings (e.g. model.norm_eps, "
            f"model.rope_theta) and lower train.lr"
        )
    return records


def evaluate(plan: RunPlan, run: OpenRun, step: int) -> float | None:
    """The held-out loss of the current parameters, written as an eval record (None without held-out data)."""
    if not run.held_out:
        return None
    loss = held_out_loss(lambda b: plan.eval_fn(run.state["params"], b), run.held_out)
    run.writer.write_eval({"step": step, "eval_loss": loss, "eval_perplexity": math.exp(min(loss, 700.0))})
    return loss


RUN_AHEAD = 2  # steps the host may dispatch before the device finishes one (bounds the batches held on it)


def sharded_init(config: Config, state_sharding):
    """The train state's initialisation compiled with ``out_shardings`` (nanodo's pattern): every device computes
    and holds only its shard of the parameters and optimizer moments, never the whole state."""
    return jax.jit(lambda: init_train_state(config)[1], out_shardings=state_sharding)


def compile_steps(graphdef, config: Config, abstract_state, state_sharding, mesh: Mesh, evaluates: bool = True):
    """(train step, evaluation) compiled ahead of time for the run's shapes and shardings, after checking XLA's
    memory estimate of both (``memory.check_step_fits``; the evaluation at one micro-batch beside the resident
    train state): nothing is allocated yet. The evaluation returns ``eval_sums`` of one micro-batch; without
    ``evaluates`` it is None (neither compiled nor in the estimate)."""
    compiled, compiled_eval, step_memory = _compile_steps(
        graphdef, config, abstract_state, state_sharding, mesh, evaluates
    )
    memory.check_step_fits(step_memory, config)
    return compiled, compiled_eval


def _compile_steps(graphdef, config: Config, abstract_state, state_sharding, mesh: Mesh, evaluates: bool = True):
    """``compile_steps`` without the check: (train step, evaluation, their ``memory.StepMemory``)."""
    sharded, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    t = config.train
    micro = t.batch_size // t.accumulation_steps
    batch = memory.abstract_batch(t.batch_size, config.data.seq_len, sharded)
    step = jax.jit(
        make_train_step(graphdef, config),
        in_shardings=(state_sharding, sharded),
        out_shardings=(state_sharding, replicated),
        donate_argnums=0,
    )
    compiled = step.lower(abstract_state, batch).compile()
    evaluate = jax.jit(
        partial(eval_sums, graphdef), in_shardings=(state_sharding["params"], sharded), out_shardings=replicated
    )
    compiled_eval = (
        evaluate.lower(abstract_state["params"], memory.abstract_batch(micro, config.data.seq_len, sharded)).compile()
        if evaluates
        else None
    )
    devices = mesh.shape["data"]
    step_memory = memory.step_memory(
        compiled,
        abstract_state,
        batch,
        micro // devices,
        t.accumulation_steps,
        config.data.seq_len,
        compiled_eval,
        devices if t.shard_params else 1,
    )
    return compiled, compiled_eval, step_memory


def training_tokens(cfg_data, corpus) -> int:
    """Row tokens (inputs and targets) of one pass over the training documents' pieces: an epoch."""
    pieces = document_pieces(corpus, split_documents(len(corpus), cfg_data.eval_fraction)[0], cfg_data.seq_len)
    return int(np.sum(pieces[:, 1] - pieces[:, 0]))


def with_epoch_steps(config: Config, epoch_tokens: int, log) -> Config:
    """``config`` with ``train.steps`` = ceil(train.epochs x the epoch's tokens / the tokens of a global batch);
    rows are packed ~98-100% full (docs/BENCHMARKS.md), so an epoch's last steps may repeat a few pieces."""
    t = config.train
    steps = max(1, math.ceil(t.epochs * epoch_tokens / (t.batch_size * (config.data.seq_len + 1))))
    log(
        f"epochs: {t.epochs:g} x {epoch_tokens:,} tokens / ({t.batch_size} rows x {config.data.seq_len + 1} "
        f"tokens) = {steps:,} steps"
    )
    train = dataclasses.replace(t, steps=steps, save_every=min(t.save_every, steps))
    return dataclasses.replace(config, train=train)


def with_initial_params(state: dict, init_from: Path, log) -> dict:
    """``state`` with the parameters of ``init_from``'s latest checkpoint (fine-tuning: weights only; the step,
    the optimizer and the data start afresh)."""
    shapes = lambda params: jax.tree.map(lambda x: x.shape, params)
    saved = checkpoint.read_run_config(init_from)
    source = abstract_params(saved)  # its layers stacked or not (model.scan_layers)
    if shapes(relayout_layers(source, state["params"], saved.model)) != shapes(state["params"]):
        raise ConfigError(
            f"--init_from '{init_from}' holds a model of other shapes than this run's config.model; "
            f"keep its model settings (drop the model.* overrides that change sizes)"
        )
    params, step = checkpoint.restore_params(init_from, source)
    params = relayout_layers(params, state["params"], saved.model)
    log(f"initialised the weights from {init_from / checkpoint.CHECKPOINT_DIR / str(step)}")
    return {**state, "params": jax.device_put(params, jax.tree.map(lambda x: x.sharding, state["params"]))}

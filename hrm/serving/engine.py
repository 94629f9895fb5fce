"""The serving engine: continuous batching over one decode thread, with every program it runs compiled off that
thread.

``submit`` rows from any thread; the decode thread decodes all active rows a step at a time over a
``DecodeState`` of ``slots`` rows. The rows that arrived since the last step are prefilled together (one padded
batch) and join at the next step, finished rows leave (their slots are reused; with attention they are parked
at KV position 0 meanwhile, so cached attention reads only as far as the longest live row), a row whose client
left is dropped, and each row samples with its own settings and PRNG key, so its output does not depend on its
batch-mates.

Shapes come in buckets, so the programs are few and known in advance: slots and rows admitted together in powers
of two up to ``max_batch``, prompts fed in power-of-two chunks from ``MIN_CHUNK`` to ``prefill_chunk``, one KV
buffer of the model's whole context (allocated once; cached attention's cost follows positions, not the buffer),
and sampling settings always in one layout (penalty columns and ``BIAS_WIDTH`` logit-bias entries; an all-greedy
batch has its own decode program, which skips sampling). ``warmup`` compiles every bucket's programs before
serving. A request whose programs are not compiled yet (no warm-up, or a
logit_bias wider than ``BIAS_WIDTH``) waits while a compile thread builds them, and the other rows keep
decoding: the decode thread never compiles.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import queue
import threading
from collections.abc import Callable

import jax
import numpy as np

from hrm.decoding import TextStream
from hrm.inference import MIN_CACHE, Sampling, SamplingArrays, prefill_chunks, put_rows, row_key, take_rows
from hrm.models.attention import park_rows

MIN_CHUNK = 16  # the shortest prefill chunk (shorter prompts are padded to it: fewer programs)
DEFAULT_PREFILL_CHUNK = 256  # the longest prefill chunk (longer prompts are fed in several)
BIAS_WIDTH = 16  # logit_bias entries a row may carry without a program of its own
DEFAULT_MAX_TOKENS_LIMIT = 4096  # the most new tokens one request may ask for (a server's default)
SSM_CONTEXT = 16384  # a pure SSM's default limit on prompt + new tokens (its state has none)


_COMPILES = {"count": 0, "listening": False}


def compile_count() -> int:
    """Programs this process has built since the first engine started (a compile or a persistent-cache load:
    each is a new program, traced and lowered; ``GET /health``'s ``compiles``)."""
    return _COMPILES["count"]


def _count_compiles() -> None:
    if not _COMPILES["listening"]:
        _COMPILES["listening"] = True

        def listen(name, duration, **kwargs):
            if name == "/jax/core/compile/jaxpr_to_mlir_module_duration":
                _COMPILES["count"] += 1

        jax.monitoring.register_event_duration_secs_listener(listen)


def buckets(largest: int) -> list[int]:
    """Powers of two below ``largest``, then ``largest``: the slot and admitted-row counts."""
    return sorted({1 << i for i in range(largest.bit_length()) if 1 << i < largest} | {largest})


def bucket(n: int, largest: int) -> int:
    """The bucket that holds ``n`` rows (``n`` <= ``largest``)."""
    return min(largest, 1 << (n - 1).bit_length())


@dataclasses.dataclass(eq=False)
class Row:
    """One sequence being generated: its prompt, settings, and where its events go. ``deliver(event)`` is called
    from the decode thread with ``("text", piece)``, then ``("done", finish_reason)`` or ``("error", exception)``."""

    ids: list[int]
    max_tokens: int
    sampling: Sampling
    key_data: np.ndarray
    stream: TextStream
    deliver: Callable
    tokens: int = 0
    cancelled: bool = False


_WAKE = object()  # put on the queue when a compile finishes: waiting rows may join


class BatchEngine:
    """Continuous batching over ``model`` (``hrm.load``'s): at most ``max_batch`` rows decoded together."""

    def __init__(self, model, max_batch: int = 8, prefill_chunk: int = DEFAULT_PREFILL_CHUNK):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if prefill_chunk < MIN_CHUNK or prefill_chunk & (prefill_chunk - 1):
            raise ValueError(f"prefill_chunk must be a power of two >= {MIN_CHUNK}, got {prefill_chunk}")
        self.model, self.max_batch, self.prefill_chunk = model, max_batch, prefill_chunk
        self.generator, self.params = model.generator, model.params
        limit = self.generator.context_limit(self.params)
        self.kv = limit is not None
        self.length = self.generator.cache_length(self.params, limit) if self.kv else MIN_CACHE
        self.pending: queue.Queue = queue.Queue()
        self.waiting: list[Row] = []  # admitted once their programs are compiled
        self.slots: list[Row | None] = []
        self.state = None
        self.steps = 0  # decode steps run (for tests and logs)
        self.max_active = 0  # most rows decoded together
        self.max_prefill = 0  # most rows prefilled together
        self.cancelled = 0  # rows dropped because their client left
        self.ready: set[tuple] = set()  # programs compiled (warm-up or the compile thread)
        self._compiling: dict[tuple, concurrent.futures.Future] = {}
        self._compiler = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="hrm-compile")
        self._park = jax.jit(park_rows, donate_argnums=(0,))
        self._gather = jax.jit(take_rows)
        self._insert = jax.jit(put_rows, donate_argnums=(0,))
        _count_compiles()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="hrm-decode", daemon=True)

    # --- life cycle -----------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.pending.put(None)
        self._thread.join(timeout=10)
        self._compiler.shutdown(wait=False, cancel_futures=True)

    def submit(self, row: Row) -> None:
        self.pending.put(row)

    @property
    def active(self) -> int:
        return sum(r is not None for r in self.slots)

    # --- programs ---------------------------------------------------------------------------------------------

    def programs(self) -> list[tuple]:
        """Every program of the buckets, in the order ``warmup`` builds them."""
        sizes = buckets(self.max_batch)
        chunks = [c for c in (1 << i for i in range(self.prefill_chunk.bit_length())) if c >= MIN_CHUNK]
        keys = [("prefill", r, c) for r in sizes for c in chunks]
        keys += [("decode", s, greedy, BIAS_WIDTH) for s in sizes for greedy in (True, False)]
        keys += [("gather", a, b) for a in sizes for b in sizes]
        keys += [("insert", s, r) for s in sizes for r in sizes if r <= s]
        return keys + ([("park", s) for s in sizes] if self.kv else [])

    def warmup(self, log=lambda line: None) -> int:
        """Compile every bucket's programs now (before serving); returns how many were built."""
        keys = [k for k in self.programs() if k not in self.ready]
        row_key(0, 1)  # a request's PRNG key is made eagerly (its few programs are built here too)
        for i, key in enumerate(keys):
            self._build(key)
            if (i + 1) % 10 == 0 or i + 1 == len(keys):
                log(f"warm-up: {i + 1}/{len(keys)} programs")
        return len(keys)

    def _rows(self, n: int, length: int = 1):
        """A state of ``n`` rows that read ``length`` tokens (a warm-up input)."""
        return self.generator.start_rows(
            self.params, [[0] * length] * n, self.length, np.zeros((n, 2), np.uint32), chunks=self._chunks
        )

    @property
    def _chunks(self) -> tuple[int, int]:
        return self.prefill_chunk, MIN_CHUNK

    def _settings(self, rows: list[Sampling], width: int = BIAS_WIDTH) -> SamplingArrays:
        return SamplingArrays.of(rows, penalties=True, bias_width=width)

    def _build(self, key: tuple) -> None:
        """Run ``key``'s program once on inputs of its shapes (so it is compiled, and cached by jax)."""
        kind, *shape = key
        if kind == "prefill":
            rows, chunk = shape
            self._rows(rows, chunk)
        elif kind == "decode":
            slots, greedy, width = shape
            settings = self._settings([Sampling(0.0 if greedy else 1.0)] * slots, width)
            self.generator.decode(self.params, self._rows(slots), settings, 1, greedy_only=greedy)
        elif kind == "gather":
            before, after = shape
            self._gather(self._rows(before), np.zeros(after, np.int32))
        elif kind == "insert":
            slots, rows = shape
            self._insert(self._rows(slots), np.zeros(rows, np.int32), self._rows(rows))
        elif kind == "park":
            self._park(self._rows(shape[0]).cache, np.zeros(shape[0], bool))
        self.ready.add(key)

    def _missing(self, keys: list[tuple]) -> list[tuple]:
        """The programs of ``keys`` not compiled yet; each is queued on the compile thread (once). A compile that
        failed raises its error (the rows that need it fail, not wait for ever)."""
        missing = [k for k in keys if k not in self.ready]
        for key in missing:
            if key in self._compiling and self._compiling[key].done() and self._compiling[key].exception():
                raise self._compiling[key].exception()
            if key not in self._compiling:
                future = self._compiler.submit(self._build, key)
                future.add_done_callback(lambda _: self.pending.put(_WAKE))
                self._compiling[key] = future
        return missing

    def _decode_key(self, slots: int, rows: list[Row | None]) -> tuple:
        live = [r.sampling for r in rows if r is not None]
        width = max([BIAS_WIDTH] + [len(s.logit_bias) for s in live])
        greedy = all(s.temperature == 0 for s in live)  # a greedy batch skips sampling (most of a small step)
        return ("decode", slots, greedy, 1 << (width - 1).bit_length())

    def _admission(self, rows: list[Row]) -> tuple[list[tuple], int]:
        """(programs, slots): what admitting ``rows`` together runs, and the slot count after it."""
        busy = self.active
        slots = max(len(self.slots), bucket(busy + len(rows), self.max_batch))
        admitted = bucket(len(rows), self.max_batch)
        chunks = prefill_chunks(max(len(r.ids) for r in rows), *self._chunks)
        keys = [("prefill", admitted, c) for c in sorted(set(chunks))]
        if self.state is None:
            keys.append(("gather", admitted, slots))
        else:
            keys += ([("gather", len(self.slots), slots)] if slots != len(self.slots) else []) + [
                ("insert", slots, admitted)
            ]
        keys.append(self._decode_key(slots, [r for r in self.slots if r is not None] + rows))
        return keys + ([("park", slots)] if self.kv else []), slots

    # --- the decode thread ------------------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            room = self.slots.count(None) + self.max_batch - len(self.slots)
            rows, self.waiting = self.waiting[:room], self.waiting[room:]
            rows = [r for r in rows if not self._dropped(r)]
            try:  # everything waiting (up to the free slots) joins now, prefilled together
                while len(rows) < room:
                    row = self.pending.get(block=not (self.active or rows or self.waiting), timeout=None)
                    if row is None:
                        break
                    if row is not _WAKE and self._admissible(row):
                        rows.append(row)
            except queue.Empty:
                pass
            if rows:
                self._join(rows)
            if self._stop.is_set():
                break
            if not self.active:
                if self.waiting:  # nothing to decode: sleep until a compile finishes or a request arrives
                    self._wait()
                continue
            self._step()

    def _wait(self) -> None:
        try:
            row = self.pending.get(timeout=1.0)
        except queue.Empty:
            return
        if row is None:
            self._stop.set()
        elif row is not _WAKE and self._admissible(row):
            self.waiting.append(row)

    def _dropped(self, row: Row) -> bool:
        if row.cancelled:
            self.cancelled += 1
        return row.cancelled

    def _admissible(self, row: Row) -> bool:
        """Whether ``row`` can be prefilled; if not, its request gets the error and the others go on."""
        if self._dropped(row):
            return False
        try:
            self.generator.check_ids(self.params, row.ids)
            self.generator.cache_length(self.params, len(row.ids) + row.max_tokens)
            return True
        except Exception as error:
            _fail(row, error)
            return False

    def _join(self, rows: list[Row]) -> None:
        """Admit ``rows`` now if their programs are compiled, else let them wait for the compile thread."""
        try:
            if self._missing(self._admission(rows)[0]):
                # the rows whose own programs are ready may still join (one slow shape does not hold the rest)
                ready = [r for r in rows if not self._missing(self._admission([r])[0])]
                if ready and not self._missing(self._admission(ready)[0]):
                    self.waiting += [r for r in rows if r not in ready]
                    rows = ready
                else:
                    self.waiting += rows
                    return
            self._admit(rows)
        except Exception as error:  # these requests fail, the server keeps serving
            for row in rows:
                _fail(row, error)

    def _admit(self, rows: list[Row]) -> None:
        """Prefill ``rows`` as one batch (padded to a bucket with one-token rows) and put them in free slots."""
        _, slots = self._admission(rows)
        admitted = bucket(len(rows), self.max_batch)
        self.max_prefill = max(self.max_prefill, len(rows))
        prompts = [r.ids for r in rows] + [[0]] * (admitted - len(rows))
        keys = np.zeros((admitted, 2), np.uint32)
        keys[: len(rows)] = [r.key_data for r in rows]
        new = self.generator.start_rows(self.params, prompts, self.length, keys, chunks=self._chunks)
        if self.state is None:
            self.state = self._gather(new, np.minimum(np.arange(slots), len(rows) - 1).astype(np.int32))
            self.slots = list(rows) + [None] * (slots - len(rows))
            return
        if slots != len(self.slots):
            self.state = self._gather(self.state, np.minimum(np.arange(slots), len(self.slots) - 1).astype(np.int32))
            self.slots += [None] * (slots - len(self.slots))
        free = [i for i, r in enumerate(self.slots) if r is None][: len(rows)]
        for slot, row in zip(free, rows):
            self.slots[slot] = row
        index = np.full(admitted, slots, np.int32)  # the padding rows' index is past the end: dropped
        index[: len(rows)] = free
        self.state = self._insert(self.state, index, new)

    def _step(self) -> None:
        slots = len(self.slots)
        _, _, greedy, width = self._decode_key(slots, self.slots)
        settings = self._settings([r.sampling if r else Sampling(0.0) for r in self.slots], width)
        self.max_active = max(self.max_active, self.active)
        try:
            if self.kv and None in self.slots:  # free slots stay at position 0
                idle = np.asarray([r is None for r in self.slots])
                self.state = self.state._replace(cache=self._park(self.state.cache, idle))
            tokens, self.state = self.generator.decode(self.params, self.state, settings, 1, greedy_only=greedy)
        except Exception as error:  # fail the rows in flight, keep serving
            for row in filter(None, self.slots):
                _fail(row, error)
            self.slots, self.state = [], None
            return
        self.steps += 1
        for slot, row in enumerate(self.slots):
            if row is None:
                continue
            row.tokens += 1
            if piece := row.stream.add(tokens[slot]):
                _deliver(row, ("text", piece))
            if row.cancelled:
                self.cancelled += 1
                self.slots[slot] = None
            elif row.stream.finished or row.tokens >= row.max_tokens:
                if piece := row.stream.flush():
                    _deliver(row, ("text", piece))
                _deliver(row, ("done", row.stream.finish_reason or "length"))
                self.slots[slot] = None
        self._shrink()

    def _shrink(self) -> None:
        """With nothing waiting to join, move the live rows into the smallest slot bucket that holds them (fewer
        rows decoded per step); with none left, drop the state."""
        if not self.active:
            self.slots, self.state = [], None
            return
        target = bucket(self.active, self.max_batch)
        if target >= len(self.slots) or self.waiting or not self.pending.empty():
            return
        live = [i for i, r in enumerate(self.slots) if r is not None]
        rows = [self.slots[i] for i in live]
        try:
            if self._missing([("gather", len(self.slots), target), self._decode_key(target, rows)]):
                return
        except Exception:  # a program that failed to compile: keep the slots as they are
            return
        index = np.asarray(live + [live[0]] * (target - len(live)), np.int32)
        self.state = self._gather(self.state, index)
        self.slots = rows + [None] * (target - len(rows))


def _fail(row: Row, error: Exception) -> None:
    """End ``row``'s request with the error (the engine keeps serving)."""
    _deliver(row, ("error", error))


def _deliver(row: Row, event) -> None:
    try:
        row.deliver(event)
    except RuntimeError:  # the request's event loop is gone (server shutting down)
        row.cancelled = True

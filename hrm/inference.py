"""Recurrent decoding: prefill each prompt once, then O(1) work per generated token (O(current length) in
attention layers).

Prompts are prefilled as padded batches. A prompt is fed in chunks of ``MAX_CHUNK`` tokens and a last chunk
right-padded to a power of two (``prefill_chunks``); prompts with the same chunks form one batch, so prefill
compiles once per (rows, chunk length), never per prompt length, and pads a prompt by less than its last
chunk's length. The model is told each row's real length in a chunk (``lengths``), and padding changes no
recurrent state or KV position, so each row ends as its prompt alone would (tests/test_inference.py).
``decode`` carries the ``DecodeState`` through a ``lax.scan`` of decode steps, so generating N tokens is one
compiled loop (``stream`` runs it in chunks to print tokens as they arrive). The state passed to ``decode`` is
donated: its buffers are updated in place, so a call costs what its steps read, not a copy of the whole KV
buffer.

Sampling settings are per row (``Sampling``), as are the PRNG keys (a row's key is folded with its own
step count), so a row's tokens never depend on the other rows of its batch: ``hrm.serving.engine`` adds and
removes rows between steps (continuous batching) on the same state.

Attention families keep a KV buffer (``hrm.models.attention``): it is sized to the next power of two of
what a request needs (prompt + new tokens) and grown the same way, up to ``model.max_cache_len``; a
request that cannot fit is refused up front (``SamplingError`` naming the limit), never decoded wrongly.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hrm.errors import UserError
from hrm.models.attention import kv_caches, resize_kv_caches

MAX_CHUNK = 1024  # the longest prefill chunk (longer prompts are several chunks)
MIN_CACHE = 64  # the smallest KV buffer allocated
GENERATE_CHUNK = 64  # generate_ids' most decode steps per compiled call (fewer: the next power of two)


class SamplingError(UserError):
    """Impossible sampling settings or inputs; the message names the setting."""


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How one row picks its tokens: ``temperature`` 0 is greedy; ``top_k``/``top_p``/``min_p`` filter
    (None: off); ``repetition_penalty`` > 1 divides positive logits of tokens already in the row (prompt or
    output) and multiplies negative ones (CTRL, arXiv:1909.05858 section 4.1). OpenAI's penalties subtract
    ``frequency_penalty`` x (times the token was generated) + ``presence_penalty`` x (generated at all) from
    its logit, and ``logit_bias`` ((token id, bias), ...) adds to a token's logit, greedy decoding included."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()

    def check(self) -> Sampling:
        finite = lambda x: x is None or math.isfinite(x)
        for name in ("temperature", "top_p", "min_p", "repetition_penalty"):
            if not finite(getattr(self, name)):
                raise SamplingError(f"{name} must be a finite number, got {getattr(self, name)}")
        if self.temperature < 0:
            raise SamplingError(f"temperature must be >= 0 (0 is greedy), got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise SamplingError(f"top_k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise SamplingError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.min_p is not None and not 0 <= self.min_p < 1:
            raise SamplingError(f"min_p must be in [0, 1), got {self.min_p}")
        if self.repetition_penalty <= 0:
            raise SamplingError(f"repetition_penalty must be > 0 (1 is off), got {self.repetition_penalty}")
        for name in ("frequency_penalty", "presence_penalty"):
            if not (math.isfinite(getattr(self, name)) and -2 <= getattr(self, name) <= 2):
                raise SamplingError(f"{name} must be in [-2, 2] (0 is off), got {getattr(self, name)}")
        for token, bias in self.logit_bias:
            if not (math.isfinite(bias) and -100 <= bias <= 100):
                raise SamplingError(f"logit_bias values must be in [-100, 100], got {bias} for token {token}")
        return self


def check_request(max_new_tokens, seed) -> None:
    """``max_new_tokens`` a count and ``seed`` a seed (``check_seed``: the server's rule too)."""
    if not isinstance(max_new_tokens, (int, np.integer)) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
        raise SamplingError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    check_seed(seed)


def token_array(token_ids) -> np.ndarray:
    """Token ids (a list, nested list or array of integers) as an int64 array; floats, text and ragged rows are
    a ``SamplingError`` (a cast would silently truncate 1.7 to 1)."""
    try:
        tokens = np.asarray(token_ids)
    except ValueError:
        raise SamplingError("token ids must be a rectangular list of integers (rows of equal length)") from None
    if tokens.size and not np.issubdtype(tokens.dtype, np.integer):
        raise SamplingError(
            f"token ids must be integers, got {tokens.dtype} values such as {tokens.ravel()[0].item()!r}"
        )
    return tokens.astype(np.int64)


class SamplingArrays(NamedTuple):
    """``Sampling`` of each row as (batch,) arrays; 0 switches top_k and min_p off, 1 top_p and the penalty.
    The OpenAI penalties and the logit bias are None unless a row uses them (a separate compiled program);
    the bias is (batch, width) token ids and values, width a power of two, padded with zero biases."""

    temperature: jax.Array
    top_k: jax.Array
    top_p: jax.Array
    min_p: jax.Array
    penalty: jax.Array
    frequency: jax.Array | None = None
    presence: jax.Array | None = None
    bias_ids: jax.Array | None = None
    bias_values: jax.Array | None = None

    @classmethod
    def of(cls, rows: Sequence[Sampling], penalties: bool = False, bias_width: int = 0) -> SamplingArrays:
        """``penalties``: carry the penalty columns even when no row uses them; ``bias_width``: the least bias
        width. A server passes both so that its rows' settings never change which program decodes."""
        column = lambda get, dtype: jnp.asarray([get(r) for r in rows], dtype)
        penalised = penalties or any(r.frequency_penalty or r.presence_penalty for r in rows)
        width = max([bias_width] + [len(r.logit_bias) for r in rows])
        bias_ids = bias_values = None
        if width:
            width = 1 << (width - 1).bit_length()
            bias_ids, bias_values = np.zeros((len(rows), width), np.int32), np.zeros((len(rows), width), np.float32)
            for i, r in enumerate(rows):
                for j, (token, bias) in enumerate(r.logit_bias):
                    bias_ids[i, j], bias_values[i, j] = token, bias
            bias_ids, bias_values = jnp.asarray(bias_ids), jnp.asarray(bias_values)
        return cls(
            column(lambda r: r.temperature, jnp.float32),
            column(lambda r: r.top_k or 0, jnp.int32),
            column(lambda r: r.top_p or 1.0, jnp.float32),
            column(lambda r: r.min_p or 0.0, jnp.float32),
            column(lambda r: r.repetition_penalty, jnp.float32),
            column(lambda r: r.frequency_penalty, jnp.float32) if penalised else None,
            column(lambda r: r.presence_penalty, jnp.float32) if penalised else None,
            bias_ids,
            bias_values,
        )


def sample_logits(logits, keys, settings: SamplingArrays, seen=None, greedy_only: bool = False, counts=None):
    """Next tokens (batch,) from logits (batch, vocab) with each row's settings and PRNG key (batch,);
    ``counts`` (batch, vocab): how often each token was generated (the OpenAI penalties).

    Filters apply in the order of Hugging Face's samplers: temperature, top-k, top-p over what top-k kept,
    min-p (a token needs at least min_p times the top token's probability). The vocabulary is sorted only when
    a row of the batch filters."""
    if seen is not None:
        p = settings.penalty[:, None]
        logits = jnp.where(seen & (p != 1), jnp.where(logits > 0, logits / p, logits * p), logits)
    if settings.frequency is not None and counts is not None:
        logits = logits - settings.frequency[:, None] * counts - settings.presence[:, None] * (counts > 0)
    if settings.bias_ids is not None:
        logits = logits.at[jnp.arange(logits.shape[0])[:, None], settings.bias_ids].add(settings.bias_values)
    greedy = jnp.argmax(logits, axis=-1)
    if greedy_only:
        return greedy
    t = settings.temperature[:, None]
    scaled = logits / jnp.where(t > 0, t, 1.0)
    vocab = logits.shape[-1]

    def filter_rows(scaled):
        descending = -jnp.sort(-scaled, axis=-1)
        k = jnp.where(settings.top_k > 0, jnp.minimum(settings.top_k, vocab), vocab)[:, None]
        descending = jnp.where(jnp.arange(vocab) < k, descending, -jnp.inf)
        cumulative = jnp.cumsum(jax.nn.softmax(descending, axis=-1), axis=-1)
        # keep the smallest prefix whose mass reaches top_p (the top token always stays)
        last = jnp.minimum(jnp.sum(cumulative < settings.top_p[:, None], axis=-1, keepdims=True), k - 1)
        threshold = jnp.maximum(
            jnp.take_along_axis(descending, last, axis=-1), descending[:, :1] + jnp.log(settings.min_p[:, None])
        )
        return jnp.where(scaled >= threshold, scaled, -jnp.inf)

    filtering = jnp.any((settings.top_k > 0) | (settings.top_p < 1) | (settings.min_p > 0))
    filtered = jax.lax.cond(filtering, filter_rows, lambda scaled: scaled, scaled)
    sampled = jax.vmap(lambda key, row: jax.random.categorical(key, row))(keys, filtered)
    return jnp.where(settings.temperature == 0, greedy, sampled)


class DecodeState(NamedTuple):
    """What decoding carries per row (all batch-first, so rows concatenate and are replaced one by one)."""

    logits: jax.Array  # (batch, vocab) float32: the next token's logits
    cache: object  # the model's decode cache after every token fed so far
    seen: jax.Array  # (batch, vocab) bool: tokens of the prompt and the output (repetition penalty)
    counts: jax.Array  # (batch, vocab) int32: times each token was generated (the OpenAI penalties)
    keys: jax.Array  # (batch, 2) uint32: each row's PRNG key data
    steps: jax.Array  # (batch,) int32: tokens sampled so far


SEED_RANGE = (-(2**63), 2**63)  # what a PRNG seed may be (a signed 64-bit integer)


def check_seed(seed) -> int:
    """``seed`` as an int; a SamplingError for anything but an integer in SEED_RANGE."""
    low, high = SEED_RANGE
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not low <= seed < high:
        raise SamplingError(f"seed must be an integer in [-2**63, 2**63), got {seed!r}")
    return int(seed)


def row_key(seed: int, row: int = 0) -> jax.Array:
    """The (2,) uint32 key data of a row: the seed's key folded with the row's index."""
    seed = check_seed(seed)
    return jax.random.key_data(jax.random.fold_in(jax.random.key(seed), row))


def prefill_chunks(length: int, largest: int = MAX_CHUNK, smallest: int = 1) -> list[int]:
    """The chunk lengths that feed a prompt of ``length`` tokens: whole ``largest``s (a power of two), then the
    rest padded to the next power of two, at least ``smallest`` (300 → [512], 2049 → [1024, 1024, 1]); prompts
    with the same chunks share a batch."""
    rest = length % largest
    return [largest] * (length // largest) + ([max(smallest, 1 << (rest - 1).bit_length())] if rest else [])


def padded_chunks(
    prompts: Sequence[Sequence[int]], largest: int = MAX_CHUNK, smallest: int = 1
) -> Iterator[tuple[jax.Array, np.ndarray]]:
    """``prompts`` right-padded with 0 and cut into the longest one's ``prefill_chunks``: (tokens (batch, n),
    real (batch,): each row's real tokens in the chunk) per chunk."""
    lengths = np.array([len(p) for p in prompts])
    chunks = prefill_chunks(int(lengths.max()), largest, smallest)
    tokens = np.zeros((len(prompts), sum(chunks)), np.int32)
    for row, ids in enumerate(prompts):
        tokens[row, : len(ids)] = ids
    start = 0
    for n in chunks:
        yield jnp.asarray(tokens[:, start : start + n]), np.clip(lengths - start, 0, n)
        start += n


def feed(model, tokens, cache, lengths):
    """Feed ``tokens`` (batch, length) to ``model`` after ``cache``, of which each row's first ``lengths`` (batch,)
    are real (the rest right padding); returns the logits (batch, vocab) after each row's last real token (the
    head reads only those positions) and the new cache. A row with no real token returns garbage logits."""
    features, cache = model.features(tokens, cache, lengths=lengths)
    last = features[jnp.arange(tokens.shape[0]), jnp.maximum(lengths - 1, 0)]
    return model.logits(last), cache


def stack_rows(states: Sequence[DecodeState]) -> DecodeState:
    return jax.tree.map(lambda *rows: jnp.concatenate(rows), *states)


def take_rows(state: DecodeState, index) -> DecodeState:
    """Rows ``index`` (an int array) of ``state``, in that order (a row may repeat)."""
    return jax.tree.map(lambda a: a[index], state)


def put_rows(state: DecodeState, index, rows: DecodeState) -> DecodeState:
    """``state`` with row ``index[i]`` replaced by row i of ``rows``; an index past the end drops its row."""
    return jax.tree.map(lambda a, r: a.at[index].set(r, mode="drop"), state, rows)


class Generator:
    """Compiled prefill and decode loops for one model structure (``graphdef``)."""

    def __init__(self, graphdef):
        self.graphdef = graphdef
        self._cfg = None
        self._has_kv = None
        self._extend = jax.jit(self._extend_fn, donate_argnums=(2,))  # the cache is updated in place
        self._empty = jax.jit(self._empty_fn, static_argnums=(1, 2))
        self._decode = jax.jit(self._decode_fn, static_argnums=(3, 4), donate_argnums=(1,))
        self._decode_keeping_input = jax.jit(self._decode_fn, static_argnums=(3, 4))

    # --- the compiled pieces ------------------------------------------------------------------------------

    def _empty_fn(self, params, batch: int, length: int):
        model = nnx.merge(self.graphdef, params)
        return resize_kv_caches(model.init_cache(batch), length)

    def _extend_fn(self, params, tokens, cache, lengths):
        return feed(nnx.merge(self.graphdef, params), tokens, cache, lengths)

    def _decode_fn(self, params, state: DecodeState, settings: SamplingArrays, steps: int, greedy_only: bool):
        """Sample ``steps`` tokens (batch, steps), feeding each back through the recurrent cache.

        The model is merged (copied) inside the loop body: nnx transforms in the model (recursive_ssm's
        ``nnx.scan``) reject modules whose variables belong to an outer trace."""
        rows = jnp.arange(state.logits.shape[0])

        def step(state, _):
            keys = jax.vmap(lambda k, n: jax.random.fold_in(jax.random.wrap_key_data(k), n))(state.keys, state.steps)
            token = sample_logits(state.logits, keys, settings, state.seen, greedy_only, state.counts)
            model = nnx.merge(self.graphdef, params, copy=True)
            logits, cache = model(token[:, None], state.cache)
            state = DecodeState(
                logits[:, -1],
                cache,
                state.seen.at[rows, token].set(True),
                state.counts.at[rows, token].add(1),
                state.keys,
                state.steps + 1,
            )
            return state, token

        state, tokens = jax.lax.scan(step, state, None, length=steps)
        return tokens.T, state

    # --- limits -------------------------------------------------------------------------------------------

    def _inspect(self, params) -> None:
        if self._cfg is None:
            model = nnx.merge(self.graphdef, params)
            self._cfg = model.cfg
            cache = jax.eval_shape(lambda: model.init_cache(1))
            self._has_kv = bool(kv_caches(cache))

    def context_limit(self, params) -> int | None:
        """The most positions (prompt + new tokens) a row may reach: ``model.max_cache_len`` for models with
        attention, None (unbounded) for pure SSMs."""
        self._inspect(params)
        return self._cfg.max_cache_len if self._has_kv else None

    def check_ids(self, params, ids) -> None:
        """A clear error for token ids outside the vocabulary (an embedding lookup would return NaN)."""
        self._inspect(params)
        vocab, ids = self._cfg.token_vocab_size or self._cfg.vocab_size, np.asarray(ids, np.int64).ravel()
        bad = ids[(ids < 0) | (ids >= vocab)]
        if bad.size:
            raise SamplingError(
                f"token ids must be in [0, {vocab}) (the model's token ids); got {bad[0]}"
                + (f" and {bad.size - 1} more" if bad.size > 1 else "")
            )

    def cache_length(self, params, needed: int) -> int:
        """The KV buffer for ``needed`` positions: the next power of two (at least MIN_CACHE, at most the
        limit); a request past ``model.max_cache_len`` is refused."""
        limit = self.context_limit(params)
        if limit is None:
            return MIN_CACHE  # unused: no KV buffer
        if needed > limit:
            raise SamplingError(
                f"the prompt plus new tokens need {needed} positions, more than "
                f"model.max_cache_len ({limit}) of this attention model; shorten them or "
                f"raise the limit (--max_context)"
            )
        return min(max(MIN_CACHE, 1 << (needed - 1).bit_length()), limit)

    # --- prefill and decode -------------------------------------------------------------------------------

    def prefill(self, params, prompts: Sequence[Sequence[int]], cache, logits, chunks=(MAX_CHUNK, 1)):
        """(logits (batch, vocab), cache) after feeding ``prompts[i]`` to row i of ``cache``, all rows at once:
        right-padded, in the longest prompt's ``prefill_chunks`` (``chunks``: their largest and smallest length).
        ``logits`` are kept for a row whose prompt is empty (a saved state continued as it is)."""
        for tokens, real in padded_chunks(prompts, *chunks):
            chunk_logits, cache = self._extend(params, tokens, cache, jnp.asarray(real, jnp.int32))
            logits = jnp.where(jnp.asarray(real > 0)[:, None], chunk_logits, logits)
        return logits, cache

    def start_rows(
        self,
        params,
        prompts: Sequence[Sequence[int]],
        length: int,
        key_data,
        prefix: DecodeState | None = None,
        chunks=(MAX_CHUNK, 1),
    ) -> DecodeState:
        """A ``DecodeState`` whose row i has read ``prompts[i]`` (after ``prefix``, a one-row saved state, when
        given; it is copied, never consumed), with KV buffers of ``length`` positions and PRNG key data
        ``key_data`` (batch, 2); the prompts are prefilled as one padded batch in ``chunks`` (``prefill``)."""
        for ids in prompts:
            self.check_ids(params, ids)
        batch, vocab = len(prompts), self._cfg.vocab_size
        if prefix is None:
            if not all(prompts):
                raise SamplingError("every prompt needs at least one token")
            cache = self._empty(params, batch, length)
            logits, seen = jnp.zeros((batch, vocab), jnp.float32), np.zeros((batch, vocab), bool)
        else:
            rows = lambda a: jnp.repeat(a, batch, axis=0)  # a new array, even for one row
            cache = resize_kv_caches(jax.tree.map(rows, prefix.cache), length)
            logits, seen = rows(prefix.logits), np.repeat(np.asarray(prefix.seen), batch, axis=0)
        logits, cache = self.prefill(params, prompts, cache, logits, chunks)
        # marked on the host: a device scatter would compile once per total prompt length
        rows_of_ids = np.repeat(np.arange(batch), [len(ids) for ids in prompts])
        seen[rows_of_ids, np.concatenate([np.asarray(ids, np.int32) for ids in prompts])] = True
        return DecodeState(
            logits,
            cache,
            jnp.asarray(seen),
            jnp.zeros((batch, vocab), jnp.int32),
            jnp.asarray(key_data, jnp.uint32).reshape(batch, 2),
            jnp.zeros((batch,), jnp.int32),
        )

    def decode(
        self,
        params,
        state: DecodeState,
        settings: SamplingArrays,
        steps: int,
        keep_input: bool = False,
        greedy_only: bool | None = None,
    ):
        """(tokens (batch, steps) numpy, state after them). ``state`` is consumed (donated: the KV buffers are
        updated in place) unless ``keep_input``, which copies it instead (a chat that may step back).
        ``greedy_only``: skip sampling (default: when every row is greedy; False keeps one program for both)."""
        if greedy_only is None:
            greedy_only = bool(np.all(np.asarray(settings.temperature) == 0))
        run = self._decode_keeping_input if keep_input else self._decode
        tokens, state = run(params, state, settings, steps, greedy_only)
        return np.asarray(tokens), state

    def stream(
        self,
        params,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        sampling: Sampling,
        seed: int = 0,
        chunk: int = 16,
        prefix: DecodeState | None = None,
    ) -> Iterator[np.ndarray]:
        """Token arrays (batch, <= chunk) as they are decoded, ``max_new_tokens`` per row in all."""
        sampling.check()
        check_request(max_new_tokens, seed)
        if max_new_tokens == 0 or not prompts:
            return
        state = self.start(params, prompts, max_new_tokens, seed, prefix)
        settings = SamplingArrays.of([sampling] * len(prompts))
        # steps per call in powers of two: one compiled loop per bucket, not per max_new_tokens
        steps, done = min(chunk, 1 << (max_new_tokens - 1).bit_length()), 0
        while done < max_new_tokens:  # a last chunk's extra steps write past the buffer: dropped, unread
            tokens, state = self.decode(params, state, settings, steps)
            yield tokens[:, : max_new_tokens - done]
            done += steps

    def start(
        self,
        params,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        seed: int = 0,
        prefix: DecodeState | None = None,
    ) -> DecodeState:
        """The state after each prompt (after ``prefix`` when given), with room for ``max_new_tokens``; row i
        samples with ``row_key(seed, i)``. Prompts with the same ``prefill_chunks`` are prefilled as one batch."""
        before = 0 if prefix is None else kv_positions(prefix)
        length = self.cache_length(params, before + max(len(p) for p in prompts) + max_new_tokens)
        groups: dict[tuple[int, ...], list[int]] = {}
        for row, ids in enumerate(prompts):
            groups.setdefault(tuple(prefill_chunks(len(ids))), []).append(row)
        order = [row for rows in groups.values() for row in rows]
        state = stack_rows(
            [
                self.start_rows(params, [prompts[r] for r in rows], length, [row_key(seed, r) for r in rows], prefix)
                for rows in groups.values()
            ]
        )
        return state if order == sorted(order) else jax.tree.map(lambda a: a[np.argsort(order)], state)

    def generate_ids(
        self,
        params,
        prompts: list[list[int]],
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int = 0,
        **sampling,
    ) -> list[list[int]]:
        """New token ids for each prompt, decoded together: up to ``GENERATE_CHUNK`` steps per call of a compiled
        loop whose length is a power of two, so any ``max_new_tokens`` reuses one of a few programs."""
        chunks = list(
            self.stream(
                params,
                prompts,
                max_new_tokens,
                Sampling(temperature, top_k, top_p, **sampling),
                seed,
                chunk=GENERATE_CHUNK,
            )
        )
        if not chunks:
            return [[] for _ in prompts]
        return np.concatenate(chunks, axis=1).tolist()


def kv_positions(state: DecodeState) -> int:
    """Positions a (one-row) state has consumed, read from its KV cache (0 for a pure SSM's state)."""
    kvs = kv_caches(state.cache)
    return int(jnp.max(kvs[0].pos)) if kvs else 0

"""Text on top of ``hrm.inference``: streamed text with stop strings, saved decode states (prefix caching)
and the decode benchmark. Used by ``hrm.sample``, ``hrm.chat`` and ``hrm.serving``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from hrm.inference import DecodeState, Sampling, SamplingArrays, SamplingError

STATE_FORMAT = "hrm-decode-state-1"


class TextStream:
    """The text of one row's tokens as they arrive: ends at the end-of-text token (when ``eos_id`` is given)
    or before the first stop string; ``add`` returns only text that can no longer change (a possible start
    of a stop string and an incomplete UTF-8 character are held back).

    Detokenisation is incremental (as vLLM's): each ``add`` decodes only the tokens since the last complete
    character, with a few tokens before them as context (a tokenizer may decode a token differently at the start
    of a text), and stop strings are searched only where one could end, so a token costs the same late in a long
    text as early."""

    def __init__(self, tokenizer, stop: list[str] | tuple[str, ...] = (), eos_id: int | None = None):
        self.tokenizer, self.stop, self.eos_id = tokenizer, [s for s in stop if s], eos_id
        self.ids: list[int] = []
        self.decoded = ""  # the text of ids[:read]
        self.prefix, self.read = 0, 0  # ids[prefix:read]: the context the next tokens are decoded after
        self.emitted = ""
        self.finish_reason: str | None = None  # "stop" (eos or a stop string) once finished
        self._longest_stop = max((len(s) for s in self.stop), default=0)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def _decode_new(self) -> str:
        """The text of ids[read:] (it may end in an incomplete character)."""
        before = self.tokenizer.decode(self.ids[self.prefix : self.read])
        return self.tokenizer.decode(self.ids[self.prefix :])[len(before) :]

    def add(self, tokens) -> str:
        if self.finished:
            return ""
        for token in map(int, tokens):
            if token == self.eos_id:
                self.finish_reason = "stop"
                break
            self.ids.append(token)
        new = self._decode_new()
        if new and not new.endswith("\ufffd"):  # complete characters: the context moves on
            self.decoded += new
            self.prefix, self.read, new = max(self.read, len(self.ids) - 4), len(self.ids), ""
        base = max(0, len(self.emitted) - self._longest_stop)  # a stop string not seen yet ends past here
        tail = self.decoded[base:] + new
        hits = [i for i in (tail.find(s) for s in self.stop) if i >= 0]
        if hits:
            tail, self.finish_reason = tail[: min(hits)], "stop"
        elif not self.finished:
            hold = max([k for s in self.stop for k in range(1, len(s)) if tail.endswith(s[:k])], default=0)
            tail = tail[: len(tail) - hold].rstrip("\ufffd")
        new = tail[len(self.emitted) - base :]
        self.emitted += new
        return new

    def flush(self) -> str:
        """The held-back rest once the row ran out of tokens (a partial stop string or character stays text)."""
        if self.finished:
            return ""
        new = (self.decoded + self._decode_new())[len(self.emitted) :]
        self.emitted += new
        return new

    @property
    def text(self) -> str:
        return self.emitted


def check_stop(stop) -> list[str]:
    """Stop strings as a list: one string or several, each non-empty (an empty one would stop before any
    text; ``TextStream`` would ignore it)."""
    stop = [stop] if isinstance(stop, str) else list(stop or ())
    if not all(isinstance(s, str) and s for s in stop):
        raise SamplingError(f"stop strings must be non-empty text, got {stop!r:.80}")
    return stop


def text_streams(
    model,
    prompts: list[str],
    max_new_tokens: int,
    sampling: Sampling,
    seed: int = 0,
    stop=(),
    stop_at_eos: bool = True,
    chunk: int = 16,
    prefix: DecodeState | None = None,
):
    """(one ``TextStream`` per prompt, an iterator of (row, new text) as tokens are decoded). A stream's
    ``finish_reason`` stays None when it ran out of tokens; decoding ends early once every row finished."""
    stop = check_stop(stop)
    tokenizer = model.tokenizer
    ids = [tokenizer.encode(p) or ([] if prefix is not None else [tokenizer.eos_id]) for p in prompts]
    streams = [TextStream(tokenizer, stop, tokenizer.eos_id if stop_at_eos else None) for _ in prompts]

    def pieces():
        for tokens in model.generator.stream(model.params, ids, max_new_tokens, sampling, seed, chunk, prefix):
            for row, stream in enumerate(streams):
                if text := stream.add(tokens[row]):
                    yield row, text
            if all(s.finished for s in streams):
                return
        for row, stream in enumerate(streams):
            if text := stream.flush():
                yield row, text

    return streams, pieces()


# --- saved decode states ----------------------------------------------------------------------------------


def state_model(model) -> dict:
    """The model settings a saved state belongs to, as JSON reads them back (any cache length)."""
    return json.loads(json.dumps(model.config.model.__dict__ | {"max_cache_len": None}))


def save_state(path: str | Path, state: DecodeState, model, tokens: int) -> None:
    """One row's decode state after a prompt of ``tokens`` tokens, with the model config it belongs to."""
    leaves = jax.tree.leaves(state)
    meta = {"format": STATE_FORMAT, "model": state_model(model), "tokens": tokens}
    with open(path, "wb") as f:
        np.savez(f, meta=np.asarray(json.dumps(meta)), **{f"leaf_{i}": np.asarray(x) for i, x in enumerate(leaves)})


def load_state(path: str | Path, model) -> tuple[DecodeState, int]:
    """(state, prompt tokens it holds) saved by ``save_state`` for this model; one line if it is not."""
    path = Path(path)
    if not path.is_file():
        raise SamplingError(f"state file '{path}' does not exist; write one with --save_state")
    try:
        with np.load(path) as data:
            meta = json.loads(str(data["meta"]))
            leaves = [data[f"leaf_{i}"] for i in range(len(data.files) - 1)]
    except Exception as error:
        raise SamplingError(f"'{path}' is not a saved decode state ({type(error).__name__})") from None
    if meta.get("format") != STATE_FORMAT:
        raise SamplingError(f"'{path}' is not a saved decode state (format {meta.get('format')!r})")
    if meta["model"] != state_model(model):
        raise SamplingError(f"'{path}' was saved from a different model; load it with the checkpoint that wrote it")
    template = jax.eval_shape(lambda: model.generator.start_rows(model.params, [[0]], 64, np.zeros((1, 2), np.uint32)))
    treedef = jax.tree.structure(template)
    if treedef.num_leaves != len(leaves):
        raise SamplingError(f"'{path}' does not match this model's decode state; save it again")
    return jax.tree.unflatten(treedef, [jnp.asarray(x) for x in leaves]), int(meta["tokens"])


# --- benchmark --------------------------------------------------------------------------------------------


def benchmark(model, contexts=(128, 1024, 8192), batches=(1, 8), new_tokens: int = 32, log=print) -> list[dict]:
    """Prefill and decode tokens/s per (context, batch): each shape runs once to compile, then is timed.
    Prefill is one padded batch (``hrm.inference``), decode is one batched loop (greedy)."""
    generator, params = model.generator, model.params
    limit = generator.context_limit(params)
    settings_of = lambda b: SamplingArrays.of([Sampling(0.0)] * b)
    rows = []
    for context in contexts:
        for batch in batches:
            if limit is not None and context + new_tokens > limit:
                log(f"context {context}: skipped, over model.max_cache_len {limit} (raise it with --max_context)")
                continue
            prompts = np.random.default_rng(context).integers(0, model.config.model.vocab_size, (batch, context))
            timings = []
            for _ in range(2):
                start = time.perf_counter()
                state = generator.start(params, prompts.tolist(), new_tokens)
                jax.block_until_ready(state)
                prefilled = time.perf_counter()
                tokens, _ = generator.decode(params, state, settings_of(batch), new_tokens)
                timings.append((prefilled - start, time.perf_counter() - prefilled))
            prefill_s, decode_s = timings[-1]
            rows.append(
                {
                    "context": context,
                    "batch": batch,
                    "prefill_tokens_per_s": batch * context / prefill_s,
                    "decode_tokens_per_s": batch * new_tokens / decode_s,
                }
            )
            log(
                f"context {context} batch {batch}: prefill {rows[-1]['prefill_tokens_per_s']:,.0f} tokens/s, "
                f"decode {rows[-1]['decode_tokens_per_s']:,.0f} tokens/s"
            )
    return rows


def benchmark_table(rows: list[dict]) -> str:
    lines = ["| context | batch | prefill tokens/s | decode tokens/s |", "|---:|---:|---:|---:|"]
    lines += [
        f"| {r['context']} | {r['batch']} | {r['prefill_tokens_per_s']:,.0f} | {r['decode_tokens_per_s']:,.0f} |"
        for r in rows
    ]
    return "\n".join(lines)

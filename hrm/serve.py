"""python -m hrm.serve --checkpoint DIR [--host 127.0.0.1] [--port 8000] [--api_key KEY]: an OpenAI-compatible
HTTP server (FastAPI on uvicorn) over one continuously batched decode loop.

Endpoints: ``POST /v1/completions`` (with ``logprobs`` and ``echo``, scored by ``hrm.scoring``) and
``POST /v1/chat/completions`` (OpenAI's shapes, ``stream`` as server-sent events ending ``data: [DONE]``),
``POST /generate {prompt, max_tokens, temperature}`` → ``{"response": ...}`` (the documents' example),
``POST /tokenize``, ``POST /detokenize``, ``GET /tokenizer_info`` (lm-eval's remote tokenizer), ``GET /health``,
``GET /v1/models``, ``GET /v1/models/{id}``.

``BatchEngine`` runs the decode loop in one thread over a ``DecodeState`` of ``slots`` rows: the requests that
arrived since the last step are prefilled together (one padded batch) and join at the next step, finished rows
leave (their slots are reused, parked at KV position 0 meanwhile), a row whose client left is dropped, and each
row samples with its own settings and PRNG key, so its output does not depend on its batch-mates. A request's
fault is a 4xx, a bug a 500, both with an OpenAI-style error body (``{"error": {"message", "type", "param",
"code"}}``).
"""

# No `from __future__ import annotations`: FastAPI reads the request-body classes (local to create_app)
# from the endpoints' annotations at definition time.

import asyncio
import contextlib
import dataclasses
import json
import os
import queue
import threading
import time
import uuid
from typing import Literal

import jax
import numpy as np

import hrm
from hrm import scoring
from hrm.cli import ArgumentParser, UsageError, run_main
from hrm.data.sources import dialogue_prompt
from hrm.decoding import TextStream
from hrm.errors import UserError
from hrm.inference import Sampling, SamplingArrays, SamplingError, check_seed, row_key, stack_rows
from hrm.models.attention import kv_cache_length, park_rows, resize_kv_caches

DEFAULT_MAX_TOKENS_LIMIT = 4096  # the most new tokens one request may ask for
SSM_CONTEXT = 16384  # a pure SSM's default limit on prompt + new tokens (its state has none)


_COMPILES = {"count": 0, "listening": False}  # XLA compilations in this process (GET /health)


def _count_compiles() -> None:
    if not _COMPILES["listening"]:
        _COMPILES["listening"] = True

        def listen(name, duration, **kwargs):
            if name == "/jax/core/compile/backend_compile_duration":
                _COMPILES["count"] += 1

        jax.monitoring.register_event_duration_secs_listener(listen)


# --- the decode loop --------------------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class Row:
    """One sequence being generated: its prompt, settings, and where its text goes (an asyncio queue)."""

    ids: list[int]
    max_tokens: int
    sampling: Sampling
    key_data: np.ndarray
    stream: TextStream
    deliver: object  # callable(event) run in the server's event loop
    tokens: int = 0
    cancelled: bool = False


class BatchEngine:
    """Continuous batching: ``submit`` rows from any thread; one thread decodes all active rows a step at a
    time. Slots grow in powers of two up to ``max_batch``, the KV buffer in powers of two up to the model's
    ``max_cache_len``."""

    def __init__(self, model, max_batch: int = 8):
        self.model, self.max_batch = model, max_batch
        self.generator, self.params = model.generator, model.params
        self.pending: queue.Queue[Row] = queue.Queue()
        self.slots: list[Row | None] = []
        self.state = None
        self.steps = 0  # decode steps run (for tests and logs)
        self.max_active = 0  # most rows decoded together
        self.max_prefill = 0  # most rows prefilled together
        self.cancelled = 0  # rows dropped because their client left
        self._park = jax.jit(park_rows, donate_argnums=(0,))
        _count_compiles()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="hrm-decode", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.pending.put(None)
        self._thread.join(timeout=10)

    def submit(self, row: Row) -> None:
        self.pending.put(row)

    def _admit(self, rows: list[Row]) -> None:
        """Prefill ``rows`` as one batch and put them in free slots; the slots grow in powers of two (up to
        ``max_batch``) and the KV buffer to the longest request."""
        length = self.generator.cache_length(self.params, max(len(r.ids) + r.max_tokens for r in rows))
        if self.state is not None and (current := kv_cache_length(self.state.cache)) is not None:
            if length > current:
                self.state = self.state._replace(cache=resize_kv_caches(self.state.cache, length))
            length = max(length, current)
        self.max_prefill = max(self.max_prefill, len(rows))
        new = self.generator.start_rows(self.params, [r.ids for r in rows], length, [r.key_data for r in rows])
        busy = len(self.slots) - self.slots.count(None)
        if busy + len(rows) > len(self.slots):
            grow = min(self.max_batch, 1 << (busy + len(rows) - 1).bit_length()) - len(self.slots)
            filler = jax.tree.map(lambda a: a[:1], new if self.state is None else self.state)
            self.state = stack_rows(([self.state] if self.state is not None else []) + [filler] * grow)
            self.slots += [None] * grow
        slots = [i for i, r in enumerate(self.slots) if r is None][: len(rows)]
        for slot, row in zip(slots, rows):
            self.slots[slot] = row
        self.state = jax.tree.map(lambda a, r: a.at[np.asarray(slots)].set(r), self.state, new)

    def _admissible(self, row: Row) -> bool:
        """Whether ``row`` can be prefilled; if not, its request gets the error and the others go on."""
        if row.cancelled:
            self.cancelled += 1
            return False
        try:
            self.generator.check_ids(self.params, row.ids)
            self.generator.cache_length(self.params, len(row.ids) + row.max_tokens)
            return True
        except Exception as error:
            _fail(row, error)
            return False

    def _loop(self) -> None:
        while not self._stop.is_set():
            active = any(self.slots)
            rows: list[Row] = []
            room = self.slots.count(None) + self.max_batch - len(self.slots)
            try:  # everything waiting (up to the free slots) joins now, prefilled together
                while len(rows) < room:
                    row = self.pending.get(block=not (active or rows))
                    if row is None:
                        break
                    if self._admissible(row):
                        rows.append(row)
            except queue.Empty:
                pass
            if rows:
                try:
                    self._admit(rows)
                except Exception as error:  # these requests fail, the server keeps serving
                    for row in rows:
                        _fail(row, error)
            if self._stop.is_set() or not any(self.slots):
                continue
            self._step()

    def _step(self) -> None:
        settings = SamplingArrays.of([r.sampling if r else Sampling(0.0) for r in self.slots])
        self.max_active = max(self.max_active, sum(r is not None for r in self.slots))
        try:
            if None in self.slots and kv_cache_length(self.state.cache) is not None:  # free slots stay at 0
                idle = np.asarray([r is None for r in self.slots])
                self.state = self.state._replace(cache=self._park(self.state.cache, idle))
            tokens, self.state = self.generator.decode(self.params, self.state, settings, 1)
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


def _fail(row: Row, error: Exception) -> None:
    """End ``row``'s request with the error (the server keeps serving)."""
    _deliver(row, ("error", error))


def _deliver(row: Row, event) -> None:
    try:
        row.deliver(event)
    except RuntimeError:  # the request's event loop is gone (server shutting down)
        row.cancelled = True


# --- requests ---------------------------------------------------------------------------------------------

MAX_LOGPROBS = 20  # the most alternatives per token that ``logprobs`` may ask for
# OpenAI request fields hrm.serve refuses by name with a 400 (README.md lists them); chat's logprobs are among
# them, completions' ``logprobs`` is supported
UNSUPPORTED = (
    "suffix",
    "best_of",
    "logprobs",
    "top_logprobs",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "functions",
    "function_call",
    "response_format",
    "audio",
    "modalities",
    "prediction",
    "reasoning_effort",
    "service_tier",
    "store",
    "metadata",
    "web_search_options",
)


def _schemas():
    """The request bodies (pydantic): strict types, unknown fields refused."""
    from pydantic import BaseModel, ConfigDict, Field  # optional (the serve extra, with FastAPI)

    class Strict(BaseModel):
        model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)

    class StreamOptions(Strict):
        include_usage: bool = False

    class SamplingFields(Strict):
        model: str | None = None
        max_tokens: int | None = None
        temperature: float = 1.0
        top_p: float = 1.0
        top_k: int | None = None
        min_p: float | None = None
        repetition_penalty: float = 1.0
        frequency_penalty: float = 0.0
        presence_penalty: float = 0.0
        logit_bias: dict[str, float] | None = None
        stop: str | list[str] | None = None
        n: int = Field(1, ge=1, le=16)
        seed: int | None = None
        stream: bool = False
        stream_options: StreamOptions | None = None
        user: str | None = None

    class Completion(SamplingFields):
        prompt: str | list[str] | list[int] | list[list[int]]
        logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
        echo: bool = False

    class TextPart(Strict):
        type: Literal["text"]
        text: str

    class Message(Strict):
        role: Literal["system", "developer", "user", "assistant"]
        content: str | list[TextPart]
        name: str | None = None

    class Chat(SamplingFields):
        messages: list[Message] = Field(min_length=1)
        max_completion_tokens: int | None = None

    class Generate(Strict):
        prompt: str
        max_tokens: int = 100
        temperature: float = 0.8

    class Tokenize(Strict):
        prompt: str
        model: str | None = None
        add_special_tokens: bool = False

    class Detokenize(Strict):
        tokens: list[int]
        model: str | None = None

    return Completion, Chat, Generate, Tokenize, Detokenize


class RequestError(ValueError):
    """A request the server refuses (400 unless ``status``); the message names the field."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None):
        super().__init__(message)
        self.param, self.status, self.code = param, status, code


def error_body(message: str, kind: str = "invalid_request_error", param=None, code=None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class Server:
    """The app's state: the model, its engine, the request limits and the names the model answers to."""

    def __init__(
        self,
        model,
        model_id: str,
        max_batch: int = 8,
        max_tokens_limit: int = DEFAULT_MAX_TOKENS_LIMIT,
        api_key: str | None = None,
        max_context: int | None = None,
        aliases: tuple[str, ...] = (),
    ):
        self.model, self.model_id, self.api_key = model, model_id, api_key
        self.names = {model_id, *aliases}
        self.engine = BatchEngine(model, max_batch)
        self.max_tokens_limit = max_tokens_limit
        self.context_limit = model.generator.context_limit(model.params) or max_context or SSM_CONTEXT

    def check_model(self, name: str | None) -> None:
        """A 404 ``model_not_found`` (as OpenAI answers) for a ``model`` this server does not serve."""
        if name is not None and name not in self.names:
            raise RequestError(
                f"the model '{name}' does not exist; this server serves '{self.model_id}' (GET /v1/models)",
                "model",
                status=404,
                code="model_not_found",
            )

    def check_ids(self, ids, param: str) -> None:
        try:
            self.model.generator.check_ids(self.model.params, ids)
        except SamplingError as error:
            raise RequestError(f"{param}: {error}", param) from None

    def prompt_ids(self, prompt) -> tuple[list[list[int]], list[str]]:
        """(token ids, text) of each prompt: a string, a list of strings, token ids or lists of token ids; an
        empty prompt is the end-of-text token."""
        tokenizer = self.model.tokenizer
        prompts = [prompt] if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)) else prompt
        if not prompts:
            raise RequestError("prompt must not be an empty list", "prompt")
        ids = [tokenizer.encode(p) if isinstance(p, str) else list(p) for p in prompts]
        for row in ids:
            self.check_ids(row, "prompt")
        texts = [p if isinstance(p, str) else tokenizer.decode(row) for p, row in zip(prompts, ids)]
        return [row or [tokenizer.eos_id] for row in ids], texts

    def sampling(self, body) -> Sampling:
        bias = []
        for token, value in (body.logit_bias or {}).items():
            if not token.isdigit():
                raise RequestError(f"logit_bias keys must be token ids, got {token!r}", "logit_bias")
            bias.append((int(token), value))
        self.check_ids([t for t, _ in bias], "logit_bias")
        try:
            return Sampling(
                body.temperature,
                body.top_k,
                body.top_p,
                body.min_p,
                body.repetition_penalty,
                body.frequency_penalty,
                body.presence_penalty,
                tuple(bias),
            ).check()
        except SamplingError as error:
            raise RequestError(str(error), str(error).split()[0]) from None

    def rows(self, prompts: list[list[int]], body, max_tokens: int, deliver_for) -> list[Row]:
        """Validated rows (``body.n`` per prompt) for a request; raises RequestError."""
        sampling = self.sampling(body)
        if not 0 <= max_tokens <= self.max_tokens_limit:
            raise RequestError(f"max_tokens must be in [0, {self.max_tokens_limit}], got {max_tokens}", "max_tokens")
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if "" in stop:
            raise RequestError("stop strings must not be empty", "stop")
        try:
            seed = check_seed(body.seed) if body.seed is not None else int.from_bytes(os.urandom(4), "little")
        except SamplingError as error:
            raise RequestError(str(error), "seed") from None
        tokenizer, rows = self.model.tokenizer, []
        for p, ids in enumerate(prompts):
            if len(ids) + max_tokens > self.context_limit:
                raise RequestError(
                    f"the prompt ({len(ids)} tokens) plus max_tokens ({max_tokens}) exceed the "
                    f"model's context of {self.context_limit} tokens",
                    "prompt",
                )
            for i in range(body.n):
                index = p * body.n + i
                rows.append(
                    Row(
                        ids,
                        max_tokens,
                        sampling,
                        np.asarray(row_key(seed, index)),
                        TextStream(tokenizer, stop, tokenizer.eos_id),
                        deliver_for(index),
                    )
                )
        return rows

    def logprobs(self, rows: list[Row], texts: list[str], prompt_texts: list[str], echo: bool, top: int) -> list:
        """OpenAI's completions ``logprobs`` object of each row: the model's log-probabilities (its logits, before
        temperature and penalties) of the returned tokens, the prompt's too with ``echo``, each with the ``top``
        likeliest tokens (and the token itself); all rows are scored in one batched forward pass."""
        decode = self.model.tokenizer.decode
        outputs = [_covering(decode, row.stream.ids, text) for row, text in zip(rows, texts)]
        sequences = [row.ids + out for row, out in zip(rows, outputs)]
        scores = scoring.score(self.model, sequences, top)
        objects = []
        for row, out, seq, got, prompt_text in zip(rows, outputs, sequences, scores, prompt_texts):
            first = 0 if echo else len(row.ids)
            tokens = [decode([t]) for t in seq[first:]]
            token_logprobs, top_logprobs = [], []
            for i in range(first, len(seq)):
                if i == 0:
                    token_logprobs.append(None)
                    top_logprobs.append(None)
                    continue
                chosen = float(got.logprobs[i - 1])
                alternatives: dict[str, float] = {}  # best first: a text shared by tokens keeps its best
                for t, v in zip(got.top_ids[i - 1], got.top_logprobs[i - 1]):
                    alternatives.setdefault(decode([int(t)]), float(v))
                alternatives.setdefault(decode([seq[i]]), chosen)
                token_logprobs.append(chosen)
                top_logprobs.append(alternatives)
            offsets = np.cumsum([0 if echo else len(prompt_text)] + [len(t) for t in tokens[:-1]]).tolist()
            objects.append(
                {
                    "tokens": tokens,
                    "token_logprobs": token_logprobs,
                    "top_logprobs": top_logprobs,
                    "text_offset": offsets[: len(tokens)],
                }
            )
        return objects


def _covering(decode, ids: list[int], text: str) -> list[int]:
    """The shortest prefix of ``ids`` whose text covers ``text`` (the returned text, cut at a stop string)."""
    if len(decode(ids)) <= len(text):
        return list(ids)
    k = 0
    while len(decode(ids[:k])) < len(text):
        k += 1
    return list(ids[:k])


class ClientGone(Exception):
    """The client of a non-streaming request disconnected: its rows are cancelled, nobody reads the answer."""


class EngineError(RuntimeError):
    """A row the engine failed; ``error`` is why (a UserError is the request's fault: 400)."""

    def __init__(self, error: Exception):
        super().__init__(f"{type(error).__name__}: {error}")
        self.error = error


class KeyCheck:
    """401 for a request without ``Authorization: Bearer KEY`` (``/health`` is open). Plain ASGI, not
    starlette's BaseHTTPMiddleware, which hides a client's disconnect from the endpoints."""

    def __init__(self, app, api_key: str):
        self.app, self.expected = app, f"Bearer {api_key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] != "/health":
            if dict(scope["headers"]).get(b"authorization") != self.expected:
                from fastapi.responses import JSONResponse  # optional (the serve extra)

                body = error_body(
                    "missing or wrong API key (Authorization: Bearer KEY)",
                    "authentication_error",
                    code="invalid_api_key",
                )
                return await JSONResponse(body, status_code=401)(scope, receive, send)
        await self.app(scope, receive, send)


def create_app(server: Server):
    from fastapi import FastAPI, Request  # optional (the serve extra): hrm.serve's main checks it is installed
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException

    Completion, Chat, Generate, Tokenize, Detokenize = _schemas()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        server.engine.start()
        yield
        server.engine.stop()

    app = FastAPI(title="hrm", lifespan=lifespan)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        if first.get("type") == "extra_forbidden" and where in UNSUPPORTED:
            message = f"{where} is not supported by hrm.serve (README.md lists the supported fields)"
        else:
            message = (
                f"{where}: {first.get('msg', 'invalid request')}" if where else first.get("msg", "invalid request")
            )
        return JSONResponse(error_body(message, param=where or None), status_code=400)

    @app.exception_handler(RequestError)
    async def refused(request, exc):
        return JSONResponse(error_body(str(exc), param=exc.param, code=exc.code), status_code=exc.status)

    @app.exception_handler(EngineError)
    async def engine_failed(request, exc):
        status, kind = (400, "invalid_request_error") if isinstance(exc.error, UserError) else (500, "server_error")
        return JSONResponse(error_body(str(exc.error), kind), status_code=status)

    @app.exception_handler(ClientGone)
    async def client_gone(request, exc):  # nginx's "client closed request": logged, never read
        return JSONResponse(error_body("the client disconnected", code="client_closed_request"), status_code=499)

    @app.exception_handler(HTTPException)
    async def http_error(request, exc):
        return JSONResponse(error_body(str(exc.detail), code=exc.status_code), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def internal(request, exc):  # a bug, not the request's fault: a JSON 500 (and its traceback logged)
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}", "server_error"), status_code=500)

    if server.api_key:
        app.add_middleware(KeyCheck, api_key=server.api_key)

    def submit(prompts, body, max_tokens):
        """(rows, asyncio queue of (index, event)); the rows are submitted."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        deliver_for = lambda index: lambda event: loop.call_soon_threadsafe(events.put_nowait, (index, event))
        rows = server.rows(prompts, body, max_tokens, deliver_for)
        for row in rows:
            if max_tokens == 0:
                row.deliver(("done", "length"))
            else:
                server.engine.submit(row)
        return rows, events

    async def collect(rows, events, request):
        """(texts, finish reasons) of the rows; they are cancelled when the client disconnects."""
        texts, reasons = [""] * len(rows), [None] * len(rows)
        watcher = asyncio.create_task(watch(request, rows, events))
        try:
            while any(r is None for r in reasons):
                index, event = await events.get()
                if event[0] == "text":
                    texts[index] += event[1]
                elif event[0] == "done":
                    reasons[index] = event[1]
                elif event[0] == "gone":
                    raise ClientGone
                else:
                    raise EngineError(event[1])
        finally:
            watcher.cancel()
            for row in rows:
                row.cancelled = True
        return texts, reasons

    async def watch(request, rows, events):
        while not await request.is_disconnected():
            await asyncio.sleep(0.1)
        for row in rows:
            row.cancelled = True
        events.put_nowait((None, ("gone",)))

    def usage(rows, n):
        prompt_tokens = sum(len(row.ids) for row in rows[::n])  # n rows per prompt
        completion_tokens = sum(r.tokens for r in rows)
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }

    def sse(rows, n, events, head, chunk, first=(), include_usage=False):
        """The event stream: ``first`` chunks, then ``chunk(index, event)`` per event, a usage chunk when asked,
        ``data: [DONE]``; the rows are cancelled when the client goes."""

        def data(obj):
            return f"data: {json.dumps(head | obj | ({'usage': None} if include_usage else {}))}\n\n"

        async def body():
            finished = 0
            try:
                for obj in first:
                    yield data(obj)
                while finished < len(rows):
                    index, event = await events.get()
                    if event[0] == "error":
                        yield f"data: {json.dumps(error_body(str(EngineError(event[1])), 'server_error'))}\n\n"
                        break
                    if event[0] == "done":
                        finished += 1
                    yield data(chunk(index, event))
                else:
                    if include_usage:
                        yield f"data: {json.dumps(head | {'choices': [], 'usage': usage(rows, n)})}\n\n"
                yield "data: [DONE]\n\n"
            finally:
                for row in rows:
                    row.cancelled = True

        return StreamingResponse(body(), media_type="text/event-stream")

    @app.post("/v1/completions")
    async def completions(body: Completion, request: Request):
        server.check_model(body.model)
        prompts, prompt_texts = server.prompt_ids(body.prompt)
        max_tokens = 16 if body.max_tokens is None else body.max_tokens
        if body.stream and (body.echo or body.logprobs is not None):
            raise RequestError("echo and logprobs are not supported with stream: ask without stream", "stream")
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": server.model_id}
        rows, events = submit(prompts, body, max_tokens)
        n = body.n
        if body.stream:

            def chunk(index, event):
                text, reason = (event[1], None) if event[0] == "text" else ("", event[1])
                return {"choices": [{"index": index, "text": text, "finish_reason": reason, "logprobs": None}]}

            include = bool(body.stream_options and body.stream_options.include_usage)
            return sse(rows, n, events, head | {"object": "text_completion"}, chunk, include_usage=include)
        texts, reasons = await collect(rows, events, request)
        logprobs = [None] * len(rows)
        if body.logprobs is not None:
            prompt_of = [prompt_texts[i // n] for i in range(len(rows))]
            logprobs = await asyncio.to_thread(server.logprobs, rows, texts, prompt_of, body.echo, body.logprobs)
        choices = [
            {
                "index": i,
                "text": (prompt_texts[i // n] if body.echo else "") + text,
                "finish_reason": reason,
                "logprobs": lp,
            }
            for i, (text, reason, lp) in enumerate(zip(texts, reasons, logprobs))
        ]
        return head | {"object": "text_completion", "choices": choices, "usage": usage(rows, n)}

    @app.post("/v1/chat/completions")
    async def chat(body: Chat, request: Request):
        server.check_model(body.model)
        contents = [
            m.content if isinstance(m.content, str) else "".join(p.text for p in m.content) for m in body.messages
        ]
        prompts, _ = server.prompt_ids(dialogue_prompt(contents))
        limit = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": server.model_id}
        rows, events = submit(prompts, body, 16 if limit is None else limit)
        if body.stream:

            def chunk(index, event):
                delta, reason = ({"content": event[1]}, None) if event[0] == "text" else ({}, event[1])
                return {"choices": [{"index": index, "delta": delta, "finish_reason": reason}]}

            first = [
                {"choices": [{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
                for i in range(len(rows))
            ]
            include = bool(body.stream_options and body.stream_options.include_usage)
            return sse(rows, body.n, events, head | {"object": "chat.completion.chunk"}, chunk, first, include)
        texts, reasons = await collect(rows, events, request)
        choices = [
            {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": reason}
            for i, (text, reason) in enumerate(zip(texts, reasons))
        ]
        return head | {"object": "chat.completion", "choices": choices, "usage": usage(rows, body.n)}

    @app.post("/generate")
    async def generate(body: Generate, request: Request):
        completion = Completion(prompt=body.prompt, max_tokens=body.max_tokens, temperature=body.temperature)
        prompts, _ = server.prompt_ids(body.prompt)
        rows, events = submit(prompts, completion, body.max_tokens)
        texts, _ = await collect(rows, events, request)
        return {"response": texts[0]}

    @app.post("/tokenize")
    async def tokenize(body: Tokenize):
        server.check_model(body.model)
        tokenizer = server.model.tokenizer
        # the end-of-text token's text alone is that token (lm-eval's remote tokenizer asks for its id this way);
        # anywhere else special-token text is text, as in every other prompt
        ids = (
            [tokenizer.eos_id] if body.prompt == tokenizer.decode([tokenizer.eos_id]) else tokenizer.encode(body.prompt)
        )
        return {"tokens": ids, "count": len(ids), "max_model_len": server.context_limit}

    @app.post("/detokenize")
    async def detokenize(body: Detokenize):
        server.check_model(body.model)
        server.check_ids(body.tokens, "tokens")
        return {"prompt": server.model.tokenizer.decode(body.tokens)}

    @app.get("/tokenizer_info")
    async def tokenizer_info():
        tokenizer = server.model.tokenizer
        eos = tokenizer.decode([tokenizer.eos_id])
        return {
            "tokenizer": server.model.config.data.tokenizer,
            "eos_token": eos,
            "eos_token_id": tokenizer.eos_id,
            "pad_token": eos,
            "bos_token": None,
            "vocab_size": server.model.config.model.vocab_size,
            "model_max_length": server.context_limit,
        }

    @app.get("/health")
    async def health():
        engine = server.engine
        return {
            "status": "ok",
            "model": server.model_id,
            "step": server.model.step,
            "decode_steps": engine.steps,
            "active_rows": sum(r is not None for r in engine.slots),
            "max_active_rows": engine.max_active,
            "max_prefill_rows": engine.max_prefill,
            "cancelled_rows": engine.cancelled,
            "compiles": _COMPILES["count"],  # XLA compilations so far (a new batch or prompt shape compiles)
        }

    def model_card():
        return {"id": server.model_id, "object": "model", "created": 0, "owned_by": "hrm"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str):
        server.check_model(name)
        return model_card()

    return app


def main(argv: list[str]) -> None:
    parser = ArgumentParser(prog="python -m hrm.serve", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint", required=True, help="a run directory, one of its checkpoints/N folders or an hrm.export folder"
    )
    parser.add_argument("--step", default=None, help="checkpoint step (default: the latest)")
    parser.add_argument("--host", default="127.0.0.1", help="the address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000, help="the TCP port, 1-65535 (default 8000)")
    parser.add_argument(
        "--served_model_name",
        action="append",
        default=[],
        help="a name the model answers to in requests' 'model' (repeatable; the first is the id /v1/models lists; "
        "default: the checkpoint folder's name, its path also accepted)",
    )
    parser.add_argument("--api_key", default=None, help="require 'Authorization: Bearer KEY' (401 without it)")
    parser.add_argument("--max_batch", type=int, default=8, help="most rows decoded together")
    parser.add_argument(
        "--max_tokens_limit", type=int, default=DEFAULT_MAX_TOKENS_LIMIT, help="most new tokens one request may ask for"
    )
    parser.add_argument(
        "--max_context",
        type=int,
        default=None,
        help=f"most positions (prompt + new tokens) of a request (default: model.max_cache_len "
        f"with attention, {SSM_CONTEXT} for a pure SSM)",
    )
    args = parser.parse_args(argv)
    if args.max_batch < 1 or args.max_tokens_limit < 1:
        raise UsageError("--max_batch and --max_tokens_limit must be >= 1")
    if not 1 <= args.port <= 65535:
        raise UsageError(f"--port must be in [1, 65535], got {args.port}")
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        raise UsageError("hrm.serve needs FastAPI and uvicorn: pip install -e '.[serve]'") from None

    model = hrm.load(args.checkpoint, step=args.step, max_context=args.max_context)
    folder = os.path.basename(os.path.abspath(args.checkpoint))
    names = args.served_model_name or [folder]
    server = Server(
        model,
        model_id=names[0],
        max_batch=args.max_batch,
        max_tokens_limit=args.max_tokens_limit,
        api_key=args.api_key,
        max_context=args.max_context,
        aliases=(*names[1:], folder, args.checkpoint, os.path.abspath(args.checkpoint)),
    )
    print(
        f"serving step {model.step} of {args.checkpoint} on http://{args.host}:{args.port} "
        f"(OpenAI-compatible: /v1/completions, /v1/chat/completions)",
        flush=True,
    )
    uvicorn.run(create_app(server), host=args.host, port=args.port, log_level="warning")


def cli() -> None:
    """The console script (pyproject.toml [project.scripts])."""
    run_main(main)


if __name__ == "__main__":
    cli()

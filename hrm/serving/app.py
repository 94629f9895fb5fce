"""The HTTP layer: an OpenAI-compatible FastAPI app over a ``BatchEngine`` (``hrm.serving.engine``).

Endpoints: ``POST /v1/completions`` (with ``logprobs`` and ``echo``, scored by ``hrm.scoring``) and
``POST /v1/chat/completions`` (OpenAI's shapes, ``stream`` as server-sent events ending ``data: [DONE]``),
``POST /generate {prompt, max_tokens, temperature}`` → ``{"response": ...}`` (a minimal FastAPI deployment's shape),
``POST /tokenize``, ``POST /detokenize``, ``GET /tokenizer_info`` (lm-eval's remote tokenizer), ``GET /health``,
``GET /v1/models``, ``GET /v1/models/{id}``. A request's fault is a 4xx, a bug a 500, both with an OpenAI-style
error body (``{"error": {"message", "type", "param", "code"}}``).
"""

# No `from __future__ import annotations`: FastAPI reads the request-body classes from the endpoints'
# annotations at definition time.

import asyncio
import contextlib
import json
import os
import time
import uuid

import numpy as np

from hrm import scoring
from hrm.chat_template import dialogue_prompt
from hrm.decoding import TextStream
from hrm.errors import UserError
from hrm.inference import Sampling, SamplingError, check_seed, row_key
from hrm.serving.engine import (
    DEFAULT_MAX_TOKENS_LIMIT,
    DEFAULT_PREFILL_CHUNK,
    SSM_CONTEXT,
    BatchEngine,
    Row,
    compile_count,
)
from hrm.serving.schemas import (
    UNSUPPORTED,
    Chat,
    Completion,
    Detokenize,
    Generate,
    RequestError,
    Tokenize,
    error_body,
)


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
        prefill_chunk: int = DEFAULT_PREFILL_CHUNK,
    ):
        self.model, self.model_id, self.api_key = model, model_id, api_key
        self.names = {model_id, *aliases}
        self.engine = BatchEngine(model, max_batch, prefill_chunk)
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
        for row, seq, got, prompt_text in zip(rows, sequences, scores, prompt_texts):
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
    # optional (the serve extra): hrm.serve's main checks they are installed
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException

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
            "active_rows": engine.active,
            "max_active_rows": engine.max_active,
            "max_prefill_rows": engine.max_prefill,
            "cancelled_rows": engine.cancelled,
            "compiles": compile_count(),  # programs built so far (0 more after --warmup: every bucket is built)
            "waiting_rows": len(engine.waiting),  # requests whose programs the compile thread is building
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

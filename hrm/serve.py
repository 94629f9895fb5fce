"""python -m hrm.serve --checkpoint DIR [--host 127.0.0.1] [--port 8000] [--api_key KEY]: an OpenAI-compatible
HTTP server (FastAPI on uvicorn) over one continuously batched decode loop.

Endpoints: ``POST /v1/completions`` and ``POST /v1/chat/completions`` (OpenAI's shapes, ``stream`` as
server-sent events ending ``data: [DONE]``), ``POST /generate {prompt, max_tokens, temperature}`` →
``{"response": ...}`` (the documents' example), ``GET /health``, ``GET /v1/models``.

``BatchEngine`` runs the decode loop in one thread over a ``DecodeState`` of ``slots`` rows: the requests that
arrived since the last step are prefilled together (one padded batch) and join at the next step, finished rows
leave (their slots are reused), and each row samples with its own settings and PRNG key, so its output does not
depend on its batch-mates. Bad requests get a 4xx with an OpenAI-style error body
(``{"error": {"message", "type", "param", "code"}}``).
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

from hrm.cli import ArgumentParser, UsageError, run_main
from hrm.data.sources import dialogue_prompt
from hrm.decoding import TextStream
from hrm.inference import Sampling, SamplingArrays, SamplingError, row_key, stack_rows
from hrm.models.attention import kv_cache_length, resize_kv_caches

DEFAULT_MAX_TOKENS_LIMIT = 4096  # the most new tokens one request may ask for
SSM_CONTEXT = 16384  # a pure SSM's default limit on prompt + new tokens (its state has none)


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
            if row.cancelled or row.stream.finished or row.tokens >= row.max_tokens:
                if piece := row.stream.flush():
                    _deliver(row, ("text", piece))
                _deliver(row, ("done", row.stream.finish_reason or "length"))
                self.slots[slot] = None


def _fail(row: Row, error: Exception) -> None:
    """End ``row``'s request with the error (the server keeps serving)."""
    _deliver(row, ("error", f"{type(error).__name__}: {error}"))


def _deliver(row: Row, event) -> None:
    try:
        row.deliver(event)
    except RuntimeError:  # the request's event loop is gone (server shutting down)
        row.cancelled = True


# --- requests ---------------------------------------------------------------------------------------------


def _schemas():
    """The request bodies (pydantic): strict types, unknown fields refused."""
    from pydantic import BaseModel, ConfigDict, Field

    class Strict(BaseModel):
        model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)

    class SamplingFields(Strict):
        model: str | None = None
        max_tokens: int = 16
        temperature: float = 1.0
        top_p: float = 1.0
        top_k: int | None = None
        min_p: float | None = None
        repetition_penalty: float = 1.0
        stop: str | list[str] | None = None
        n: int = Field(1, ge=1, le=16)
        seed: int | None = None
        stream: bool = False
        user: str | None = None

    class Completion(SamplingFields):
        prompt: str | list[str]

    class Message(Strict):
        role: Literal["system", "user", "assistant"]
        content: str

    class Chat(SamplingFields):
        messages: list[Message] = Field(min_length=1)

    class Generate(Strict):
        prompt: str
        max_tokens: int = 100
        temperature: float = 0.8

    return Completion, Chat, Generate


class RequestError(ValueError):
    """A request the server refuses with 400; the message names the field."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


def error_body(message: str, kind: str = "invalid_request_error", param=None, code=None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class Server:
    """The app's state: the model, its engine and the request limits."""

    def __init__(
        self,
        model,
        model_id: str,
        max_batch: int = 8,
        max_tokens_limit: int = DEFAULT_MAX_TOKENS_LIMIT,
        api_key: str | None = None,
        max_context: int | None = None,
    ):
        self.model, self.model_id, self.api_key = model, model_id, api_key
        self.engine = BatchEngine(model, max_batch)
        self.max_tokens_limit = max_tokens_limit
        self.context_limit = model.generator.context_limit(model.params) or max_context or SSM_CONTEXT

    def rows(self, prompts: list[str], body, deliver_for) -> tuple[list[Row], int]:
        """Validated rows (n per prompt) for a request; raises RequestError."""
        try:
            sampling = Sampling(
                body.temperature,
                body.top_k,
                body.top_p if body.top_p < 1 else None,
                body.min_p,
                body.repetition_penalty,
            ).check()
        except SamplingError as error:
            raise RequestError(str(error), str(error).split()[0]) from None
        if not 0 <= body.max_tokens <= self.max_tokens_limit:
            raise RequestError(
                f"max_tokens must be in [0, {self.max_tokens_limit}], got {body.max_tokens}", "max_tokens"
            )
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        tokenizer = self.model.tokenizer
        seed = body.seed if body.seed is not None else int.from_bytes(os.urandom(4), "little")
        rows, prompt_tokens = [], 0
        for p, prompt in enumerate(prompts):
            ids = tokenizer.encode(prompt) or [tokenizer.eos_id]
            prompt_tokens += len(ids)
            if len(ids) + body.max_tokens > self.context_limit:
                raise RequestError(
                    f"the prompt ({len(ids)} tokens) plus max_tokens ({body.max_tokens}) exceed the "
                    f"model's context of {self.context_limit} tokens",
                    "prompt",
                )
            for i in range(body.n):
                index = p * body.n + i
                rows.append(
                    Row(
                        ids,
                        body.max_tokens,
                        sampling,
                        np.asarray(row_key(seed, index)),
                        TextStream(tokenizer, stop, tokenizer.eos_id),
                        deliver_for(index),
                    )
                )
        return rows, prompt_tokens


def create_app(server: Server):
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException

    Completion, Chat, Generate = _schemas()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        server.engine.start()
        yield
        server.engine.stop()

    app = FastAPI(title="hrm", lifespan=lifespan)
    api_key = server.api_key

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        message = f"{where}: {first.get('msg', 'invalid request')}" if where else first.get("msg", "invalid request")
        return JSONResponse(error_body(message, param=where or None), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request, exc):
        return JSONResponse(error_body(str(exc.detail), code=exc.status_code), status_code=exc.status_code)

    @app.middleware("http")
    async def check_key(request: Request, call_next):
        if api_key and request.url.path != "/health" and request.headers.get("authorization") != f"Bearer {api_key}":
            return JSONResponse(
                error_body(
                    "missing or wrong API key (Authorization: Bearer KEY)",
                    "authentication_error",
                    code="invalid_api_key",
                ),
                status_code=401,
            )
        return await call_next(request)

    async def run_rows(prompts, body):
        """(rows, prompt tokens, asyncio queue of (index, event)); the rows are submitted."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        deliver_for = lambda index: lambda event: loop.call_soon_threadsafe(events.put_nowait, (index, event))
        rows, prompt_tokens = server.rows(prompts, body, deliver_for)
        for row in rows:
            if body.max_tokens == 0:
                row.deliver(("done", "length"))
            else:
                server.engine.submit(row)
        return rows, prompt_tokens, events

    async def collect(rows, events):
        texts, reasons, completion_tokens = [""] * len(rows), [None] * len(rows), 0
        while any(r is None for r in reasons):
            index, event = await events.get()
            if event[0] == "text":
                texts[index] += event[1]
            elif event[0] == "done":
                reasons[index], completion_tokens = event[1], completion_tokens + rows[index].tokens
            else:
                raise RuntimeError(event[1])
        return texts, reasons, completion_tokens

    def sse(rows, events, chunk):
        async def body():
            finished = 0
            try:
                while finished < len(rows):
                    index, event = await events.get()
                    if event[0] == "error":
                        yield f"data: {json.dumps(error_body(event[1], 'server_error'))}\n\n"
                        break
                    if event[0] == "done":
                        finished += 1
                    yield f"data: {json.dumps(chunk(index, event))}\n\n"
                yield "data: [DONE]\n\n"
            finally:
                for row in rows:
                    row.cancelled = True

        return StreamingResponse(body(), media_type="text/event-stream")

    def usage(prompt_tokens, completion_tokens):
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }

    def refuse(error: RequestError):
        return JSONResponse(error_body(str(error), param=error.param), status_code=400)

    async def respond(prompts, body, head, kind, chunk, choice):
        """Run the request's rows; stream ``chunk(index, event)`` events or return one ``kind`` object whose
        choices are ``choice(index, text, finish_reason)``, with the usage."""
        try:
            rows, prompt_tokens, events = await run_rows(prompts, body)
        except RequestError as error:
            return refuse(error)
        if body.stream:
            return sse(rows, events, lambda index, event: head | chunk(index, event))
        try:
            texts, reasons, completion_tokens = await collect(rows, events)
        except RuntimeError as error:
            return JSONResponse(error_body(str(error), "server_error"), status_code=500)
        choices = [choice(i, text, reason) for i, (text, reason) in enumerate(zip(texts, reasons))]
        return head | {"object": kind, "choices": choices, "usage": usage(prompt_tokens, completion_tokens)}

    @app.post("/v1/completions")
    async def completions(body: Completion):
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts:
            return refuse(RequestError("prompt must not be an empty list", "prompt"))
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": server.model_id}
        text_choice = lambda index, text, reason: {
            "index": index,
            "text": text,
            "finish_reason": reason,
            "logprobs": None,
        }

        def chunk(index, event):
            text, reason = (event[1], None) if event[0] == "text" else ("", event[1])
            return {"object": "text_completion", "choices": [text_choice(index, text, reason)]}

        return await respond(prompts, body, head, "text_completion", chunk, text_choice)

    @app.post("/v1/chat/completions")
    async def chat(body: Chat):
        prompt = dialogue_prompt([m.content for m in body.messages])
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": server.model_id}

        def chunk(index, event):
            delta, reason = ({"content": event[1]}, None) if event[0] == "text" else ({}, event[1])
            return {
                "object": "chat.completion.chunk",
                "choices": [{"index": index, "delta": delta, "finish_reason": reason}],
            }

        def choice(index, text, reason):
            return {"index": index, "message": {"role": "assistant", "content": text}, "finish_reason": reason}

        return await respond([prompt], body, head, "chat.completion", chunk, choice)

    @app.post("/generate")
    async def generate(body: Generate):
        request = Completion(prompt=body.prompt, max_tokens=body.max_tokens, temperature=body.temperature)
        try:
            rows, _, events = await run_rows([body.prompt], request)
            texts, _, _ = await collect(rows, events)
        except RequestError as error:
            return refuse(error)
        except RuntimeError as error:
            return JSONResponse(error_body(str(error), "server_error"), status_code=500)
        return {"response": texts[0]}

    @app.get("/health")
    async def health():
        return {
            "status": "ok",
            "model": server.model_id,
            "step": server.model.step,
            "decode_steps": server.engine.steps,
            "max_active_rows": server.engine.max_active,
            "max_prefill_rows": server.engine.max_prefill,
        }

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": server.model_id, "object": "model", "created": 0, "owned_by": "hrm"}]}

    return app


def main(argv: list[str]) -> None:
    parser = ArgumentParser(prog="python -m hrm.serve", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint", required=True, help="a run directory, one of its checkpoints/N folders or an hrm.export folder"
    )
    parser.add_argument("--step", default=None, help="checkpoint step (default: the latest)")
    parser.add_argument("--host", default="127.0.0.1", help="the address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000)
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
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        raise UsageError("hrm.serve needs FastAPI and uvicorn: pip install -e '.[serve]'") from None
    import hrm

    model = hrm.load(args.checkpoint, step=args.step, max_context=args.max_context)
    server = Server(
        model,
        model_id=os.path.basename(os.path.abspath(args.checkpoint)),
        max_batch=args.max_batch,
        max_tokens_limit=args.max_tokens_limit,
        api_key=args.api_key,
        max_context=args.max_context,
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

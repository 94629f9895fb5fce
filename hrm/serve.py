"""python -m hrm.serve --checkpoint DIR: an OpenAI-compatible HTTP server over one continuously batched decode loop.

FastAPI on uvicorn; README.md lists every flag ([--host 127.0.0.1] [--port 8000] [--api_key KEY] [--no-warmup] ...).

The command line only: the engine is ``hrm.serving.engine``, the request bodies ``hrm.serving.schemas``, the
HTTP app ``hrm.serving.app`` (README.md lists the endpoints and fields).
"""

import argparse
import os

import hrm
from hrm.cli import ArgumentParser, UsageError, run_main
from hrm.serving.engine import DEFAULT_MAX_TOKENS_LIMIT, DEFAULT_PREFILL_CHUNK, MIN_CHUNK, SSM_CONTEXT

try:  # the serve extra: FastAPI (with pydantic, which the request bodies need) and uvicorn
    import fastapi  # noqa: F401
    import uvicorn

    from hrm.serving.app import Server, create_app
except ImportError:
    uvicorn = None


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
    parser.add_argument(
        "--max_batch", type=int, default=8, help="most rows decoded together (slots come in powers of two up to it)"
    )
    parser.add_argument(
        "--prefill_chunk",
        type=int,
        default=DEFAULT_PREFILL_CHUNK,
        help=f"longest prefill chunk, a power of two >= {MIN_CHUNK} (longer prompts are fed in several; "
        f"default {DEFAULT_PREFILL_CHUNK})",
    )
    parser.add_argument(
        "--warmup",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="compile every batch and chunk bucket before listening, so no request waits for a compile "
        "(default on; --no-warmup starts at once and compiles each shape the first time it comes, off the "
        "decode thread)",
    )
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
    if args.prefill_chunk < MIN_CHUNK or args.prefill_chunk & (args.prefill_chunk - 1):
        raise UsageError(f"--prefill_chunk must be a power of two >= {MIN_CHUNK}, got {args.prefill_chunk}")
    if not 1 <= args.port <= 65535:
        raise UsageError(f"--port must be in [1, 65535], got {args.port}")
    if uvicorn is None:
        raise UsageError("hrm.serve needs FastAPI and uvicorn: pip install -e '.[serve]'")

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
        prefill_chunk=args.prefill_chunk,
    )
    if args.warmup:
        print(f"warming up: compiling {len(server.engine.programs())} programs (--no-warmup skips this)", flush=True)
        server.engine.warmup(log=lambda line: print(line, flush=True))
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

"""python -m hrm.sample --checkpoint DIR --prompt TEXT: print the model's continuation as it is decoded.

``--chat`` talks (hrm.chat), ``--benchmark`` measures prefill and decode tokens/s, ``--save_state FILE``
keeps the recurrent state after the prompt and ``--load_state FILE`` continues from it without re-reading
the prompt (prefix caching)."""

from __future__ import annotations

import sys

import hrm
from hrm import decoding
from hrm.chat import run_chat
from hrm.cli import ArgumentParser, UsageError, run_main
from hrm.decoding import check_stop
from hrm.inference import Sampling, SamplingError


def parse(argv: list[str]):
    parser = ArgumentParser(prog="python -m hrm.sample", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="a run directory (hrm.train --output_dir), one of its checkpoints/N folders, an "
        "hrm.export folder or a reference Mamba folder",
    )
    parser.add_argument("--step", default=None, help="checkpoint step (default: the latest)")
    parser.add_argument("--prompt", default=None, help="the text to continue")
    parser.add_argument("--prompt_file", default=None, help="read the prompt from this file")
    parser.add_argument("--num_samples", type=int, default=1, help="continuations of the prompt (seeded apart)")
    parser.add_argument("--max_tokens", type=int, default=200, help="new tokens per sample")
    parser.add_argument("--temperature", type=float, default=0.8, help="0 is greedy")
    parser.add_argument("--top_k", type=int, default=None)
    parser.add_argument("--top_p", type=float, default=None)
    parser.add_argument("--min_p", type=float, default=None)
    parser.add_argument("--repetition_penalty", type=float, default=1.0, help="> 1 discourages repeats (1: off)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stop", action="append", default=[], help="stop before this text (repeatable)")
    parser.add_argument(
        "--max_context",
        type=int,
        default=None,
        help="most positions (prompt + new tokens) of an attention model (default: model.max_cache_len)",
    )
    parser.add_argument("--chat", action="store_true", help="an interactive conversation (/help lists commands)")
    parser.add_argument(
        "--benchmark", action="store_true", help="prefill and decode tokens/s at context 128/1k/8k, batch 1 and 8"
    )
    parser.add_argument("--save_state", default=None, help="save the state after the prompt to this file")
    parser.add_argument("--load_state", default=None, help="continue from a state saved with --save_state")
    return parser.parse_args(argv)


def read_prompt(args) -> str | None:
    if args.prompt is not None and args.prompt_file is not None:
        raise UsageError("give --prompt or --prompt_file, not both")
    if args.prompt_file is not None:
        try:
            return open(args.prompt_file, encoding="utf-8").read()
        except (OSError, UnicodeDecodeError) as error:
            raise UsageError(f"cannot read --prompt_file '{args.prompt_file}' ({type(error).__name__})") from None
    return args.prompt


def capped_max_tokens(model, prompt_tokens: int, max_tokens: int) -> int:
    """``max_tokens`` within an attention model's context limit; says so on stderr when it cuts."""
    limit = model.generator.context_limit(model.params)
    if limit is None:
        return max_tokens
    room = limit - prompt_tokens
    if room < 1:
        raise UsageError(
            f"the prompt has {prompt_tokens} tokens, model.max_cache_len is {limit}; shorten it or "
            f"raise the limit with --max_context"
        )
    if max_tokens > room:
        print(
            f"note: --max_tokens {max_tokens} capped to {room}: the prompt ({prompt_tokens} tokens) plus new "
            f"tokens must fit model.max_cache_len ({limit}; raise it with --max_context)",
            file=sys.stderr,
        )
    return min(max_tokens, room)


def main(argv: list[str]) -> None:
    args = parse(argv)

    try:
        sampling = Sampling(args.temperature, args.top_k, args.top_p, args.min_p, args.repetition_penalty).check()
        check_stop(args.stop)
    except SamplingError as error:
        raise UsageError(str(error)) from None
    if args.max_tokens < 0:
        raise UsageError(f"max_tokens must be >= 0, got {args.max_tokens}")
    if args.num_samples < 1:
        raise UsageError(f"num_samples must be >= 1, got {args.num_samples}")
    prompt = read_prompt(args)
    if not (args.chat or args.benchmark or args.load_state) and not prompt:
        raise UsageError("give the text to continue with --prompt or --prompt_file (or use --chat)")

    model = hrm.load(args.checkpoint, step=args.step, max_context=args.max_context)
    try:
        if args.benchmark:
            print(decoding.benchmark_table(decoding.benchmark(model, log=lambda line: print(line, file=sys.stderr))))
        elif args.chat:
            run_chat(model, sampling, args.max_tokens, args.seed)
        else:
            continue_prompt(model, args, prompt or "", sampling)
    except SamplingError as error:
        raise UsageError(str(error)) from None


def continue_prompt(model, args, prompt: str, sampling) -> None:
    prefix, before = None, 0
    if args.load_state:
        prefix, before = decoding.load_state(args.load_state, model)
    ids = model.tokenizer.encode(prompt)
    max_tokens = capped_max_tokens(model, before + len(ids), args.max_tokens)
    if args.save_state:
        state = model.generator.start(model.params, [ids or [model.tokenizer.eos_id]], 0, prefix=prefix)
        decoding.save_state(args.save_state, state, model, before + len(ids))
        print(f"saved the state after {before + len(ids)} tokens to {args.save_state}", file=sys.stderr)
    streams, pieces = decoding.text_streams(
        model, [prompt] * args.num_samples, max_tokens, sampling, args.seed, args.stop, prefix=prefix
    )
    if args.num_samples == 1:
        print(prompt, end="", flush=True)
        for _, piece in pieces:
            print(piece, end="", flush=True)
        print()
        return
    for _ in pieces:
        pass
    for i, stream in enumerate(streams):
        print(f"--- sample {i + 1} ---\n{prompt}{stream.text}")


def cli() -> None:
    """The console script (pyproject.toml [project.scripts])."""
    run_main(main)


if __name__ == "__main__":
    cli()

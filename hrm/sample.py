"""python -m hrm.sample --checkpoint DIR --prompt TEXT [--max_tokens N] [--temperature T] [--top_k K]
[--top_p P] [--seed S]: print the model's continuation of the prompt."""

from __future__ import annotations

from hrm.cli import ArgumentParser, UsageError, run_main


def main(argv: list[str]) -> None:
    parser = ArgumentParser(prog="python -m hrm.sample", description="Continue a prompt with a trained model.")
    parser.add_argument("--checkpoint", required=True, help="a run directory written by hrm.train")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--max_tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 is greedy")
    parser.add_argument("--top_k", type=int, default=None)
    parser.add_argument("--top_p", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    args = parser.parse_args(argv)

    from hrm.inference import SamplingError, check_sampling
    try:
        check_sampling(args.temperature, args.top_k, args.top_p, args.max_tokens)
    except SamplingError as error:
        raise UsageError(str(error).replace("max_new_tokens", "max_tokens")) from None
    if not args.prompt:
        raise UsageError("--prompt is empty; give some text to continue")
    import hrm
    model = hrm.load(args.checkpoint, step=args.step)
    text = model.generate([args.prompt], max_new_tokens=args.max_tokens, temperature=args.temperature,
                          top_k=args.top_k, top_p=args.top_p, seed=args.seed)[0]
    print(args.prompt + text)


def cli() -> None:
    """The console script (pyproject.toml [project.scripts])."""
    run_main(main)


if __name__ == "__main__":
    cli()

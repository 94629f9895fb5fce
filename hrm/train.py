"""python -m hrm.train --config configs/tiny.py | --model_size NAME | --init_from RUN_DIR
[--training_preset fast|default|careful] [--output_dir DIR] [--allow_data_change] [--config.section.key=value ...]
[--batch_size B] [--accumulation_steps N] [--vram_auto | --vram 24gb] [--vram_safety_margin MB]
[--coordinator_address HOST:PORT --num_processes N --process_id I]

Re-running the same command on a directory with checkpoints resumes from the latest one. ``--init_from``
fine-tunes: the run starts from RUN_DIR's weights (e.g. ``python -m hrm.convert`` output) with RUN_DIR's model
and tokenizer; the data and training settings come from --config when given, else from RUN_DIR.
"""

from __future__ import annotations

from pathlib import Path

from hrm.cli import ArgumentParser, UsageError, add_config_source, run_main
from hrm.config import (DEFAULT_SAFETY_MARGIN_MB, TRAINING_PRESETS, Config, apply_override, load_config_file,
                        model_size_config)

OVERRIDE_PREFIX = "--config."
DATA_FLAGS = {  # the trainer guide's data flags, shorthands for --config.data.<flag>
    "data_dir": "a folder of .txt/.py/.md/.json files",
    "data_path": "a dialogue JSONL file ({context: [...], response, source} per line)",
    "dataset": "a local .jsonl/.json/.parquet/.csv file, a save_to_disk folder or a Hugging Face dataset name",
    "dataset_split": "the dataset split (default train)",
    "text_column": "comma-separated text columns, joined with a blank line (default text)",
    "tokenizer": "byte, cl100k_base, gpt2, r50k_base, o200k_base or a .tiktoken file (the model's vocab follows it)",
}


def parse_overrides(extra: list[str]) -> list[tuple[str, str]]:
    """``--config.a.b=v`` or ``--config.a.b v`` pairs from the arguments argparse did not know."""
    pairs, i = [], 0
    while i < len(extra):
        arg = extra[i]
        if not arg.startswith(OVERRIDE_PREFIX):
            raise UsageError(f"unrecognized argument '{arg}'; overrides look like --config.train.steps=100")
        key, eq, value = arg[len(OVERRIDE_PREFIX):].partition("=")
        if not eq:
            if i + 1 >= len(extra):
                raise UsageError(f"override '{arg}' needs a value, e.g. {arg}=VALUE")
            value, i = extra[i + 1], i + 1
        pairs.append((key, value))
        i += 1
    return pairs


def apply_preset(config: Config, preset: str) -> None:
    if preset not in TRAINING_PRESETS:
        raise UsageError(f"unknown --training_preset '{preset}'; choose one of {', '.join(TRAINING_PRESETS)}")
    for key, value in TRAINING_PRESETS[preset].items():
        setattr(config.train, key, value)


def build_config(config_path: str | None, overrides: list[tuple[str, str]], preset: str | None = None,
                 init_from: str | None = None) -> Config:
    """The config file's (or, with none, ``init_from``'s) config; ``init_from``'s model and tokenizer; the preset;
    then the overrides."""
    config = load_config_file(config_path) if config_path else None
    if init_from:
        from hrm.training.checkpoint import read_run_config
        start = read_run_config(Path(init_from))
        config = config or start
        config.model, config.data.tokenizer = start.model, start.data.tokenizer
    if preset is not None:
        apply_preset(config, preset)
    for key, value in overrides:
        apply_override(config, key, value)
    return config


def main(argv: list[str]) -> None:
    config, args = parse_command_line(argv)
    from hrm.training.loop import VramRequest, init_distributed, train  # heavy imports after the arguments
    if args.coordinator_address:
        init_distributed(args.coordinator_address, args.num_processes, args.process_id)
    vram = None
    if args.vram_auto or args.vram:
        from hrm.training.memory import parse_vram
        vram = VramRequest(parse_vram(args.vram) if args.vram else None, args.vram_safety_margin)
    train(config, Path(args.output_dir or Path("runs") / config.name), vram=vram,
          allow_data_change=args.allow_data_change, init_from=args.init_from)


def parse_command_line(argv: list[str]):
    """(config, parsed flags) from the command line: config file or model size, preset, then overrides."""
    parser = ArgumentParser(prog="python -m hrm.train", description=__doc__.splitlines()[0])
    source = add_config_source(parser)
    source.required = False   # --init_from alone is enough
    parser.add_argument("--init_from", help="fine-tune: start from this run directory's weights, model and tokenizer "
                                            "(e.g. python -m hrm.convert output)")
    parser.add_argument("--training_preset", help="fast, default or careful (steps, lr, warmup, save/eval "
                                                  "interval; before --config.* overrides)")
    parser.add_argument("--output_dir", help="run directory (default runs/<config name>)")
    for flag, help_text in DATA_FLAGS.items():
        parser.add_argument(f"--{flag}", help=help_text)
    parser.add_argument("--seed", type=int, help="random seed (train.seed)")
    parser.add_argument("--batch_size", type=int, help="global batch per optimizer step (train.batch_size)")
    parser.add_argument("--accumulation_steps", type=int,
                        help="micro-batches per optimizer step (train.accumulation_steps)")
    memory = parser.add_argument_group("GPU memory (python -m hrm.memtest shows the same analysis)")
    vram = memory.add_mutually_exclusive_group()
    vram.add_argument("--vram_auto", action="store_true",
                      help="choose the largest micro-batch that fits the device's memory, keeping the global batch")
    vram.add_argument("--vram", help="as --vram_auto for this much memory: 24gb, 24 or 20.5 (GB = GiB)")
    memory.add_argument("--vram_safety_margin", type=float, default=DEFAULT_SAFETY_MARGIN_MB,
                        help=f"MB kept free (default {DEFAULT_SAFETY_MARGIN_MB})")
    parser.add_argument("--allow_data_change", action="store_true",
                        help="resume although the data changed (the exact resume of the data order is lost)")
    multi = parser.add_argument_group("multi-process (one process per host; run the same command on each)")
    multi.add_argument("--coordinator_address", help="HOST:PORT of process 0, reachable from every host")
    multi.add_argument("--num_processes", type=int, help="number of processes in the run")
    multi.add_argument("--process_id", type=int, help="this process's index, 0 .. num_processes-1")
    args, extra = parser.parse_known_args(argv)
    check_distributed_flags(args)
    shorthand = [(f"data.{flag}", getattr(args, flag)) for flag in DATA_FLAGS if getattr(args, flag) is not None]
    if args.tokenizer is not None:
        shorthand.append(("model.vocab_size", "0"))   # 0: the vocab follows the chosen tokenizer
    for flag, key in (("seed", "train.seed"), ("batch_size", "train.batch_size"),
                      ("accumulation_steps", "train.accumulation_steps")):
        if getattr(args, flag) is not None:
            shorthand.append((key, str(getattr(args, flag))))
    if args.vram_safety_margin < 0:
        raise UsageError(f"--vram_safety_margin must be >= 0 MB, got {args.vram_safety_margin:g}")
    if not (args.config or args.model_size or args.init_from):
        raise UsageError("one of --config FILE, --model_size NAME or --init_from RUN_DIR is required")
    config_path = args.config or (model_size_config(args.model_size) if args.model_size else None)
    config = build_config(config_path, shorthand + parse_overrides(extra), args.training_preset, args.init_from)
    return config, args


def check_distributed_flags(args) -> None:
    given = [args.coordinator_address is not None, args.num_processes is not None, args.process_id is not None]
    if any(given) and not all(given):
        raise UsageError("a multi-process run needs all of --coordinator_address HOST:PORT, --num_processes N "
                         "and --process_id I")
    if all(given) and not (args.num_processes >= 1 and 0 <= args.process_id < args.num_processes):
        raise UsageError(f"--process_id must be in 0..{args.num_processes - 1} with --num_processes "
                         f"{args.num_processes} >= 1, got --process_id {args.process_id}")


def cli() -> None:
    """The console script (pyproject.toml [project.scripts])."""
    run_main(main)


if __name__ == "__main__":
    cli()

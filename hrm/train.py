"""python -m hrm.train --config configs/tiny.py [--output_dir DIR] [--config.section.key=value ...]

Re-running the same command on a directory with checkpoints resumes from the latest one.
"""

from __future__ import annotations

from pathlib import Path

from hrm.cli import ArgumentParser, UsageError, run_main
from hrm.config import Config, apply_override, load_config_file

OVERRIDE_PREFIX = "--config."
DATA_FLAGS = {  # the user's documents' data flags, shorthands for --config.data.<flag>
    "data_dir": "a folder of .txt/.py/.md/.json files",
    "data_path": "a dialogue JSONL file ({context: [...], response, source} per line)",
    "dataset": "a local .jsonl/.json/.parquet/.csv file, a save_to_disk folder or a Hugging Face dataset name",
    "dataset_split": "the dataset split (default train)",
    "text_column": "comma-separated text columns, joined with a blank line (default text)",
    "tokenizer": "byte, cl100k_base, gpt2, r50k_base, o200k_base or a .tiktoken file",
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


def build_config(config_path: str, overrides: list[tuple[str, str]]) -> Config:
    config = load_config_file(config_path)
    for key, value in overrides:
        apply_override(config, key, value)
    return config


def main(argv: list[str]) -> None:
    parser = ArgumentParser(prog="python -m hrm.train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="a Python config file with get_config()")
    parser.add_argument("--output_dir", help="run directory (default runs/<config name>)")
    for flag, help_text in DATA_FLAGS.items():
        parser.add_argument(f"--{flag}", help=help_text)
    parser.add_argument("--seed", type=int, help="random seed (train.seed)")
    args, extra = parser.parse_known_args(argv)
    shorthand = [(f"data.{flag}", getattr(args, flag)) for flag in DATA_FLAGS if getattr(args, flag) is not None]
    if args.seed is not None:
        shorthand.append(("train.seed", str(args.seed)))
    config = build_config(args.config, shorthand + parse_overrides(extra))
    from hrm.training.loop import train  # heavy imports after the arguments are known to be good
    train(config, Path(args.output_dir or Path("runs") / config.name))


if __name__ == "__main__":
    run_main(main)

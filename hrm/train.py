"""python -m hrm.train --config configs/tiny.py [--output_dir DIR] [--config.section.key=value ...]

Re-running the same command on a directory with checkpoints resumes from the latest one.
"""

from __future__ import annotations

from pathlib import Path

from hrm.cli import ArgumentParser, UsageError, run_main
from hrm.config import Config, apply_override, load_config_file

OVERRIDE_PREFIX = "--config."


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
    args, extra = parser.parse_known_args(argv)
    config = build_config(args.config, parse_overrides(extra))
    from hrm.training.loop import train  # heavy imports after the arguments are known to be good
    train(config, Path(args.output_dir or Path("runs") / config.name))


if __name__ == "__main__":
    run_main(main)

"""Shared command-line plumbing: one-line errors with exit code 2, never a traceback for bad input."""

from __future__ import annotations

import argparse
import sys

from hrm.config import ConfigError


class UsageError(ValueError):
    """Bad command-line input; reported as one line."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line naming the problem (and exit code 2)."""

    def error(self, message: str):
        raise UsageError(f"{message} (see {self.prog} --help)")


def add_config_source(parser: argparse.ArgumentParser):
    """The required choice of a config: ``--config FILE`` or ``--model_size NAME``; returns the group."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="a Python config file with get_config()")
    source.add_argument("--model_size",
                        help="a documented model size such as hybrid-small (an unknown name lists them all)")
    return source


def user_errors() -> tuple[type[Exception], ...]:
    from hrm.data import DataError
    from hrm.training.checkpoint import CheckpointError
    from hrm.tokenizer import TokenizerError
    from hrm.training.loop import TrainingError
    from kernels import BackendUnavailable
    return (ConfigError, UsageError, DataError, CheckpointError, TrainingError, TokenizerError, BackendUnavailable)


def run_main(main, argv=None) -> None:
    """Call ``main(argv)``; user errors print ``error: ...`` on one line and exit 2 (1 for training)."""
    try:
        main(sys.argv[1:] if argv is None else argv)
    except user_errors() as error:
        print(f"error: {error}", file=sys.stderr)
        from hrm.training.loop import TrainingError
        sys.exit(1 if isinstance(error, TrainingError) else 2)

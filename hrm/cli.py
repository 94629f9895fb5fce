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

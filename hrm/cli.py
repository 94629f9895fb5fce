"""Shared command-line plumbing: one-line errors with exit code 2, never a traceback for bad input."""

from __future__ import annotations

import argparse
import sys

from hrm.errors import UserError


class UsageError(UserError):
    """Bad command-line input; reported as one line."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line naming the problem (and exit code 2)."""

    def error(self, message: str):
        raise UsageError(f"{message} (see {self.prog} --help)")


def add_config_source(parser: argparse.ArgumentParser):
    """The required choice of a config: ``--config FILE`` or ``--model_size NAME``; returns the group."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="a Python config file with get_config()")
    source.add_argument(
        "--model_size", help="a documented model size such as hybrid-small (an unknown name lists them all)"
    )
    return source


def run_main(main, argv=None) -> None:
    """Call ``main(argv)``; a ``UserError`` (or a scan backend that cannot run here) prints ``error: ...`` on one
    line and exits with its code (2; 1 for training that cannot go on)."""
    from kernels import BackendUnavailable  # kernels/ stays free of hrm imports, so its error is not a UserError

    try:
        main(sys.argv[1:] if argv is None else argv)
    except (UserError, BackendUnavailable) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(getattr(error, "exit_code", 2))

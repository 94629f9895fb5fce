"""Shared command-line plumbing: one-line errors with exit code 2, never a traceback for bad input."""

from __future__ import annotations

import argparse
import os
import signal
import sys

from hrm.errors import UsageError, UserError
from hrm.kernels import BackendUnavailable  # kernels/ stays free of hrm imports, so its error is not a UserError

__all__ = ["ArgumentParser", "UsageError", "add_config_source", "run_main"]


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


INTERRUPTED = 128 + signal.SIGINT  # the exit code of a Ctrl-C, as a shell reports one


def run_main(main, argv=None) -> None:
    """Call ``main(argv)``; a ``UserError`` (or a scan backend that cannot run here) prints ``error: ...`` on one
    line and exits with its code (2; 1 for training that cannot go on). Ctrl-C (outside training's own handler,
    which saves a checkpoint first) prints one line and exits 130; during the imports before this, hrm/__init__.py
    has it end the process quietly."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_DFL:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        main(sys.argv[1:] if argv is None else argv)
    except (UserError, BackendUnavailable) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(getattr(error, "exit_code", 2))
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C)", file=sys.stderr, flush=True)
        sys.stdout.flush()
        # no interpreter shutdown: with XLA still compiling in its threads it can crash (SIGSEGV); the `finally`
        # blocks on the way here (run lock, checkpoint manager) have run
        os._exit(INTERRUPTED)

"""hrm: Hybrid Recursive Mamba language models in JAX/Flax."""

import signal as _signal
import sys as _sys
from pathlib import Path as _Path

if (_sys.argv[:1] == ["-m"] or _Path(_sys.argv[0]).name.startswith("hrm-")) and _signal.getsignal(
    _signal.SIGINT
) is _signal.default_int_handler:
    # A command (python -m hrm.X, a console script) is starting: until hrm.cli.run_main takes Ctrl-C over, it
    # ends the process quietly, as SIGTERM does, instead of a KeyboardInterrupt traceback from the imports.
    _signal.signal(_signal.SIGINT, _signal.SIG_DFL)

from hrm.api import LoadedModel, load  # noqa: E402

__all__ = ["LoadedModel", "load"]

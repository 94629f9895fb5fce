"""The base of every problem a user can fix: commands print its message as one line, never a traceback."""


class UserError(ValueError):
    """Bad input or an unusable resource (flag, config, data, tokenizer, checkpoint, sampling setting). The message
    is one line naming the problem and the fix; ``hrm.cli.run_main`` prints it and exits with ``exit_code``."""

    exit_code = 2


class UsageError(UserError):
    """Bad command-line input (a flag, an override, a missing optional package); reported as one line."""

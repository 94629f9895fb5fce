"""What every data source yields, and the error a data problem raises (shared by sources.py and synthetic.py)."""

from __future__ import annotations

import dataclasses

from hrm.errors import UserError

SYNTHETIC_PREFIX = "synthetic:"  # --dataset synthetic:NAME, hrm/data/synthetic.py


class DataError(UserError):
    """A data problem the user can fix; the message is one line naming it."""


@dataclasses.dataclass
class Document:
    text: str
    prompt_chars: int = 0  # the first prompt_chars characters are context (no loss if completion_only)
    plain: bool = False  # from a source without prompts (text files, one column): completion_only cannot apply

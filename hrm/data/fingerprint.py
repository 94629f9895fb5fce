"""The data a run trains on, as a fingerprint saved in its run directory (``data.json``).

A resumed run compares it with the data it finds: a changed corpus (sources, document sizes, tokenizer,
held-out split) would silently break the exact resume of the data order, so it is refused unless the
user allows it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from hrm.data.cache import TokenizedCorpus
from hrm.data.pipeline import split_documents
from hrm.data.sources import DataError

FINGERPRINT_FILE = "data.json"


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array, np.int64).tobytes()).hexdigest()[:16]


def data_fingerprint(cfg_data, corpus: TokenizedCorpus) -> dict:
    """What identifies the run's data: sources, sizes, tokenizer and loss mask, and the held-out split."""
    _, held_out = split_documents(len(corpus), cfg_data.eval_fraction)
    fingerprint = {
        "sources": corpus.meta["sources"],
        "tokenizer": corpus.meta["tokenizer"],
        "completion_only": cfg_data.completion_only,
        "documents": len(corpus),
        "tokens": int(corpus.meta["tokens"]),
        "document sizes": _digest(np.diff(corpus.offsets)),
        "eval_fraction": cfg_data.eval_fraction,
        "held-out documents": _digest(held_out),
    }
    return json.loads(json.dumps(fingerprint))  # as it reads back from the file


def check_data_fingerprint(
    run_dir: Path, fingerprint: dict, resuming: bool, allow_change: bool, log=print, write: bool = True
) -> None:
    """Refuse to resume ``run_dir`` on data other than it was trained on (``DataError``), unless
    ``allow_change``; then (on the writing process) save ``fingerprint`` as the run's data."""
    path = Path(run_dir) / FINGERPRINT_FILE
    saved = json.loads(path.read_text()) if resuming and path.exists() else fingerprint
    changed = [f"{key} {saved.get(key)} -> {value}" for key, value in fingerprint.items() if saved.get(key) != value]
    if changed and not allow_change:
        raise DataError(
            f"the data of the run in '{run_dir}' changed ({'; '.join(changed)}); pass "
            f"--allow_data_change to resume on it anyway, or a new --output_dir"
        )
    if changed:
        log(
            f"data changed ({'; '.join(changed)}); resuming on it (--allow_data_change): the exact resume of "
            f"the data order is lost"
        )
    if write:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(fingerprint, indent=1))
        os.replace(tmp, path)

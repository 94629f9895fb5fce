"""Documents → pieces: what one row (``seq_len + 1`` tokens: inputs and shifted targets) trains.

A piece is a window ``[start, end)`` of one document whose targets are ``[first_target, end)``; the
tokens before ``first_target`` are context only. A document's targets are its tokens after the first one,
or, when a prompt is excluded from the loss (``completion_only``), its completion. They are cut into runs
of at most ``seq_len``; each run becomes one piece that reaches back as far into the document as a row
holds. So a document that fits a row is one piece, whole; a longer one is cut into row-sized pieces whose
last one reads the text before its targets again (masked); and an answer keeps the end of its question
(the prompt is truncated on the left), never starting a row without it. A prompt alone is never a piece.
Across an epoch every target of every document is trained exactly once.
"""

from __future__ import annotations

import numpy as np

from hrm.data.cache import TokenizedCorpus


def document_pieces(corpus: TokenizedCorpus, indices: np.ndarray, seq_len: int) -> np.ndarray:
    """(n_pieces, 3) int64 rows ``(start, end, first_target)``: the corpus offsets of every piece of the
    documents ``indices``, in document order."""
    starts, first, ends, counts = _targets(corpus, indices, seq_len)
    doc = np.repeat(np.arange(len(starts)), counts)
    k = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    target = first[doc] + k * seq_len
    end = np.minimum(target + seq_len, ends[doc])
    start = np.maximum(starts[doc], end - seq_len - 1)
    return np.stack([start, end, target], axis=1)


def _targets(corpus: TokenizedCorpus, indices: np.ndarray, seq_len: int):
    """Per document: (start, first target, end, number of pieces). The cache masks a prompt, then trains
    the rest (``_encode_documents`` in hrm/data/cache.py), so the first target follows the trained count."""
    indices = np.asarray(indices, np.int64)
    trained = corpus.trained[indices]
    starts, ends = corpus.offsets[indices], corpus.offsets[indices + 1]
    first = np.maximum(starts + 1, ends - trained)
    return starts, first, ends, -(-(ends - first) // seq_len)  # ceil(targets / seq_len) pieces


def piece_summary(corpus: TokenizedCorpus, indices: np.ndarray, seq_len: int) -> tuple[str, float]:
    """(one line, fraction of documents longer than a row): what became of the documents ``indices``."""
    starts, first, ends, counts = _targets(corpus, indices, seq_len)
    long, split = ends - starts > seq_len + 1, counts > 1
    unread = np.maximum(0, np.minimum(first + seq_len, ends) - seq_len - 1 - starts)  # prompt before row 1
    text = (
        f"{len(starts):,} documents, rows of {seq_len + 1} tokens (data.seq_len {seq_len} + 1): "
        f"{np.sum(~long):,} fit a row and stay whole, {np.sum(long):,} are longer"
    )
    if np.any(split):
        text += f"; {np.sum(split):,} cut into {counts[split].sum():,} row-sized pieces (each its own segment)"
    if np.any(unread):
        text += (
            f"; {np.sum(unread > 0):,} prompts truncated on the left to fit their answer "
            f"({unread.sum():,} prompt tokens never read)"
        )
    return text, float(np.mean(long)) if len(starts) else 0.0

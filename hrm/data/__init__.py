"""Data sources, the tokenized cache and the grain pipeline that turns them into batches."""

import itertools
import math

import numpy as np

from hrm.data.cache import TokenizedCorpus, tokenized_corpus
from hrm.data.fingerprint import check_data_fingerprint, data_fingerprint
from hrm.data.pieces import document_pieces, piece_summary
from hrm.data.pipeline import packed_batches, packing_efficiency, piece_dataset, split_batch, split_documents
from hrm.data.sources import DataError

__all__ = [
    "DataError",
    "TokenizedCorpus",
    "check_data_fingerprint",
    "data_fingerprint",
    "document_batches",
    "document_pieces",
    "eval_batches",
    "holds_out",
    "packed_batches",
    "packing_efficiency",
    "packing_summary",
    "piece_dataset",
    "split_batch",
    "split_documents",
    "tokenized_corpus",
    "training_batches",
]

EVAL_SEED = 0  # the held-out pieces' fixed shuffle
TRUNCATION_WARNING = 0.05
SUMMARY_ROWS = 256  # rows packed at start-up to report the packing efficiency


def training_batches(cfg_data, corpus: TokenizedCorpus, batch_size: int, seed: int):
    """The endless, shuffled training IterDataset of global batches (the same on every process)."""
    train_docs, _ = split_documents(len(corpus), cfg_data.eval_fraction)
    pieces = piece_dataset(corpus, train_docs, cfg_data.seq_len, seed)
    return packed_batches(pieces, cfg_data.seq_len, batch_size, cfg_data.num_threads, cfg_data.prefetch, seed)


def eval_batches(cfg_data, corpus: TokenizedCorpus, batch_size: int, n_batches: int) -> list[dict]:
    """The same held-out batches every time: at most ``n_batches`` of one pass over a fixed shuffle of the
    held-out documents' pieces, so each held-out target counts once per evaluation however small the held-out
    set (empty when nothing is held out)."""
    if not holds_out(cfg_data, corpus, n_batches):
        return []
    _, eval_docs = split_documents(len(corpus), cfg_data.eval_fraction)
    return list(itertools.islice(document_batches(cfg_data, corpus, eval_docs, batch_size), n_batches))


def holds_out(cfg_data, corpus: TokenizedCorpus, n_batches: int) -> bool:
    """Whether ``eval_batches`` gives any batch: ``n_batches`` asked for and a held-out document to fill them."""
    return n_batches > 0 and len(split_documents(len(corpus), cfg_data.eval_fraction)[1]) > 0


def document_batches(cfg_data, corpus: TokenizedCorpus, indices, batch_size: int):
    """Every target of the documents ``indices`` exactly once: one epoch of their pieces in a fixed shuffle,
    packed into split batches (the last one filled up with empty, fully masked rows)."""
    pieces = piece_dataset(corpus, indices, cfg_data.seq_len, EVAL_SEED, epochs=1)
    for batch in packed_batches(pieces, cfg_data.seq_len, batch_size, 1, 2, EVAL_SEED, drop_remainder=False):
        missing = batch_size - len(batch["tokens"])
        yield split_batch({k: np.pad(v, [(0, missing)] + [(0, 0)] * (v.ndim - 1)) for k, v in batch.items()})


def packing_summary(cfg_data, corpus: TokenizedCorpus, batch_size: int, seed: int) -> list[str]:
    """Start-up lines: what became of the training documents, the packing efficiency of the first rows, and
    a warning when more than 5% of the documents do not fit a row."""
    train_docs, _ = split_documents(len(corpus), cfg_data.eval_fraction)
    text, long = piece_summary(corpus, train_docs, cfg_data.seq_len)
    iterator = iter(training_batches(cfg_data, corpus, batch_size, seed))
    batches = [split_batch(next(iterator)) for _ in range(math.ceil(SUMMARY_ROWS / batch_size))]
    efficiency = sum(packing_efficiency(b) for b in batches) / len(batches)
    lines = [
        f"packing: {text}; packing efficiency {efficiency:.1%} (document tokens / row tokens, first "
        f"{len(batches) * batch_size} rows)"
    ]
    if long > TRUNCATION_WARNING:
        lines.append(
            f"warning: {long:.0%} of the training documents are longer than a row and are cut or "
            f"truncated; raise data.seq_len (now {cfg_data.seq_len}) to keep more of them whole"
        )
    return lines

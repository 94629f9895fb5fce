"""grain input pipeline: document pieces (shuffled by seed) → packed rows with segment ids → batches.

Documents are cut into pieces of one row (``seq_len + 1`` tokens, consecutive pieces overlapping by the
one token that is the last target of a piece and the first input of the next), and the pieces, not whole
documents, are shuffled: a long file then spreads over the whole epoch instead of filling hundreds of
consecutive batches. Every piece is its own segment (the models restart their state there) and no target
crosses a segment boundary, so across an epoch every token after a document's first is a target exactly
once, always predicted from its own document.
Every stage is grain's Dataset API, so the iterator's state is small, checkpoints with the model
and restores to the exact next batch.
"""

from __future__ import annotations

import grain
import numpy as np

from hrm.data.cache import TokenizedCorpus


def split_documents(n_documents: int, eval_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train, eval) document indices: a fixed permutation, so the split never depends on the run seed."""
    order = np.random.default_rng(12345).permutation(n_documents)
    n_eval = 0 if eval_fraction == 0 or n_documents < 2 else max(1, round(n_documents * eval_fraction))
    return np.sort(order[n_eval:]), np.sort(order[:n_eval])


def document_pieces(corpus: TokenizedCorpus, indices: np.ndarray, seq_len: int) -> np.ndarray:
    """(n_pieces, 2) int64 rows ``(start, end)``: the token offsets in the corpus of every piece of the
    documents ``indices``, in document order; piece ``k`` of a document is its tokens
    ``[k·seq_len, k·seq_len + seq_len + 1)``."""
    starts, ends = corpus.offsets[indices], corpus.offsets[np.asarray(indices) + 1]
    counts = np.maximum(1, -(-(ends - starts - 1) // seq_len))           # ceil((length - 1) / seq_len)
    first = np.repeat(starts, counts)
    k = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    start = first + k * seq_len
    return np.stack([start, np.minimum(start + seq_len + 1, np.repeat(ends, counts))], axis=1)


def piece_dataset(corpus: TokenizedCorpus, indices: np.ndarray, seq_len: int, seed: int | None) -> grain.MapDataset:
    """Endless document pieces ({"tokens", "loss_mask"}), reshuffled every epoch when ``seed`` is given."""
    ds = grain.MapDataset.source(document_pieces(corpus, indices, seq_len))
    if seed is not None:
        ds = ds.seed(seed).shuffle()
    return ds.repeat(None).map(lambda piece: corpus.piece(int(piece[0]), int(piece[1])))


def packed_batches(pieces: grain.MapDataset, seq_len: int, batch_size: int, num_threads: int,
                   prefetch: int) -> grain.IterDataset:
    """Rows of ``seq_len + 1`` tokens (inputs and shifted targets) with segment ids and positions."""
    rows = grain.experimental.ConcatThenSplitIterDataset(
        pieces.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)),
        length_struct={"tokens": seq_len + 1, "loss_mask": seq_len + 1})
    return rows.batch(batch_size, drop_remainder=True)


def split_batch(batch: dict) -> dict:
    """A packed batch as model inputs, next-token targets, a loss mask and the inputs' segment ids.

    A target counts when it is in the same segment as its input (never across pieces, nor into padding)
    and the data's loss mask keeps it (``completion_only``)."""
    tokens, segments = batch["tokens"], batch["tokens_segment_ids"]
    mask = (segments[:, 1:] == segments[:, :-1]) & (segments[:, 1:] != 0) & (batch["loss_mask"][:, 1:] != 0)
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "mask": mask, "segment_ids": segments[:, :-1]}

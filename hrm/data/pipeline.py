"""grain input pipeline: document pieces (shuffled by seed) → rows packed with whole pieces → batches.

Pieces (``hrm/data/pieces.py``: a document that fits a row is one piece; a longer one is cut into
row-sized pieces) are shuffled, not whole documents, so a long file spreads over the epoch instead of
filling consecutive batches. Rows of ``seq_len + 1`` tokens are filled with whole pieces by first-fit
packing over a group of bins (grain's ``FirstFitPackIterDataset``), the rest of a row padded with segment
id 0 and masked. Every piece is its own segment (the models restart their state there), so a packed row
gives each document the logits it would get alone, and no target crosses a segment boundary.
Every stage is grain's Dataset API, so the iterator's state is small, checkpoints with the model
and restores to the exact next batch.
"""

from __future__ import annotations

import grain
import numpy as np

from hrm.data.cache import TokenizedCorpus
from hrm.data.pieces import document_pieces

PACKING_BINS = 64  # rows filled together (at least a batch): more bins leave less padding


def split_documents(n_documents: int, eval_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train, eval) document indices: a fixed random sample across all sources (never the run seed's)."""
    order = np.random.default_rng(12345).permutation(n_documents)
    n_eval = 0 if eval_fraction == 0 or n_documents < 2 else max(1, round(n_documents * eval_fraction))
    return np.sort(order[n_eval:]), np.sort(order[:n_eval])


def piece_dataset(
    corpus: TokenizedCorpus, indices: np.ndarray, seq_len: int, seed: int, epochs: int | None = None
) -> grain.MapDataset:
    """The pieces ({"tokens", "loss_mask"}) of the documents ``indices``, shuffled by ``seed`` anew every
    epoch, for ``epochs`` epochs (None: endless)."""
    ds = grain.MapDataset.source(document_pieces(corpus, indices, seq_len)).seed(seed).shuffle()
    return ds.repeat(epochs).map(lambda piece: corpus.piece(*map(int, piece)))


def packed_batches(
    pieces: grain.MapDataset,
    seq_len: int,
    batch_size: int,
    num_threads: int,
    prefetch: int,
    seed: int = 0,
    drop_remainder: bool = True,
) -> grain.IterDataset:
    """Batches of rows of ``seq_len + 1`` tokens (inputs and shifted targets) packed with whole pieces, with
    segment ids (0: padding) and positions; a finite dataset's last, smaller batch is kept unless
    ``drop_remainder``."""
    rows = grain.experimental.FirstFitPackIterDataset(
        pieces.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)),
        length_struct={"tokens": seq_len + 1, "loss_mask": seq_len + 1},
        num_packing_bins=max(batch_size, PACKING_BINS),
        seed=seed,
    )
    return rows.batch(batch_size, drop_remainder=drop_remainder)


def packing_efficiency(batch: dict) -> float:
    """Document tokens / row tokens of a split batch: the share of its inputs that is not padding."""
    return float(np.count_nonzero(batch["segment_ids"])) / batch["segment_ids"].size


def split_batch(batch: dict) -> dict:
    """A packed batch as model inputs, next-token targets, a loss mask and the inputs' segment ids.

    A target counts when it is in the same segment as its input (never across pieces, nor into padding)
    and the piece's loss mask keeps it (not context read again, nor a prompt under ``completion_only``)."""
    tokens, segments = batch["tokens"], batch["tokens_segment_ids"]
    mask = (segments[:, 1:] == segments[:, :-1]) & (segments[:, 1:] != 0) & (batch["loss_mask"][:, 1:] != 0)
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "mask": mask, "segment_ids": segments[:, :-1]}

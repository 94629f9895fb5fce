"""grain input pipeline: documents (shuffled by seed) → packed rows with segment ids → batches.

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


def document_dataset(corpus: TokenizedCorpus, indices: np.ndarray, seed: int | None) -> grain.MapDataset:
    """Endless documents ({"tokens", "loss_mask"}), reshuffled every epoch when ``seed`` is given."""
    ds = grain.MapDataset.source(indices)
    if seed is not None:
        ds = ds.seed(seed).shuffle()
    return ds.repeat(None).map(lambda index: corpus.document(int(index)))


def packed_batches(documents: grain.MapDataset, seq_len: int, batch_size: int, num_threads: int,
                   prefetch: int) -> grain.IterDataset:
    """Rows of ``seq_len + 1`` tokens (inputs and shifted targets) with segment ids and positions."""
    rows = grain.experimental.ConcatThenSplitIterDataset(
        documents.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)),
        length_struct={"tokens": seq_len + 1, "loss_mask": seq_len + 1})
    return rows.batch(batch_size, drop_remainder=True)


def split_batch(batch: dict) -> dict:
    """A packed batch as model inputs, next-token targets, a loss mask and the inputs' segment ids."""
    tokens, segments = batch["tokens"], batch["tokens_segment_ids"]
    mask = (segments[:, 1:] != 0) & (batch["loss_mask"][:, 1:] != 0)
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "mask": mask, "segment_ids": segments[:, :-1]}

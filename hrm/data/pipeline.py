"""grain input pipeline: shuffled documents → tokens (threads) → packed rows → batches.

Every stage is grain's Dataset API, so the iterator's state is small, checkpoints with the model
and restores to the exact next batch.
"""

from __future__ import annotations

from pathlib import Path

import grain
import numpy as np

from hrm.data.sources import read_text
from hrm.tokenizer import Tokenizer


def tokenize_documents(paths: list[Path], tokenizer: Tokenizer, seed: int) -> grain.MapDataset:
    """Each file becomes {"tokens": ids + [EOS]}, reshuffled every epoch; unreadable files are dropped."""
    def tokenize(path):
        text = read_text(path)
        if not text:
            return None
        return {"tokens": np.asarray(tokenizer.encode(text) + [tokenizer.eos_id], np.int32)}

    return (grain.MapDataset.source([str(p) for p in paths]).seed(seed).shuffle().repeat(None)
            .map(tokenize).filter(lambda x: x is not None))


def packed_batches(documents: grain.MapDataset, seq_len: int, batch_size: int, num_threads: int,
                   prefetch: int) -> grain.IterDataset:
    """Rows of ``seq_len + 1`` tokens (inputs and shifted targets) with segment ids and positions."""
    rows = grain.experimental.ConcatThenSplitIterDataset(
        documents.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)),
        length_struct={"tokens": seq_len + 1})
    return rows.batch(batch_size, drop_remainder=True)


def split_batch(batch: dict) -> dict:
    """A packed batch as model inputs, next-token targets and a mask over real (non-padding) targets."""
    tokens, segments = batch["tokens"], batch["tokens_segment_ids"]
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "mask": (segments[:, 1:] != 0)}

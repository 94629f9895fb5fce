"""Data sources, the tokenized cache and the grain pipeline that turns them into batches."""

from hrm.data.cache import TokenizedCorpus, tokenized_corpus
from hrm.data.pipeline import document_pieces, packed_batches, piece_dataset, split_batch, split_documents
from hrm.data.sources import DataError

__all__ = ["DataError", "TokenizedCorpus", "document_pieces", "packed_batches", "piece_dataset", "split_batch",
           "split_documents", "tokenized_corpus", "training_batches", "eval_batches"]


def training_batches(cfg_data, corpus: TokenizedCorpus, batch_size: int, seed: int):
    """The endless, shuffled training IterDataset of global batches (the same on every process)."""
    train_docs, _ = split_documents(len(corpus), cfg_data.eval_fraction)
    pieces = piece_dataset(corpus, train_docs, cfg_data.seq_len, seed)
    return packed_batches(pieces, cfg_data.seq_len, batch_size, cfg_data.num_threads, cfg_data.prefetch)


def eval_batches(cfg_data, corpus: TokenizedCorpus, batch_size: int, n_batches: int) -> list[dict]:
    """The same ``n_batches`` held-out batches every time (empty when nothing is held out)."""
    _, eval_docs = split_documents(len(corpus), cfg_data.eval_fraction)
    if len(eval_docs) == 0 or n_batches == 0:
        return []
    iterator = iter(packed_batches(piece_dataset(corpus, eval_docs, cfg_data.seq_len, seed=None), cfg_data.seq_len,
                                   batch_size, 1, 2))
    return [split_batch(next(iterator)) for _ in range(n_batches)]

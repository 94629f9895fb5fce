"""Data sources and the grain pipeline that turns them into training batches."""

from hrm.data.pipeline import packed_batches, split_batch, tokenize_documents
from hrm.data.sources import DataError, corpus_files

__all__ = ["DataError", "corpus_files", "packed_batches", "split_batch", "tokenize_documents"]


def training_batches(cfg_data, tokenizer, batch_size: int, seed: int):
    """The training IterDataset for a run's data config."""
    docs = tokenize_documents(corpus_files(cfg_data.data_dir), tokenizer, seed)
    return packed_batches(docs, cfg_data.seq_len, batch_size, cfg_data.num_threads, cfg_data.prefetch)

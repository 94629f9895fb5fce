"""Input-pipeline throughput vs training throughput, side by side in one run.

    python scripts/bench_data.py --config configs/hybrid_small.py [--seconds 10] [--train_steps 3]
        [--tokenizer cl100k_base] [--batch_size 2]

Prints the grain pipeline's tokens/s (row tokens of packed batches of the config's batch size and
sequence length from the cached, tokenized corpus, with the share that is document tokens, not padding;
token-cache build time reported separately) and the training
step's tokens/s for the same config on this machine, and their ratio (it should be >= 10).
``--tokenizer`` changes only the data side (offline, gpt2 can be swapped for the bundled cl100k_base
BPE; once cached, the pipeline only slices token arrays, whatever the tokenizer); the model keeps the
config's vocab. ``--batch_size`` sets both sides' batch (a CPU may not hold the config's batch).
"""

from __future__ import annotations

import argparse
import time

import jax
from bench_train import train_tokens_per_sec  # scripts/ is on sys.path when run as a script

from hrm.config import load_config_file, resolve_config
from hrm.data import packing_efficiency, split_batch, tokenized_corpus, training_batches
from hrm.tokenizer import get_tokenizer


def pipeline_tokens_per_sec(config, seconds: float) -> tuple[float, float, float]:
    """(row tokens/s, packing efficiency, token-cache build or load seconds)."""
    start = time.perf_counter()
    corpus = tokenized_corpus(config.data, get_tokenizer(config.data.tokenizer), log=print)
    build = time.perf_counter() - start
    iterator = iter(training_batches(config.data, corpus, config.train.batch_size, config.train.seed))
    split_batch(next(iterator))  # start the threads
    tokens, efficiency, start = 0, [], time.perf_counter()
    while time.perf_counter() - start < seconds:
        batch = split_batch(next(iterator))
        tokens += batch["inputs"].size
        efficiency.append(packing_efficiency(batch))
    return tokens / (time.perf_counter() - start), sum(efficiency) / len(efficiency), build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/hybrid_small.py")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to drain the pipeline")
    parser.add_argument("--train_steps", type=int, default=3)
    parser.add_argument("--tokenizer", default=None, help="data.tokenizer for the pipeline (e.g. cl100k_base offline)")
    parser.add_argument("--batch_size", type=int, default=None, help="train.batch_size for both sides")
    args = parser.parse_args()
    config = load_config_file(args.config)
    if args.tokenizer:
        config.data.tokenizer = args.tokenizer
    if args.batch_size:
        config.train.batch_size = args.batch_size
    config = resolve_config(config)
    data_rate, efficiency, build = pipeline_tokens_per_sec(config, args.seconds)
    train_rate = train_tokens_per_sec(config, args.train_steps)
    print(
        f"config {config.name} (data tokenizer {config.data.tokenizer}, model vocab {config.model.vocab_size}, "
        f"batch {config.train.batch_size} x {config.data.seq_len}) on {jax.devices()[0].platform}:"
    )
    print(f"  token cache build/load  {build:8.1f} s")
    print(f"  data pipeline  {data_rate:14,.0f} tokens/s (packing efficiency {efficiency:.1%})")
    print(f"  training step  {train_rate:14,.0f} tokens/s")
    print(f"  ratio          {data_rate / train_rate:14,.1f}x")


if __name__ == "__main__":
    main()

"""Batched prefill against prefilling each prompt alone (docs/BENCHMARKS.md "Decoding").

``--batch`` prompts of random lengths in [--min_len, --max_len] are prefilled twice in one run: all at once
(``Generator.start``: rows with the same chunks share one right-padded batch) and one ``start`` per prompt, each
the median of ``--repeats`` timed runs after a compile; the table gives prompt tokens/s and the ratio.

python scripts/bench_prefill.py CHECKPOINT [--batch 8] [--min_len 300] [--max_len 500] [--repeats 3]
"""

import argparse
import time

import jax
import numpy as np

import hrm


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--min_len", type=int, default=300)
    parser.add_argument("--max_len", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model = hrm.load(args.checkpoint, max_context=args.max_len + 1)
    generator, params = model.generator, model.params
    rng = np.random.default_rng(0)
    lengths = rng.integers(args.min_len, args.max_len + 1, args.batch)
    prompts = [rng.integers(0, model.config.model.vocab_size, n).tolist() for n in lengths]

    def timed(prefill):
        times = []
        for _ in range(args.repeats + 1):  # the first run compiles
            start = time.perf_counter()
            jax.block_until_ready(prefill())
            times.append(time.perf_counter() - start)
        return float(np.median(times[1:]))

    batched = timed(lambda: generator.start(params, prompts, 1))
    alone = timed(lambda: [generator.start(params, [p], 1) for p in prompts])
    tokens = int(lengths.sum())
    print(f"{args.batch} prompts of {args.min_len}..{args.max_len} tokens ({tokens} in all)")
    print("| prefill | s | prompt tokens/s |\n|---|---:|---:|")
    print(f"| one batch | {batched:.3f} | {tokens / batched:,.0f} |")
    print(f"| each prompt alone | {alone:.3f} | {tokens / alone:,.0f} |")
    print(f"batched / alone throughput: {alone / batched:.2f}x")


if __name__ == "__main__":
    main()

"""Decode-step time of an attention model at one position for several KV buffer sizes: what a step costs
beyond the current length (docs/BENCHMARKS.md "Decoding").

python scripts/bench_kv_buffer.py CHECKPOINT [--buffers 64,2048,8192] [--prompt 16] [--steps 16]
"""

import argparse
import time

import hrm
from hrm.inference import Sampling, SamplingArrays
from hrm.models.attention import resize_kv_caches


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--buffers", default="64,2048,8192")
    parser.add_argument("--prompt", type=int, default=16)
    parser.add_argument("--steps", type=int, default=16)
    args = parser.parse_args()
    buffers = [int(b) for b in args.buffers.split(",")]
    model = hrm.load(args.checkpoint, max_context=max(buffers) + args.prompt + args.steps)
    generator, params = model.generator, model.params
    settings = SamplingArrays.of([Sampling(0.0)])
    state = generator.start(params, [[1] * args.prompt], args.steps)
    for length in buffers:
        grown = state._replace(cache=resize_kv_caches(state.cache, length))
        generator.decode(params, grown, settings, args.steps)  # compile
        start = time.perf_counter()
        generator.decode(params, grown, settings, args.steps)
        print(f"buffer {length}: {(time.perf_counter() - start) / args.steps * 1e3:.1f} ms/step", flush=True)


if __name__ == "__main__":
    main()

"""Decode-step time of an attention model at one position for several KV buffer sizes: what a step costs
beyond the current length (docs/BENCHMARKS.md "Decoding").

Each buffer size runs ``--steps`` greedy steps from the same 16-token prompt, once with the state donated (what
``Generator.decode`` does: the buffers are updated in place) and once with ``keep_input`` (the state copied per
call), the median of ``--repeats`` timed calls after a compile.

python scripts/bench_kv_buffer.py CHECKPOINT [--buffers 64,2048,8192] [--prompt 16] [--steps 16] [--repeats 9]
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import hrm
from hrm.inference import Sampling, SamplingArrays
from hrm.models.attention import resize_kv_caches


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--buffers", default="64,2048,8192")
    parser.add_argument("--prompt", type=int, default=16)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    buffers = [int(b) for b in args.buffers.split(",")]
    model = hrm.load(args.checkpoint, max_context=max(buffers) + args.prompt + args.steps)
    generator, params = model.generator, model.params
    settings = SamplingArrays.of([Sampling(0.0)])
    state = generator.start(params, [[1] * args.prompt], args.steps)
    print("| buffer | ms/step, state donated | ms/step, state copied per call |\n|---:|---:|---:|")
    for length in buffers:
        grown = state._replace(cache=resize_kv_caches(state.cache, length))
        row = []
        for keep_input in (False, True):
            times = []
            for _ in range(args.repeats + 1):  # the first call compiles
                fresh = jax.block_until_ready(jax.tree.map(jnp.copy, grown))
                start = time.perf_counter()
                generator.decode(params, fresh, settings, args.steps, keep_input=keep_input)
                times.append(time.perf_counter() - start)
            row.append(np.median(times[1:]) / args.steps * 1e3)
        print(f"| {length} | {row[0]:.2f} | {row[1]:.2f} |", flush=True)


if __name__ == "__main__":
    main()

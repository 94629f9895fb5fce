"""Training-step throughput per selective-scan backend, side by side in one run.

    python scripts/bench_train.py --config configs/tiny.py [--backends sequential,pallas,chunked] [--steps 10]
        [--set model.dtype=bfloat16 ...]

For each backend: the jitted train step (forward, backward, AdamW update) of the config's model on a
fixed random batch, compiled and warmed up first, then ``--steps`` steps timed to ``block_until_ready``.
Prints seconds per step, tokens/s, and each backend's speed relative to the first one.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import numpy as np

from hrm.config import apply_override, load_config_file, resolve_config
from hrm.training.state import init_train_state, make_train_step


def train_tokens_per_sec(config, steps: int) -> float:
    """Tokens/s of ``steps`` jitted train steps on one random batch (compilation not timed)."""
    graphdef, state = init_train_state(config)
    step = jax.jit(make_train_step(graphdef, config), donate_argnums=0)
    shape = (config.train.batch_size, config.data.seq_len)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, min(config.model.vocab_size, 256), (shape[0], shape[1] + 1)).astype(np.int32)
    batch = {
        "inputs": tokens[:, :-1],
        "targets": tokens[:, 1:],
        "mask": np.ones(shape, bool),
        "segment_ids": np.ones(shape, np.int32),
    }
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    return steps * batch["inputs"].size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/tiny.py")
    parser.add_argument("--backends", default="sequential,pallas")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override")
    args = parser.parse_args()
    config = load_config_file(args.config)
    for item in args.set:
        apply_override(config, *item.split("=", 1))
    config = resolve_config(config)
    tokens_per_step = config.train.batch_size * config.data.seq_len
    print(
        f"config {config.name} (batch {config.train.batch_size} x {config.data.seq_len}, {config.model.dtype}) "
        f"on {jax.devices()[0].platform}:"
    )
    first = None
    for backend in args.backends.split(","):
        model = dataclasses.replace(config.model, scan_backend=backend)
        rate = train_tokens_per_sec(dataclasses.replace(config, model=model), args.steps)
        first = first or rate
        print(f"  {backend:<11} {tokens_per_step / rate:8.3f} s/step  {rate:10,.0f} tokens/s  {rate / first:5.2f}x")


if __name__ == "__main__":
    main()

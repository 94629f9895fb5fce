"""Training-step throughput per selective-scan backend, side by side in one run.

    python scripts/bench_train.py --config configs/tiny.py [--backends pallas,sequential,chunked] [--steps 10]
        [--layers scanned,unrolled] [--set model.dtype=bfloat16 ...]

For each backend (and each layer stack of ``--layers``: ``model.scan_layers`` on or off): the jitted train
step (forward, backward, AdamW update) of the config's model on a fixed random batch, compiled and warmed up
first.  Then ``--steps`` rounds, each timing one step of every variant in turn (to ``block_until_ready``), so
that a machine whose load changes (a shared CPU) slows all variants alike; each variant's time is its median
over the rounds.  Prints seconds per step, tokens/s, and each variant's speed relative to the first one.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import jax
import numpy as np

from hrm.config import apply_override, load_config_file, resolve_config
from hrm.training.state import init_train_state, make_train_step


def random_batch(config) -> dict:
    shape = (config.train.batch_size, config.data.seq_len)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, min(config.model.vocab_size, 256), (shape[0], shape[1] + 1)).astype(np.int32)
    return {
        "inputs": tokens[:, :-1],
        "targets": tokens[:, 1:],
        "mask": np.ones(shape, bool),
        "segment_ids": np.ones(shape, np.int32),
    }


class Runner:
    """One backend's compiled train step and state; ``step()`` runs one step and returns its seconds."""

    def __init__(self, config):
        graphdef, self.state = init_train_state(config)
        self.fn = jax.jit(make_train_step(graphdef, config), donate_argnums=0)
        self.batch = random_batch(config)
        self.step()  # compile and warm up

    def step(self) -> float:
        start = time.perf_counter()
        self.state, metrics = self.fn(self.state, self.batch)
        jax.block_until_ready(metrics)
        return time.perf_counter() - start


def train_tokens_per_sec(config, steps: int) -> float:
    """Tokens/s of ``steps`` jitted train steps of one config on one random batch (compilation not timed)."""
    runner = Runner(config)
    seconds = sum(runner.step() for _ in range(steps))
    return steps * runner.batch["inputs"].size / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/tiny.py")
    parser.add_argument("--backends", default="pallas,sequential,chunked")
    parser.add_argument("--steps", type=int, default=10, help="timed rounds (one step of every backend each)")
    parser.add_argument("--layers", default="scanned", help="scanned, unrolled or both (model.scan_layers)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override")
    args = parser.parse_args()
    config = load_config_file(args.config)
    for item in args.set:
        apply_override(config, *item.split("=", 1))
    config = resolve_config(config)
    tokens_per_step = config.train.batch_size * config.data.seq_len
    print(
        f"config {config.name} (batch {config.train.batch_size} x {config.data.seq_len}, {config.model.dtype}) "
        f"on {jax.devices()[0].platform}, median of {args.steps} interleaved rounds:"
    )
    variants = [(b, layers) for b in args.backends.split(",") for layers in args.layers.split(",")]
    runners = {
        (b, layers): Runner(
            dataclasses.replace(
                config, model=dataclasses.replace(config.model, scan_backend=b, scan_layers=layers == "scanned")
            )
        )
        for b, layers in variants
    }
    times = {v: [] for v in variants}
    for _ in range(args.steps):
        for variant, runner in runners.items():
            times[variant].append(runner.step())
    first = None
    for backend, layers in variants:
        seconds = statistics.median(times[backend, layers])
        rate = tokens_per_step / seconds
        first = first or rate
        print(f"  {backend:<11} {layers:<9} {seconds:8.3f} s/step  {rate:10,.0f} tokens/s  {rate / first:5.2f}x")


if __name__ == "__main__":
    main()

"""Cost of the activation probe (hrm/training/monitor.py) relative to training.

    python scripts/bench_monitor.py --config configs/tiny_recursive.py [--steps 10] [--log_every 10]

Times the jitted train step and the probe (one forward of one row per device, run on log steps only) on a
fixed random batch, both compiled and warmed up first, and prints the probe's share of the time of
``--log_every`` steps: the overhead a run with that ``train.log_every`` pays.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from hrm.config import load_config_file, resolve_config
from hrm.training.monitor import make_probe
from hrm.training.state import init_train_state, make_train_step


def seconds_per_call(fn, args, calls: int) -> float:
    jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    for _ in range(calls):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/tiny_recursive.py")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--log_every", type=int, default=10)
    args = parser.parse_args()
    config = resolve_config(load_config_file(args.config))
    graphdef, state = init_train_state(config)
    shape = (config.train.batch_size, config.data.seq_len)
    tokens = np.random.default_rng(0).integers(0, min(config.model.vocab_size, 256), (shape[0], shape[1] + 1))
    batch = {
        "inputs": tokens[:, :-1].astype(np.int32),
        "targets": tokens[:, 1:].astype(np.int32),
        "mask": np.ones(shape, bool),
        "segment_ids": np.ones(shape, np.int32),
    }
    step = jax.jit(make_train_step(graphdef, config))  # not donated: the same state every call
    step_s = seconds_per_call(step, (state, batch), args.steps)
    probe = make_probe(graphdef, None, None)
    probe_s = seconds_per_call(probe, (state["params"], batch), args.steps)
    print(
        f"{config.name} ({config.model.family}, batch {shape[0]} x {shape[1]}) on {jax.devices()[0].platform}: "
        f"train step {step_s * 1e3:.1f} ms, probe {probe_s * 1e3:.1f} ms = "
        f"{probe_s / (args.log_every * step_s):.2%} of {args.log_every} steps"
    )


if __name__ == "__main__":
    main()

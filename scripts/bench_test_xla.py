"""What the test suite's XLA flags (tests/conftest.py) save and cost: the tests' small train steps compiled and run
under XLA's default CPU backend, without LLVM's optimisation passes (``--xla_backend_optimization_level=0``), and
that plus the elemental IR emitter for fusions (``--xla_cpu_use_fusion_emitters=false``) (docs/BENCHMARKS.md).

Each family's step at the tests' size (d_model 32, 2 layers, d_state 8, batch 4 of 32 tokens: ``small_config`` in
tests/helpers.py) is lowered from abstract inputs, compiled, then run ``--steps`` times on random tokens, in a
process of its own per setting (XLA reads its flags once per process), with the persistent compilation cache off.
Prints lower and compile seconds, milliseconds per step and the compiled step's temporary bytes.

    python scripts/bench_test_xla.py [--families mamba,hybrid_recursive] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

SETTINGS = {
    "default": "",
    "O0": "--xla_backend_optimization_level=0",
    "O0, no fusion emitters": "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false",
}
FAMILIES = ("mamba", "hybrid_recursive", "hybrid_pattern", "recursive_ssm")


def measure(family: str, steps: int) -> dict:
    """Lower/compile seconds, ms per step and temp bytes of one family's small train step (in a child process)."""
    import jax
    import jax.numpy as jnp

    from hrm.config import Config, DataConfig, ModelConfig, TrainConfig, resolve_config
    from hrm.training.memory import abstract_batch, abstract_train_state
    from hrm.training.state import init_train_state, make_train_step

    pattern = {"layer_pattern": "AM"} if family == "hybrid_pattern" else {}
    config = resolve_config(
        Config(
            model=ModelConfig(family=family, d_model=32, n_layers=2, d_state=8, n_heads=2, **pattern),
            data=DataConfig(seq_len=32),
            train=TrainConfig(steps=8, batch_size=4, lr=3e-3, warmup_steps=2),
        )
    )
    graphdef, shapes = abstract_train_state(config)
    batch_shapes = abstract_batch(4, 32)
    start = time.perf_counter()
    lowered = jax.jit(make_train_step(graphdef, config), donate_argnums=0).lower(shapes, batch_shapes)
    lowered_at = time.perf_counter()
    step = lowered.compile()
    compiled_at = time.perf_counter()
    tokens = jax.random.randint(jax.random.key(0), (4, 33), 0, config.model.token_vocab_size)
    batch = {  # one document per row, every target counted (hrm.training.memory.BATCH_DTYPES)
        "inputs": tokens[:, :-1],
        "targets": tokens[:, 1:],
        "mask": jnp.ones((4, 32), bool),
        "segment_ids": jnp.zeros((4, 32), jnp.int32),
    }
    state = init_train_state(config)[1]
    state, metrics = step(state, batch)  # the first call pays the runtime's one-off costs
    jax.block_until_ready(metrics)
    run_start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    return {
        "lower_s": lowered_at - start,
        "compile_s": compiled_at - lowered_at,
        "step_ms": 1e3 * (time.perf_counter() - run_start) / steps,
        "temp_bytes": step.memory_analysis().temp_size_in_bytes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=",".join(FAMILIES), help="comma-separated model families")
    parser.add_argument("--steps", type=int, default=20, help="timed steps after the first")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    if args.child:
        print(json.dumps(measure(args.child, args.steps)))
        return
    print("| family | XLA flags | lower (s) | compile (s) | step (ms) | temp bytes |")
    print("|---|---|---:|---:|---:|---:|")
    for family in args.families.split(","):
        for name, flags in SETTINGS.items():
            env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
            env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=flags, JAX_ENABLE_COMPILATION_CACHE="false")
            out = subprocess.run(
                [sys.executable, __file__, "--child", family, "--steps", str(args.steps)],
                capture_output=True,
                text=True,
                env=env,
            )
            if out.returncode:
                print(f"| {family} | {name} | failed: {out.stderr.strip().splitlines()[-1]} | | | |")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(
                f"| {family} | {name} | {r['lower_s']:.1f} | {r['compile_s']:.1f} | {r['step_ms']:.1f} "
                f"| {r['temp_bytes']:,} |"
            )
            sys.stdout.flush()


if __name__ == "__main__":
    main()

"""Train-step compile time (lower + compile, abstract inputs), unrolled vs scanned layer stacks (docs/BENCHMARKS.md).

For each config: its train step (optimizer, accumulation, remat, GPU scan backend, as ``hrm.memtest`` compiles
it) lowered from ``jax.ShapeDtypeStruct`` inputs and compiled, with ``model.scan_layers`` true and false, and
the scanned step of a 2-layer model of the same width (the target: scanned within 1.5x of it, flat in depth),
and of a "2-unit" model: the scanned unit twice (hybrid_pattern: its repeating unit, "AMAM" of "AM" x 8;
recursive_ssm: 2 remat segments of 2 blocks), the same nested scans at the smallest depth — "2-layer" is a
plain unrolled "AM" and one segment for those two families, a different program rather than a shallower one.
Each compile runs in its own process under ``--timeout`` seconds (an unrolled ``recursive_48x5`` takes minutes on
a loaded 2-core CPU); a timed-out one prints "> T s".

    python scripts/bench_compile.py [--configs hybrid_large] [--timeout 600] [--variants scanned,2-unit]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time

CONFIGS = ("mamba_xxlarge", "hybrid_large", "hybrid_amam_1b", "recursive_48x5")
VARIANTS = ("unrolled", "scanned", "2-layer", "2-unit")


def two_layers(model):
    """The same width with 2 layers (hybrid_pattern: the pattern's first 2 letters)."""
    change = {"n_layers": 2}
    if model.family == "hybrid_pattern":
        change["layer_pattern"] = model.layer_pattern[:2]
    if model.family == "recursive_ssm":
        change["checkpoint_segments"] = min(model.checkpoint_segments, 2)
    return dataclasses.replace(model, **change)


def two_units(model):
    """The scanned structure at its smallest depth: each scan over 2 of its units."""
    from hrm.models.hybrid import pattern_period

    if model.family == "hybrid_pattern":
        unit = model.layer_pattern[: pattern_period(model.layer_pattern)]
        return dataclasses.replace(model, n_layers=2 * len(unit), layer_pattern=unit * 2)
    if model.family == "recursive_ssm":
        return dataclasses.replace(model, n_layers=4, checkpoint_segments=2)
    return two_layers(model)


def compile_seconds(name: str, variant: str) -> dict:
    """Lower + compile seconds of one config's train step (run inside a child process)."""
    import jax

    from hrm.config import config_dir, resolve_config
    from hrm.train import build_config
    from hrm.training.memory import abstract_batch, abstract_train_state, gpu_config
    from hrm.training.state import make_train_step

    config = gpu_config(resolve_config(build_config(str(config_dir() / f"{name}.py"), [])))
    model = dataclasses.replace(config.model, scan_layers=variant != "unrolled")
    if variant == "2-layer":
        model = two_layers(model)
    if variant == "2-unit":
        model = two_units(model)
    config = dataclasses.replace(config, model=model)
    t = config.train
    graphdef, state = abstract_train_state(config)
    batch = abstract_batch(t.batch_size, config.data.seq_len)
    start = time.perf_counter()
    lowered = jax.jit(make_train_step(graphdef, config), donate_argnums=0).lower(state, batch)
    lowered_at = time.perf_counter()
    lowered.compile()
    done = time.perf_counter()
    return {"lower_s": lowered_at - start, "compile_s": done - lowered_at, "total_s": done - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated config names")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="of " + ", ".join(VARIANTS))
    parser.add_argument("--timeout", type=float, default=600, help="seconds per compile")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(compile_seconds(*args.child)))
        return
    print("| config | variant | lower (s) | compile (s) | total (s) |")
    print("|---|---|---:|---:|---:|")
    for name in args.configs.split(","):
        for variant in args.variants.split(","):
            try:
                out = subprocess.run(
                    [sys.executable, __file__, "--child", name, variant],
                    capture_output=True,
                    text=True,
                    timeout=args.timeout,
                    check=True,
                )
                r = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"| {name} | {variant} | {r['lower_s']:.1f} | {r['compile_s']:.1f} | {r['total_s']:.1f} |")
            except subprocess.TimeoutExpired:
                print(f"| {name} | {variant} | | | > {args.timeout:.0f} |")
            except subprocess.CalledProcessError as error:
                print(f"| {name} | {variant} | failed: {error.stderr.strip().splitlines()[-1]} | | |")
            sys.stdout.flush()


if __name__ == "__main__":
    main()

"""What checkpoint checksums cost: save (orbax, then the SHA-256 manifest), verify (``checkpoint.damage``: every
file re-read and hashed, as each resume and ``hrm.load`` does) and restore, for a train state of ``--gb`` GB
(docs/BENCHMARKS.md "Checkpoints"). Each is the median of ``--repeats`` runs in one process.

python scripts/bench_checkpoint.py [--gb 2] [--repeats 3] [--dir /tmp/hrm_bench_checkpoint]
"""

import argparse
import shutil
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from hrm.training import checkpoint


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default="/tmp/hrm_bench_checkpoint")
    args = parser.parse_args()
    checkpoint.quiet_orbax()
    # a train state's shape: many parameter-sized float32 arrays (64 MiB each here)
    leaves = max(1, round(args.gb * 2**30 / 2**26))
    state = {f"p{i}": jax.random.normal(jax.random.key(i), (2**24,), jnp.float32) for i in range(leaves)}
    nbytes = sum(x.nbytes for x in state.values())
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    times = {"save (orbax + manifest)": [], "verify (SHA-256 of every file)": [], "restore": []}
    for repeat in range(args.repeats):
        run_dir = Path(args.dir)
        shutil.rmtree(run_dir, ignore_errors=True)
        mgr = checkpoint.Checkpoints(run_dir, keep=1)
        start = time.perf_counter()
        mgr.save(1, state)
        mgr.wait_until_finished()
        times["save (orbax + manifest)"].append(time.perf_counter() - start)
        step_dir = checkpoint.checkpoint_root(run_dir) / "1"
        start = time.perf_counter()
        assert checkpoint.damage(step_dir) is None
        times["verify (SHA-256 of every file)"].append(time.perf_counter() - start)
        start = time.perf_counter()
        jax.block_until_ready(mgr.restore(1, abstract))
        times["restore"].append(time.perf_counter() - start)
        mgr.close()
    shutil.rmtree(args.dir, ignore_errors=True)
    restore = float(np.median(times["restore"]))
    print(f"train state of {nbytes / 2**30:.2f} GiB ({leaves} float32 arrays), median of {args.repeats}")
    print("| operation | s | GiB/s | / restore |\n|---|---:|---:|---:|")
    for name, values in times.items():
        seconds = float(np.median(values))
        print(f"| {name} | {seconds:.2f} | {nbytes / 2**30 / seconds:.2f} | {seconds / restore:.2f} |")


if __name__ == "__main__":
    main()

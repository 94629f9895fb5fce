"""What checkpoint checksums cost: save (orbax, then the SHA-256 manifest: every file and every parameter array),
a resume's check (``checkpoint.damage``: every file re-read and hashed), a model load's check (file sizes and the
parameter arrays' checksums: the optimizer state is not read) and the restores they precede, for an Adam-shaped
train state of ``--gb`` GB (params a third, opt_state two thirds; docs/BENCHMARKS.md "Checkpoints"). Each is the
median of ``--repeats`` runs in one process.

python scripts/bench_checkpoint.py [--gb 2] [--repeats 3] [--dir /tmp/hrm_bench_checkpoint]
"""

import argparse
import shutil
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from hrm.training import checkpoint


def _save_without_array_digests(state, run_dir: Path) -> float:
    """A save whose manifest has the files' checksums only (what hrm wrote before the parameter checksums)."""
    mgr = checkpoint.Checkpoints(run_dir, keep=1)
    real, checkpoint.read_numpy_state = checkpoint.read_numpy_state, lambda *_: {}  # write_manifest skips arrays
    try:
        start = time.perf_counter()
        mgr.save(1, state)
        mgr.wait_until_finished()
        return time.perf_counter() - start
    finally:
        checkpoint.read_numpy_state = real
        mgr.close()
        shutil.rmtree(run_dir, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default="/tmp/hrm_bench_checkpoint")
    args = parser.parse_args()
    checkpoint.quiet_orbax()
    # an Adam train state's shape: params and two moments of as many parameter-sized float32 arrays (64 MiB each)
    per_part = max(1, round(args.gb * 2**30 / 2**26 / 3))
    leaves = 3 * per_part
    params = {f"p{i}": jax.random.normal(jax.random.key(i), (2**24,), jnp.float32) for i in range(per_part)}
    state = {"params": params, "opt_state": {"mu": params, "nu": jax.tree.map(jnp.square, params)}}
    nbytes = sum(x.nbytes for x in jax.tree.leaves(state))
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    times = {
        "save (orbax + manifest)": [],
        "save before: no parameter checksums": [],
        "resume check (SHA-256 of every file)": [],
        "restore the train state": [],
        "model load before: every file's SHA-256, then the params": [],
        "model load (restore_params: params read once, checked by their checksums)": [],
    }
    for _ in range(args.repeats):
        run_dir = Path(args.dir)
        shutil.rmtree(run_dir, ignore_errors=True)
        mgr = checkpoint.Checkpoints(run_dir, keep=1)
        start = time.perf_counter()
        mgr.save(1, state)
        mgr.wait_until_finished()
        times["save (orbax + manifest)"].append(time.perf_counter() - start)
        times["save before: no parameter checksums"].append(_save_without_array_digests(state, run_dir / "before"))
        step_dir = checkpoint.checkpoint_root(run_dir) / "1"
        start = time.perf_counter()
        assert checkpoint.damage(step_dir) is None
        times["resume check (SHA-256 of every file)"].append(time.perf_counter() - start)
        start = time.perf_counter()
        jax.block_until_ready(mgr.restore(1, abstract))
        times["restore the train state"].append(time.perf_counter() - start)
        mgr.close()
        start = time.perf_counter()  # what restore_params did before the parameter checksums
        assert checkpoint.damage(step_dir) is None
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = {"params": jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), params)}
        reader = ocp.CheckpointManager(
            checkpoint.checkpoint_root(run_dir),
            options=ocp.CheckpointManagerOptions(read_only=True, create=False, max_to_keep=None),
        )
        restore = ocp.args.PyTreeRestore(
            item=target, partial_restore=True, restore_args=ocp.checkpoint_utils.construct_restore_args(target)
        )
        jax.block_until_ready(reader.restore(1, args=ocp.args.Composite(state=restore))["state"])
        reader.close()
        times["model load before: every file's SHA-256, then the params"].append(time.perf_counter() - start)
        start = time.perf_counter()
        jax.block_until_ready(checkpoint.restore_params(run_dir, abstract["params"], 1)[0])
        times["model load (restore_params: params read once, checked by their checksums)"].append(
            time.perf_counter() - start
        )
    shutil.rmtree(args.dir, ignore_errors=True)
    restore = float(np.median(times["restore the train state"]))
    print(f"train state of {nbytes / 2**30:.2f} GiB ({leaves} float32 arrays), median of {args.repeats}")
    print("| operation | s | GiB/s of the state | / restoring the state |\n|---|---:|---:|---:|")
    for name, values in times.items():
        seconds = float(np.median(values))
        print(f"| {name} | {seconds:.2f} | {nbytes / 2**30 / seconds:.2f} | {seconds / restore:.2f} |")


if __name__ == "__main__":
    main()

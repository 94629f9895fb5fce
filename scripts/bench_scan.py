#!/usr/bin/env python
"""Benchmark the selective-scan backends: reference (associative_scan), sequential (lax.scan), chunked, pallas.

Times the forward pass (y and last_state) and forward+backward (gradient of sum(y * dy) with respect to
u, delta, A, B, C, D, z, delta_bias) for each shape and dtype, on the default jax device, after a
warm-up, as the median of ``--iters`` runs each ended by ``block_until_ready``.

For each row it prints:
  * time in ms, and achieved GB/s against the *memory floor*: the bytes that must move at least once —
    forward: u, delta, z, B, C read and y written; forward+backward adds dy, u, delta, z, B, C read
    again and du, ddelta, dz, dB, dC written.
  * the *exp floor*: batch*length*channels*state exponentials (x2 for forward+backward: the forward and
    one recomputation) divided by ``--exp-rate``.
  * "of floor": max(memory floor, exp floor) / measured time — the fraction of the tighter bound
    achieved (1.0 would be running at the bound).
  * memory: XLA's temp allocation for the compiled function (memory_analysis) and the device's running
    peak (device.memory_stats()["peak_bytes_in_use"], "n/a" where the backend does not report it).
  * pallas / reference and pallas / sequential time ratios.

The floors default to an H100 SXM: --hbm-gbps 3350 (HBM3 bandwidth) and --exp-rate 3.87e12 exp/s
(132 SMs x 16 MUFU.EX2 results per clock per SM x 1.83 GHz boost clock).  On CPU they are meaningless
(and the Pallas kernel runs in interpret mode there): use small shapes as a correctness run, e.g.

    python scripts/bench_scan.py --batch 2 --lengths 256 --channels 256 --state 16 --iters 5

Optionally times mamba-ssm's CUDA selective_scan_fn when torch with CUDA and mamba_ssm are importable.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from hrm import kernels  # noqa: E402

BACKENDS = ("reference", "sequential", "chunked", "pallas")
GRAD_ARGS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lengths", type=int, nargs="+", default=[512, 2048, 8192])
    p.add_argument("--channels", type=int, default=2048)
    p.add_argument("--state", type=int, default=16)
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    p.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    p.add_argument("--modes", nargs="+", default=["fwd", "fwd+bwd"], choices=["fwd", "fwd+bwd"])
    p.add_argument("--iters", type=int, default=20, help="timed runs per measurement (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs after compilation")
    p.add_argument(
        "--hbm-gbps",
        type=float,
        default=3350.0,
        help="memory bandwidth for the memory floor, GB/s (default: H100 SXM HBM3)",
    )
    p.add_argument(
        "--exp-rate",
        type=float,
        default=3.87e12,
        help="exponentials per second for the exp floor (default: H100 SXM, 132 SMs x 16 MUFU.EX2/clk x 1.83 GHz)",
    )
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def make_inputs(key, b, l, d, n, dtype):
    ks = jax.random.split(key, 9)
    normal = lambda k, shape, scale=1.0: (scale * jax.random.normal(k, shape)).astype(dtype)
    return dict(
        u=normal(ks[0], (b, l, d)),
        delta=normal(ks[1], (b, l, d), 0.5),
        A=-jnp.exp(0.5 * jax.random.normal(ks[2], (d, n))),  # fp32, as in the models
        B=normal(ks[3], (b, l, n)),
        C=normal(ks[4], (b, l, n)),
        D=jax.random.normal(ks[5], (d,)),
        z=normal(ks[6], (b, l, d)),
        delta_bias=0.5 * jax.random.normal(ks[7], (d,)),
        dy=normal(ks[8], (b, l, d)),
    )


def build(backend, mode):
    scan = functools.partial(kernels.selective_scan, delta_softplus=True, return_last_state=True, backend=backend)
    if mode == "fwd":
        return jax.jit(lambda kw: scan(**{k: v for k, v in kw.items() if k != "dy"}))

    def loss(grad_args, rest):
        y, _ = scan(**grad_args, **{k: v for k, v in rest.items() if k != "dy"})
        return jnp.sum(y.astype(jnp.float32) * rest["dy"].astype(jnp.float32))

    grad = jax.grad(loss)
    return jax.jit(lambda kw: grad({k: kw[k] for k in GRAD_ARGS}, {k: v for k, v in kw.items() if k not in GRAD_ARGS}))


def time_fn(fn, args, iters, warmup):
    jax.block_until_ready(fn(args))  # compile
    for _ in range(warmup):
        jax.block_until_ready(fn(args))
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        jax.block_until_ready(fn(args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def temp_bytes(fn, args):
    try:
        return fn.lower(args).compile().memory_analysis().temp_size_in_bytes
    except Exception:  # noqa: BLE001 (not every backend reports it)
        return None


def device_peak():
    stats = jax.devices()[0].memory_stats()
    return None if not stats or "peak_bytes_in_use" not in stats else stats["peak_bytes_in_use"]


def floors(b, l, d, n, dtype, mode, args):
    size = jnp.dtype(dtype).itemsize
    bytes_fwd = size * (4 * b * l * d + 2 * b * l * n)  # u, delta, z, y (b,l,d); B, C (b,l,n)
    bytes_ = bytes_fwd if mode == "fwd" else bytes_fwd + size * (7 * b * l * d + 4 * b * l * n)
    exps = b * l * d * n * (1 if mode == "fwd" else 2)
    return bytes_, bytes_ / (args.hbm_gbps * 1e9), exps / args.exp_rate


def mib(x):
    return "n/a" if x is None else f"{x / 2**20:.1f}"


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b)) if np.all(np.isfinite(a)) else float("nan")


def bench_mamba_ssm(b, l, d, n, dtype, args):
    """mamba-ssm's fused CUDA kernel, when torch+CUDA and mamba_ssm are importable."""
    try:
        import torch  # noqa: PLC0415
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn  # noqa: PLC0415
    except ImportError as e:
        return f"skipped (not importable: {e.name})"
    if not torch.cuda.is_available():
        return "skipped (torch has no CUDA device)"
    tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    mk = lambda *s: torch.randn(*s, device="cuda", dtype=tdtype)
    u, delta, z = mk(b, d, l), 0.5 * mk(b, d, l), mk(b, d, l)  # mamba-ssm layout (b, d, l)
    B, C = mk(b, n, l), mk(b, n, l)
    A = -torch.exp(0.5 * torch.randn(d, n, device="cuda"))
    D, bias = torch.randn(d, device="cuda"), 0.5 * torch.randn(d, device="cuda")

    def run():
        return selective_scan_fn(u, delta, A, B, C, D, z, bias, delta_softplus=True)

    for _ in range(args.warmup + 1):
        run()
    torch.cuda.synchronize()
    times = []
    for _ in range(args.iters):
        start = time.perf_counter()
        run()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return f"fwd {1e3 * statistics.median(times):.3f} ms"


def main(argv=None):
    args = parse_args(argv)
    dev = jax.devices()[0]
    print(
        f"# jax {jax.__version__}, device {dev.platform}: {dev.device_kind}"
        + (
            ", Pallas in interpret mode: correctness run, not a performance claim"
            if dev.platform != "gpu"
            else ", Pallas compiled (Triton)"
        )
    )
    print(
        f"# floors: {args.hbm_gbps:g} GB/s memory, {args.exp_rate:.3g} exp/s; "
        f"median of {args.iters} runs after {args.warmup} warm-up runs\n"
    )
    header = (
        "| B | L | D | N | dtype | mode | backend | ms | GB/s | mem floor ms | exp floor ms | of floor "
        "| XLA temp MiB | device peak MiB | err vs reference | pallas/ref | pallas/seq |"
    )
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    key = jax.random.PRNGKey(args.seed)
    for dtype in args.dtypes:
        for length in args.lengths:
            b, l, d, n = args.batch, length, args.channels, args.state
            inputs = make_inputs(key, b, l, d, n, jnp.dtype(dtype))
            for mode in args.modes:
                nbytes, mem_floor, exp_floor = floors(b, l, d, n, dtype, mode, args)
                results, outputs = {}, {}
                for backend in args.backends:
                    fn = build(backend, mode)
                    try:
                        results[backend] = time_fn(fn, inputs, args.iters, args.warmup)
                        outputs[backend] = jax.tree.leaves(fn(inputs))
                    except Exception as e:  # noqa: BLE001 (e.g. out of memory for the associative scan)
                        results[backend] = f"failed: {type(e).__name__}"
                        continue
                    results[backend] = (results[backend], temp_bytes(fn, inputs), device_peak())
                ref = outputs.get("reference") or outputs.get("sequential")
                for backend in args.backends:
                    r = results[backend]
                    if isinstance(r, str):
                        print(f"| {b} | {l} | {d} | {n} | {dtype} | {mode} | {backend} | {r} |")
                        continue
                    t, temp, peak = r
                    err = max(rel_err(o, q) for o, q in zip(outputs[backend], ref)) if ref is not None else float("nan")
                    ratio = lambda other: (
                        f"{t / results[other][0]:.2f}"
                        if backend == "pallas" and not isinstance(results.get(other, "x"), str)
                        else ""
                    )
                    print(
                        f"| {b} | {l} | {d} | {n} | {dtype} | {mode} | {backend} | {1e3 * t:.2f} "
                        f"| {nbytes / t / 1e9:.2f} | {1e3 * mem_floor:.3g} | {1e3 * exp_floor:.3g} "
                        f"| {max(mem_floor, exp_floor) / t:.2g} | {mib(temp)} | {mib(peak)} | {err:.1e} "
                        f"| {ratio('reference')} | {ratio('sequential')} |"
                    )
            print(
                f"# mamba-ssm selective_scan_fn, B={args.batch} L={length} {dtype}: "
                f"{bench_mamba_ssm(args.batch, length, args.channels, args.state, dtype, args)}"
            )


if __name__ == "__main__":
    main()

"""python -m hrm.doctor [--scan_backend auto|reference|sequential|chunked|pallas]

What this machine runs, then a few-second self-check of it:

* the versions (Python, jax, jaxlib) and devices, and for float32 and bfloat16 the selective-scan backend
  ``auto`` picks here and why (``kernels.banner``, the line training prints at its start); on GPU, what
  ``auto``'s self-check of the compiled Pallas kernel against the chunked scan found (``kernels.pallas_self_check``);
* the scan backend in use against the float64 reference, outputs and every gradient, on inputs as an
  initialised Mamba block feeds it, dt over the init's 1e-4..1e-1 and over its small end 1e-4..1e-3
  (``kernels.check.parity``): relative error <= 1e-5 in float32, 1e-2 in bfloat16;
* recurrent decoding against the full forward pass on a tiny random Mamba model: prefill half the
  tokens through the scan backend, decode the rest one token at a time (``lax.scan`` steps with the
  cache, as ``hrm.inference``), compare every position's logits: relative error <= 1e-4.

Ends with PASS or FAIL and exits 1 on FAIL.  A named backend that cannot run here is a one-line error.
"""

from __future__ import annotations

import functools
import platform
import sys
import time

import jax
import jax.numpy as jnp
import jaxlib
from flax import nnx

from hrm import kernels
from hrm.cli import ArgumentParser, run_main
from hrm.config import ModelConfig
from hrm.kernels import check
from hrm.kernels.selective_scan import GPU_PLATFORMS
from hrm.models import build_model

DTYPES = ("float32", "bfloat16")
DT_RANGES = ((1e-4, 1e-1), (1e-4, 1e-3))  # the Mamba init's range and its small end, where softplus is hard
DECODE_TOLERANCE = 1e-4  # float32 logits through two layers, scan backend vs single steps


def decode_error(scan_backend: str, length: int = 16, seed: int = 0) -> float:
    """Relative error of prefill + step-by-step decoding against one forward pass, tiny Mamba model."""
    cfg = ModelConfig(d_model=32, n_layers=2, d_state=8, vocab_size=64, scan_backend=scan_backend)
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: build_model(cfg, seed)))
    params = jax.jit(lambda: nnx.split(build_model(cfg, seed))[1])()  # one compiled init, not op by op
    tokens = jax.random.randint(jax.random.key(seed), (2, length), 0, cfg.vocab_size)
    prefill = length // 2

    def full(params, tokens):
        return nnx.merge(graphdef, params)(tokens)[0]

    def recurrent(params, tokens):
        model = nnx.merge(graphdef, params)
        first, cache = model(tokens[:, :prefill], model.init_cache(tokens.shape[0]))

        def step(cache, token):  # merged per step, as hrm.inference.Generator does
            logits, cache = nnx.merge(graphdef, params, copy=True)(token[:, None], cache)
            return cache, logits[:, 0]

        _, rest = jax.lax.scan(step, cache, tokens[:, prefill:].T)
        return jnp.concatenate([first, jnp.swapaxes(rest, 0, 1)], axis=1)

    with jax.default_matmul_precision("highest"):  # the check is of the recurrence, not of TF32
        return check.rel_err(jax.jit(recurrent)(params, tokens), jax.jit(full)(params, tokens))


def pallas_report(scan_backend: str, platform: str | None = None) -> str:
    """What auto's self-check of the compiled Pallas kernel found on ``platform`` (default: this machine's),
    one line per dtype (``kernels.pallas_self_check``)."""
    platform = platform or jax.default_backend()
    if scan_backend != "auto":
        return f"pallas self-check: not run (scan backend {scan_backend} named)"
    if platform not in GPU_PLATFORMS:
        return f"pallas self-check: not run (auto on {platform} does not consider the compiled kernel)"
    lines = []
    for dtype in DTYPES:
        failure = kernels.pallas_self_check(platform, dtype)
        verdict = "ok" if failure is None else f"FAILED, {failure}; auto uses the chunked scan"
        lines.append(f"pallas self-check vs chunked, {dtype}: {verdict}")
    return "\n".join(lines)


def _report(label: str, results: list[tuple[str, float, float]]) -> bool:
    name, err, tol = max(results, key=lambda r: r[1] / r[2])
    failed = [f"{n} {e:.1e}" for n, e, t in results if not e <= t]
    print(
        f"  {label}: worst {name} {err:.1e} (tolerance {tol:.0e}) "
        + ("ok" if not failed else "FAIL: " + ", ".join(failed))
    )
    return not failed


def main(argv=None) -> None:
    parser = ArgumentParser(prog="python -m hrm.doctor", description=__doc__.split("\n\n")[1])
    parser.add_argument(
        "--scan_backend",
        default="auto",
        choices=kernels.BACKENDS,
        help="the backend to check (default: what auto picks here)",
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    devices = jax.devices()
    print(
        f"hrm doctor: Python {platform.python_version()}, jax {jax.__version__}, jaxlib {jaxlib.__version__}; "
        f"{len(devices)} {jax.default_backend()} device(s): {devices[0].device_kind}"
    )
    for dtype in DTYPES:
        print(f"{dtype}: {kernels.banner(args.scan_backend, dtype)}")
    print(pallas_report(args.scan_backend))
    print("self-check (relative error vs float64, all outputs and gradients):")
    ok = True
    for dtype in DTYPES:
        backend = kernels.resolve_backend(args.scan_backend, dtype=dtype)
        scan = functools.partial(kernels.selective_scan, backend=backend, return_last_state=True)
        for low, high in DT_RANGES:
            ok &= _report(
                f"scan {backend} {dtype}, dt {low:.0e}..{high:.0e}", check.parity(scan, dtype, dt_range=(low, high))
            )
    ok &= _report(
        f"decode vs forward, scan {kernels.resolve_backend(args.scan_backend)} float32",
        [("logits", decode_error(args.scan_backend), DECODE_TOLERANCE)],
    )
    print(f"{'PASS' if ok else 'FAIL'} ({time.perf_counter() - start:.1f} s)")
    if not ok:
        sys.exit(1)


def cli() -> None:
    """The console script (pyproject.toml [project.scripts])."""
    run_main(main)


if __name__ == "__main__":
    cli()

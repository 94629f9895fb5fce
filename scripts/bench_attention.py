"""Hierarchical attention, dense (before) vs blocked (hrm/models/attention.py), side by side in one run.

    python scripts/bench_attention.py [--config configs/hybrid_small.py --batch 8 --length 2048]
                                      [--d_model 512 --heads 8] [--iters 5]
                                      [--time_batch 2 --time_length 1024 --time_d_model 256 --time_heads 4]

Memory: XLA's temporaries (``jit(...).lower(abstract inputs).compile().memory_analysis()``, nothing is run)
of a training step — value_and_grad of the cross-entropy of --config's whole model, of mean(out²) of one
hybrid_recursive layer and of the attention alone at scales (1,) and (1, 2, 4) — at --batch x --length (the
layer and attention at --d_model, --heads). Time: the jitted forward and forward+backward of the attention
at the --time_* shape, median of --iters runs after a warm-up. "dense" is the formulation the blocked kernel
replaced — every scale scores all L positions under an L x L mask — kept as tests/test_attention.py's oracle.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from hrm.config import ModelConfig, load_config_file, resolve_config  # noqa: E402
from hrm.models import build_model  # noqa: E402
from hrm.models.attention import MultiScaleAttention  # noqa: E402
from hrm.models.hybrid import HybridRecursiveLayer  # noqa: E402
from tests.test_attention import dense_attention  # noqa: E402


@contextlib.contextmanager
def implementation(name: str):
    """Within the block, MultiScaleAttention runs ``name``: "blocked" (as shipped) or "dense"."""
    call = MultiScaleAttention.__call__
    if name == "dense":
        MultiScaleAttention.__call__ = lambda self, x, cache=None, segment_ids=None: (
            dense_attention(self, x, segment_ids),
            cache,
        )
    try:
        yield
    finally:
        MultiScaleAttention.__call__ = call


def temp_gib(make, inputs) -> float:
    """GiB of XLA temporaries of the compiled value_and_grad of mean(out²) of the module ``make()`` builds, for
    abstract ``inputs``; a model's float32 logits are scored with the cross-entropy of its input tokens."""
    graphdef, params = nnx.split(nnx.eval_shape(make))

    def loss(params, x, segment_ids):
        out, _ = nnx.merge(graphdef, params)(x, segment_ids=segment_ids)
        if x.ndim == 2:
            return optax.softmax_cross_entropy_with_integer_labels(out, x).mean()
        return jnp.mean(out.astype(jnp.float32) ** 2)

    compiled = jax.jit(jax.value_and_grad(loss)).lower(params, *inputs).compile()
    return compiled.memory_analysis().temp_size_in_bytes / 2**30


def median_seconds(fn, args, iters: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def attention_times(cfg: ModelConfig, scales, batch: int, length: int, iters: int) -> tuple[float, float]:
    """(forward, forward+backward) seconds of the attention on random inputs, one document per row."""
    graphdef, params = nnx.split(MultiScaleAttention(cfg, scales, rngs=nnx.Rngs(0)))
    forward = lambda params, x, segment_ids: nnx.merge(graphdef, params)(x, segment_ids=segment_ids)[0]
    loss = lambda params, x, segment_ids: jnp.mean(forward(params, x, segment_ids) ** 2)
    args = (
        params,
        jax.random.normal(jax.random.key(0), (batch, length, cfg.d_model)),
        jnp.zeros((batch, length), jnp.int32),
    )
    return (
        median_seconds(jax.jit(forward), args, iters),
        median_seconds(jax.jit(jax.value_and_grad(loss)), args, iters),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/hybrid_small.py", help="the model of the first row")
    for name, default in [
        ("batch", 8),
        ("length", 2048),
        ("d_model", 512),
        ("heads", 8),
        ("time_batch", 2),
        ("time_length", 1024),
        ("time_d_model", 256),
        ("time_heads", 4),
        ("iters", 5),
    ]:
        parser.add_argument(f"--{name}", type=int, default=default)
    args = parser.parse_args()
    cfg = ModelConfig(family="hybrid_recursive", d_model=args.d_model, n_heads=args.heads, n_layers=8)
    timed = ModelConfig(family="hybrid_recursive", d_model=args.time_d_model, n_heads=args.time_heads)
    shape = (args.batch, args.length, args.d_model)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}\n")
    print(
        f"XLA temporaries of a training step, batch {args.batch} x {args.length}, d_model {args.d_model}, "
        f"{args.heads} heads:\n"
    )
    print("| module | dense GiB | blocked GiB | blocked / dense |\n|---|---|---|---|")
    model = resolve_config(load_config_file(args.config)).model
    features = jax.ShapeDtypeStruct(shape, jnp.float32)
    tokens = jax.ShapeDtypeStruct(shape[:2], jnp.int32)
    modules = [
        (f"{Path(args.config).stem} model", lambda: build_model(model), (tokens, tokens)),
        ("hybrid_recursive layer", lambda: HybridRecursiveLayer(cfg, rngs=nnx.Rngs(0)), (features, tokens)),
    ]
    modules += [
        (
            f"attention {scales}",
            lambda scales=scales: MultiScaleAttention(cfg, scales, rngs=nnx.Rngs(0)),
            (features, tokens),
        )
        for scales in [(1,), (1, 2, 4)]
    ]
    for name, make, inputs in modules:
        gib = {}
        for impl in ("dense", "blocked"):
            with implementation(impl):
                gib[impl] = temp_gib(make, inputs)
        print(
            f"| {name} | {gib['dense']:.2f} | {gib['blocked']:.2f} | {gib['blocked'] / gib['dense']:.3f} |", flush=True
        )
    print(
        f"\nAttention seconds (median of {args.iters}), batch {args.time_batch} x {args.time_length}, "
        f"d_model {args.time_d_model}, {args.time_heads} heads:\n"
    )
    print("| scales | dense fwd | blocked fwd | dense fwd+bwd | blocked fwd+bwd |\n|---|---|---|---|---|")
    for scales in [(1,), (1, 2, 4)]:
        seconds = {}
        for impl in ("dense", "blocked"):
            with implementation(impl):
                seconds[impl] = attention_times(timed, scales, args.time_batch, args.time_length, args.iters)
        print(
            f"| {scales} | {seconds['dense'][0]:.3f} | {seconds['blocked'][0]:.3f} | {seconds['dense'][1]:.3f} "
            f"| {seconds['blocked'][1]:.3f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()

"""Does jax.checkpoint lower the compiled memory of a backward pass on this backend? (docs/BENCHMARKS.md)

An 8-layer MLP stack (4096 x 256 activations, 1024 hidden) differentiated four ways: unrolled or inside
``lax.scan``, with and without ``jax.checkpoint`` per layer; prints XLA's temporary bytes of each compiled
gradient. On XLA's CPU compiler only the scanned stack benefits (jax-ml/jax#19822).

    python scripts/bench_remat.py
"""

import jax
import jax.numpy as jnp

LAYERS, ROWS, WIDTH, HIDDEN = 8, 4096, 256, 1024


def layer(x, w):
    return x + jnp.tanh(x @ w[0]) @ w[1], None


def unrolled(weights, x, remat):
    step = jax.checkpoint(layer) if remat else layer
    for i in range(LAYERS):
        x, _ = step(x, (weights[0][i], weights[1][i]))
    return jnp.sum(x)


def scanned(weights, x, remat):
    return jnp.sum(jax.lax.scan(jax.checkpoint(layer) if remat else layer, x, weights)[0])


def main():
    weights = (jnp.full((LAYERS, WIDTH, HIDDEN), 0.01), jnp.full((LAYERS, HIDDEN, WIDTH), 0.01))
    x = jnp.ones((ROWS, WIDTH))
    print(f"jax {jax.__version__} on {jax.default_backend()}: temporaries of the compiled gradient (MiB)")
    for name, stack in (("unrolled", unrolled), ("scanned", scanned)):
        sizes = []
        for remat in (False, True):
            grad = jax.jit(jax.grad(lambda w, x: stack(w, x, remat)))
            sizes.append(grad.lower(weights, x).compile().memory_analysis().temp_size_in_bytes / 2**20)
        print(f"{name:9s} no remat {sizes[0]:7.1f}   remat {sizes[1]:7.1f}   ratio {sizes[1] / sizes[0]:.2f}")


if __name__ == "__main__":
    main()

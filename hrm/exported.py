"""Decoding without the Python model code: ``jax.export`` (StableHLO) of the prefill and the decode step.

``export_decoding(model, out)`` (``python -m hrm.export --format stablehlo``) writes

- ``prefill_<n>.jaxexport`` for n = 1, 2, 4, ..., EXPORT_CHUNK: feed n tokens per row after a cache, of which
  each row's first ``lengths`` are real (``hrm.inference.feed``: right-padded prompts of different lengths in
  one batch, fed in ``prefill_chunks``, as ``hrm.inference`` does);
- ``decode.jaxexport``: one decode step — sample each row's token with its own settings and PRNG key
  (greedy at temperature 0), feed it, return it with the next logits and cache;
- ``params.npz`` (the weights, in the functions' argument order) and ``manifest.json`` (batch, cache
  leaves' shapes and dtypes, vocabulary, end-of-text id).

Every pytree is flattened at the boundary, so a consumer needs only jax (``ExportedDecoder``) or any
StableHLO runtime. The cache holds ``model.max_cache_len`` positions for attention models.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hrm.inference import Sampling, SamplingArrays, feed, padded_chunks, row_key, sample_logits

EXPORT_CHUNK = 256
MANIFEST = "manifest.json"


def export_decoding(model, out: str | Path, batch: int = 1, chunk: int = EXPORT_CHUNK) -> Path:
    """Write the folder described in the module docstring; prefill chunks of 1, 2, 4, ..., ``chunk`` tokens."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    graphdef, params = model.graphdef, model.params
    limit = model.generator.context_limit(params)
    cache = model.generator._empty(params, batch, limit or 64)
    param_leaves, param_tree = jax.tree.flatten(params)
    cache_leaves, cache_tree = jax.tree.flatten(cache)
    n_params = len(param_leaves)
    vocab = model.config.model.vocab_size

    def prefill(*args):
        p = jax.tree.unflatten(param_tree, args[:n_params])
        tokens, lengths = args[n_params : n_params + 2]
        logits, c = feed(nnx.merge(graphdef, p), tokens, jax.tree.unflatten(cache_tree, args[n_params + 2 :]), lengths)
        return (logits, *jax.tree.leaves(c))

    def decode(*args):
        p = jax.tree.unflatten(param_tree, args[:n_params])
        logits, key_data, steps, *settings = args[n_params : n_params + 7]
        c = jax.tree.unflatten(cache_tree, args[n_params + 7 :])
        keys = jax.vmap(lambda k, n: jax.random.fold_in(jax.random.wrap_key_data(k), n))(key_data, steps)
        token = sample_logits(logits, keys, SamplingArrays(*settings, jnp.ones_like(settings[0])))
        next_logits, c = nnx.merge(graphdef, p, copy=True)(token[:, None], c)
        return (token, next_logits[:, -1], *jax.tree.leaves(c))

    spec = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype)
    param_specs, cache_specs = [spec(x) for x in param_leaves], [spec(x) for x in cache_leaves]
    for n in [1 << i for i in range(chunk.bit_length())]:
        token_spec = jax.ShapeDtypeStruct((batch, n), jnp.int32)
        lengths_spec = jax.ShapeDtypeStruct((batch,), jnp.int32)
        exported = jax.export.export(jax.jit(prefill))(*param_specs, token_spec, lengths_spec, *cache_specs)
        (out / f"prefill_{n}.jaxexport").write_bytes(exported.serialize())
    rows = lambda dtype: jax.ShapeDtypeStruct((batch,), dtype)
    decode_specs = [
        jax.ShapeDtypeStruct((batch, vocab), jnp.float32),
        jax.ShapeDtypeStruct((batch, 2), jnp.uint32),
        rows(jnp.int32),
        rows(jnp.float32),
        rows(jnp.int32),
        rows(jnp.float32),
        rows(jnp.float32),
    ]
    exported = jax.export.export(jax.jit(decode))(*param_specs, *decode_specs, *cache_specs)
    (out / "decode.jaxexport").write_bytes(exported.serialize())
    np.savez(out / "params.npz", *[np.asarray(x) for x in param_leaves])
    (out / MANIFEST).write_text(
        json.dumps(
            {
                "batch": batch,
                "vocab_size": vocab,
                "eos_id": model.tokenizer.eos_id,
                "tokenizer": model.config.data.tokenizer,
                "chunk": chunk,
                "context_limit": limit,
                "cache": [[list(x.shape), str(x.dtype)] for x in cache_leaves],
            },
            indent=2,
        )
        + "\n"
    )
    return out


class ExportedDecoder:
    """Greedy or sampled generation from an ``export_decoding`` folder, with jax alone (no hrm model code):
    token for token what ``Generator.generate_ids`` gives for the same prompts, settings and seed."""

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        self.manifest = json.loads((folder / MANIFEST).read_text())
        load = lambda name: jax.export.deserialize(bytearray((folder / name).read_bytes()))
        self.prefills = {
            n: load(f"prefill_{n}.jaxexport") for n in [1 << i for i in range(self.manifest["chunk"].bit_length())]
        }
        self.decode = load("decode.jaxexport")
        with np.load(folder / "params.npz") as data:
            self.params = [jnp.asarray(data[f"arr_{i}"]) for i in range(len(data.files))]

    def generate_ids(
        self,
        prompts: list[list[int]],
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        min_p: float | None = None,
        seed: int = 0,
    ) -> list[list[int]]:
        batch = self.manifest["batch"]
        if len(prompts) != batch or not all(prompts):
            raise ValueError(f"this export takes {batch} non-empty prompt(s) at a time")
        cache = [jnp.zeros(shape, dtype) for shape, dtype in self.manifest["cache"]]
        logits = jnp.zeros((batch, self.manifest["vocab_size"]), jnp.float32)
        for tokens, real in padded_chunks(prompts, self.manifest["chunk"]):
            chunk_logits, *cache = self.prefills[tokens.shape[1]].call(
                *self.params, tokens, jnp.asarray(real, jnp.int32), *cache
            )
            logits = jnp.where(jnp.asarray(real > 0)[:, None], chunk_logits, logits)
        keys = jnp.stack([row_key(seed, i) for i in range(batch)])
        settings = SamplingArrays.of([Sampling(temperature, top_k, top_p, min_p).check()] * batch)[:4]
        out = []
        for step in range(max_new_tokens):
            token, logits, *cache = self.decode.call(
                *self.params, logits, keys, jnp.full((batch,), step, jnp.int32), *settings, *cache
            )
            out.append(np.asarray(token))
        return np.stack(out, 1).tolist() if out else [[] for _ in prompts]

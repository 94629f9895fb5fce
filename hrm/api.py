"""``hrm.load(run_dir)``: a trained model with its tokenizer, for logits and generation."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hrm import interop, weights
from hrm.inference import Generator, SamplingError, check_request, token_array
from hrm.models import build_model
from hrm.tokenizer import get_tokenizer
from hrm.training import checkpoint
from hrm.training.checkpoint import CheckpointError
from hrm.training.state import abstract_params


class LoadedModel:
    """A model restored from a run directory: ``tokenizer``, ``logits`` and ``generate``."""

    def __init__(self, config, params, step: int):
        self.config = config
        self.step = step
        self.graphdef, _ = nnx.split(nnx.eval_shape(lambda: build_model(config.model)))
        self.params = params
        self.generator = Generator(self.graphdef)
        self._forward = jax.jit(lambda params, tokens: nnx.merge(self.graphdef, params)(tokens)[0])

    @functools.cached_property
    def tokenizer(self):
        return get_tokenizer(self.config.data.tokenizer)

    def logits(self, token_ids) -> np.ndarray:
        """Logits (batch, length, vocab) for token ids (length,) or (batch, length)."""
        tokens = token_array(token_ids)
        tokens = tokens[None] if tokens.ndim == 1 else tokens
        if tokens.ndim != 2 or not tokens.size:
            raise SamplingError(
                f"token ids must be a non-empty (length,) or (batch, length) list, got shape {tokens.shape}"
            )
        self.generator.check_ids(self.params, tokens)
        return np.asarray(self._forward(self.params, jnp.asarray(tokens)))

    def generate(
        self,
        prompts,
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int = 0,
        stop_at_eos: bool = True,
        **sampling,
    ) -> list[str]:
        """Continuations (text) of each prompt string; ``temperature=0`` is greedy; ``sampling``: ``min_p``,
        ``repetition_penalty`` (``hrm.inference.Sampling``)."""
        if not isinstance(prompts, str) and not (
            isinstance(prompts, (list, tuple)) and prompts and all(isinstance(p, str) for p in prompts)
        ):
            raise SamplingError(f"prompts must be a string or a non-empty list of strings, got {prompts!r:.80}")
        check_request(max_new_tokens, seed)
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        ids = [self.tokenizer.encode(p) or [self.tokenizer.eos_id] for p in prompts]
        outputs = self.generator.generate_ids(
            self.params, ids, max_new_tokens, temperature, top_k, top_p, seed, **sampling
        )
        if stop_at_eos:
            outputs = [
                out[: out.index(self.tokenizer.eos_id)] if self.tokenizer.eos_id in out else out for out in outputs
            ]
        return [self.tokenizer.decode(out) for out in outputs]


def load(path: str | Path, step: int | str | None = None, max_context: int | None = None) -> LoadedModel:
    """Load a trained model: a checkpoint of an ``hrm.train`` run directory, one step folder
    ``DIR/checkpoints/N``, an ``hrm.export`` final-weights folder, or a reference Mamba folder (transformers or
    state-spaces layout, ``hrm.interop``) with its ``tokenizer.json`` when it has one.

    ``step``: a number, ``"best"`` (lowest eval loss), ``"final"`` (end of training) or ``None`` / ``"latest"``
    (the newest step whose files match their checksums; a damaged newer step is named on stderr). A missing or
    damaged step raises ``CheckpointError`` naming it and the available steps (``checkpoint.resolve_step``).
    ``max_context`` replaces ``model.max_cache_len``, the most positions (prompt + new tokens) an attention
    model decodes."""
    path = Path(path)
    if path.is_file():
        raise CheckpointError(
            f"'{path}' is a file; pass a run directory (hrm.train --output_dir), one of its "
            f"{checkpoint.CHECKPOINT_DIR}/N folders or an hrm.export folder"
        )
    if path.parent.name == checkpoint.CHECKPOINT_DIR and path.name.isdigit() and step is None:
        path, step = path.parent.parent, int(path.name)
    if not (path / checkpoint.CHECKPOINT_DIR).is_dir() and interop.reference_layout(path):
        config, params = interop.load_reference(path)
        step = 0
    elif path.is_dir() and weights.is_final_folder(path):
        config, params, step = weights.load_final(path)
    else:
        checkpoint.quiet_orbax()
        config = checkpoint.read_run_config(path)
        params, step = checkpoint.restore_params(path, abstract_params(config), step)
    if max_context is not None:
        config.model = dataclasses.replace(config.model, max_cache_len=max_context_for(config.model, max_context))
    return LoadedModel(config, jax.tree.map(jnp.asarray, params), step)


def max_context_for(cfg, max_context: int) -> int:
    """``max_context`` rounded up to a multiple of the largest attention scale (a ConfigError rule)."""
    if max_context < 1:
        raise CheckpointError(f"max_context must be >= 1, got {max_context}")
    scale = max(cfg.attention_scales)
    return -(-max_context // scale) * scale

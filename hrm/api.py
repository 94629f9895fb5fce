"""``hrm.load(run_dir)``: a trained model with its tokenizer, for logits and generation."""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hrm.inference import Generator
from hrm.models import build_model
from hrm.tokenizer import get_tokenizer
from hrm.training import checkpoint


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
        tokens = np.asarray(token_ids, np.int32)
        tokens = tokens[None] if tokens.ndim == 1 else tokens
        return np.asarray(self._forward(self.params, jnp.asarray(tokens)))

    def generate(self, prompts, max_new_tokens: int = 64, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, seed: int = 0, stop_at_eos: bool = True) -> list[str]:
        """Continuations (text) of each prompt string; ``temperature=0`` is greedy."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        ids = [self.tokenizer.encode(p) or [self.tokenizer.eos_id] for p in prompts]
        outputs = self.generator.generate_ids(self.params, ids, max_new_tokens, temperature, top_k, top_p, seed)
        if stop_at_eos:
            outputs = [out[:out.index(self.tokenizer.eos_id)] if self.tokenizer.eos_id in out else out
                       for out in outputs]
        return [self.tokenizer.decode(out) for out in outputs]


def load(path: str | Path, step: int | str | None = None) -> LoadedModel:
    """Load a checkpoint of an ``hrm.train`` run directory, or a reference Mamba folder (transformers or
    state-spaces layout, ``hrm.interop``) with its ``tokenizer.json`` when it has one.

    ``step``: a number, ``"best"`` (lowest eval loss), ``"final"`` (end of training) or ``None`` / ``"latest"``
    (the newest step whose files match their checksums; a damaged newer step is named on stderr). A missing or
    damaged step raises ``CheckpointError`` naming it and the available steps (``checkpoint.resolve_step``)."""
    from hrm import interop
    if not (Path(path) / checkpoint.CHECKPOINT_DIR).is_dir() and interop.reference_layout(path):
        config, params = interop.load_reference(path)
        return LoadedModel(config, jax.tree.map(jnp.asarray, params), step=0)
    checkpoint.quiet_orbax()
    config = checkpoint.read_run_config(path)
    from hrm.training.state import abstract_params
    params, step = checkpoint.restore_params(Path(path), abstract_params(config), step)
    return LoadedModel(config, params, step)

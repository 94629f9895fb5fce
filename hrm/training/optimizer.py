"""optax AdamW with linear warmup, cosine decay and global-norm clipping."""

from __future__ import annotations

import jax
import optax

from hrm.config import TrainConfig

NO_DECAY_NAMES = ("A_log", "D", "bias", "scale", "conv_bias")


def learning_rate_schedule(cfg: TrainConfig) -> optax.Schedule:
    warmup = min(cfg.warmup_steps, max(cfg.steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.lr, warmup_steps=warmup,
        decay_steps=max(cfg.steps, warmup + 1), end_value=cfg.lr * cfg.min_lr_ratio)


def weight_decay_mask(params):
    """Decay weight matrices only: never A_log, D, norms or biases (as the reference Mamba)."""
    def decays(path, leaf):
        names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        names = [n for n in names if n != "value"]     # nnx.Variable leaves end in ".value"
        return leaf.ndim >= 2 and names[-1] not in NO_DECAY_NAMES
    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    return optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip),
        optax.adamw(learning_rate_schedule(cfg), b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay,
                    mask=weight_decay_mask))

"""optax AdamW with linear warmup, cosine decay and global-norm clipping."""

from __future__ import annotations

import functools

import jax.numpy as jnp
import optax
from flax import nnx

from hrm.config import TrainConfig
from hrm.models.params import decay_mask


def learning_rate_schedule(cfg: TrainConfig) -> optax.Schedule:
    """The learning rate of the update at step ``count`` (0-based): a linear warmup ``lr * (count + 1) /
    warmup_steps`` (the first update trains; optax's ``warmup_cosine_decay_schedule`` starts at 0, wasting it)
    reaching ``lr`` at update ``warmup_steps - 1``, then a cosine decay to ``lr * min_lr_ratio`` at the last
    update, ``steps - 1``."""
    warmup = min(cfg.warmup_steps, cfg.steps)
    decay_start = max(warmup - 1, 0)
    end = cfg.lr * cfg.min_lr_ratio

    def schedule(count):
        progress = jnp.clip((count - decay_start) / max(cfg.steps - 1 - decay_start, 1), 0.0, 1.0)
        cosine = end + (cfg.lr - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
        return jnp.where(count < warmup, cfg.lr * (count + 1) / max(warmup, 1), cosine)

    return schedule


def make_optimizer(cfg: TrainConfig, graphdef: nnx.GraphDef | None = None) -> optax.GradientTransformation:
    """AdamW after clipping the gradient's global norm to ``grad_clip`` (0: no clipping; clipping to 0 would
    zero every update). Weight decay applies to the parameters the model's ``graphdef`` marks as decaying
    (``hrm.models.params``); without a ``graphdef`` there is no mask, so ``weight_decay`` must be 0."""
    if graphdef is None and cfg.weight_decay:
        raise ValueError("make_optimizer: weight decay needs the model's graphdef (its parameters' marks)")
    mask = functools.partial(decay_mask, graphdef) if graphdef is not None else None
    return optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip) if cfg.grad_clip else optax.identity(),
        optax.adamw(learning_rate_schedule(cfg), b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay, mask=mask),
    )

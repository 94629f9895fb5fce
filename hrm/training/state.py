"""The train state (step, params, opt_state) as plain pytrees, and the jitted train step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from hrm.config import Config
from hrm.models import build_model
from hrm.training.optimizer import learning_rate_schedule, make_optimizer


def init_model(config: Config):
    """(graphdef, params as a pure dict) for the run's model config and seed."""
    model = build_model(config.model, seed=config.train.seed)
    graphdef, params = nnx.split(model)
    return graphdef, nnx.to_pure_dict(params)


def abstract_params(config: Config):
    """Shapes and dtypes of the parameters, without computing any initialisation."""
    return jax.eval_shape(lambda: init_model(config)[1])


def init_train_state(config: Config):
    graphdef, params = init_model(config)
    optimizer = make_optimizer(config.train)
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": optimizer.init(params)}
    return graphdef, state


def next_token_loss(graphdef, params, batch) -> jax.Array:
    """Mean cross-entropy over the unmasked targets."""
    logits, _ = nnx.merge(graphdef, params)(batch["inputs"])
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    mask = batch["mask"].astype(jnp.float32)
    return jnp.sum(losses * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def make_train_step(graphdef, config: Config):
    """A pure (state, batch) → (state, metrics) function; jit it with the run's shardings."""
    optimizer = make_optimizer(config.train)
    schedule = learning_rate_schedule(config.train)

    def train_step(state, batch):
        loss, grads = jax.value_and_grad(next_token_loss, argnums=1)(graphdef, state["params"], batch)
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        new_state = {"step": state["step"] + 1, "params": optax.apply_updates(state["params"], updates),
                     "opt_state": opt_state}
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": schedule(state["step"])}
        return new_state, metrics

    return train_step

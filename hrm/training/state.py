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


def loss_and_metrics(graphdef, params, batch) -> tuple[jax.Array, dict]:
    """(objective, metrics): the objective is the mean cross-entropy over the unmasked targets plus
    every ``aux_loss`` the model sowed (``nnx.Intermediate``, collected with ``nnx.capture``); metrics hold ``loss`` (the cross-entropy),
    ``aux_loss`` (their sum, when any) and the mean of each sown ``metric_<name>`` scalar as ``<name>``."""
    model = nnx.merge(graphdef, params)
    (logits, _), sown_state = nnx.capture(model, nnx.Intermediate)(batch["inputs"],
                                                                   segment_ids=batch.get("segment_ids"))
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    mask = batch["mask"].astype(jnp.float32)
    loss = jnp.sum(losses * mask) / jnp.maximum(jnp.sum(mask), 1.0)
    sown = {}
    for path, value in jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(sown_state)):
        name = next(str(k.key) for k in reversed(path) if isinstance(getattr(k, "key", None), str))
        sown.setdefault(name, []).append(jnp.asarray(value, jnp.float32))
    metrics = {"loss": loss}
    objective = loss
    if "aux_loss" in sown:
        metrics["aux_loss"] = sum(sown.pop("aux_loss"))
        objective = loss + metrics["aux_loss"]
    metrics.update({name[len("metric_"):]: jnp.mean(jnp.stack(values)) for name, values in sown.items()
                    if name.startswith("metric_")})
    return objective, metrics


def next_token_loss(graphdef, params, batch) -> jax.Array:
    """Mean cross-entropy over the unmasked targets (auxiliary losses excluded)."""
    return loss_and_metrics(graphdef, params, batch)[1]["loss"]


def make_train_step(graphdef, config: Config):
    """A pure (state, batch) → (state, metrics) function; jit it with the run's shardings."""
    optimizer = make_optimizer(config.train)
    schedule = learning_rate_schedule(config.train)

    def train_step(state, batch):
        (_, model_metrics), grads = jax.value_and_grad(loss_and_metrics, argnums=1, has_aux=True)(
            graphdef, state["params"], batch)
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        new_state = {"step": state["step"] + 1, "params": optax.apply_updates(state["params"], updates),
                     "opt_state": opt_state}
        metrics = {**model_metrics, "grad_norm": optax.tree.norm(grads), "lr": schedule(state["step"])}
        return new_state, metrics

    return train_step

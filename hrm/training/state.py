"""The train state (step, params, opt_state) as plain pytrees, and the jitted train step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from hrm.config import Config
from hrm.models import build_model
from hrm.models.dropout import dropout_key
from hrm.models.lm import head_logits
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
    optimizer = make_optimizer(config.train, graphdef)
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": optimizer.init(params)}
    return graphdef, state


def abstract_train_state(config: Config):
    """(graphdef, the train state's shapes and dtypes) from one abstract model (``nnx.eval_shape``): nothing is
    allocated or initialised."""
    graphdef, params = nnx.split(nnx.eval_shape(lambda: build_model(config.model, seed=config.train.seed)))
    params = nnx.to_pure_dict(params)
    opt_state = jax.eval_shape(make_optimizer(config.train, graphdef).init, params)
    return graphdef, {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": params, "opt_state": opt_state}


def forward_terms(graphdef, params, batch, dropout_rng: jax.Array | None = None) -> tuple[jax.Array, dict]:
    """(cross-entropy summed over the unmasked targets, sown values) of one batch; with ``dropout_rng`` the
    model's dropout is on (hrm/models/dropout.py), as in training.

    The sown values are ``aux_loss``, the sum of every ``aux_loss`` the model sowed (``nnx.Intermediate``,
    collected with ``nnx.capture``), when it sowed any, and the mean of each sown ``metric_<name>`` scalar as
    ``<name>``."""
    model = nnx.merge(graphdef, params)
    with dropout_key(dropout_rng):
        (features, _), sown_state = nnx.capture(model.features, nnx.Intermediate)(
            batch["inputs"], segment_ids=batch.get("segment_ids")
        )
    project = lambda x, head: head_logits(x, head, model.cfg)
    ce_sum = chunked_cross_entropy(features, model.head_weight(), batch["targets"], batch["mask"], project=project)
    sown = sown_values(sown_state)
    values = {"aux_loss": sum(jnp.sum(v) for v in sown.pop("aux_loss"))} if "aux_loss" in sown else {}
    values.update(
        {name[len("metric_") :]: jnp.mean(jnp.stack(v)) for name, v in sown.items() if name.startswith("metric_")}
    )
    return ce_sum, values


def sown_values(sown_state) -> dict[str, list[jax.Array]]:
    """Every value sown under each name (``nnx.capture``'s state), float32, in model order."""
    sown = {}
    for path, value in jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(sown_state)):
        name = next(str(k.key) for k in reversed(path) if isinstance(getattr(k, "key", None), str))
        sown.setdefault(name, []).append(jnp.asarray(value, jnp.float32))
    return sown


LOSS_CHUNK_TOKENS = 1024


def loss_chunking(batch: int, length: int, chunk_tokens: int = LOSS_CHUNK_TOKENS) -> tuple[int, int]:
    """(chunks, positions per chunk) of ``chunked_cross_entropy``: about ``chunk_tokens`` tokens over all rows
    per chunk, the length padded up to a whole number of chunks (so a prime length still gets full chunks)."""
    per_chunk = max(1, min(length, chunk_tokens // batch))
    n_chunks = -(-length // per_chunk)
    return n_chunks, -(-length // n_chunks)  # the same chunk count with the least padding


def chunked_cross_entropy(
    features, head, targets, mask, chunk_tokens: int = LOSS_CHUNK_TOKENS, project=jnp.matmul
) -> jax.Array:
    """Cross-entropy of ``project(features, head)`` (the logits) summed over the unmasked targets, a sequence
    chunk at a time.

    The (batch, length, vocab) float32 logits are the largest activation of a small model with a GPT-2
    vocabulary (3.3 GB at 8 x 2048 tokens, more again for the softmax and its gradient). Here the sequence
    is cut into chunks of about ``chunk_tokens`` tokens over all rows (each chunk keeps every row, so data
    parallelism is untouched; the last chunk is padded with masked positions), each chunk's logits are
    rematerialised in the backward pass, and only one chunk's logits exist at a time (MaxText's vocabulary
    tiling does the same)."""
    batch, length, _ = features.shape
    n_chunks, per_chunk = loss_chunking(batch, length, chunk_tokens)

    @jax.checkpoint
    def chunk_loss(x, t, m):
        losses = optax.softmax_cross_entropy_with_integer_labels(project(x, head), t)
        return jnp.sum(jnp.where(m, losses, 0.0))

    if n_chunks == 1:
        return chunk_loss(features, targets, mask)
    pad = n_chunks * per_chunk - length
    if pad:
        widen = lambda a: jnp.pad(a, [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2))
        features, targets, mask = widen(features), widen(targets), widen(mask)
    split = lambda a: jnp.moveaxis(a.reshape(batch, n_chunks, per_chunk, *a.shape[2:]), 1, 0)
    sums = jax.lax.map(lambda c: chunk_loss(*c), (split(features), split(targets), split(mask)))
    return jnp.sum(sums)


def target_count(batch) -> jax.Array:
    """The number of unmasked targets (at least 1, so an all-masked batch has loss 0, not NaN)."""
    return jnp.maximum(jnp.sum(batch["mask"].astype(jnp.float32)), 1.0)


def eval_sums(graphdef, params, batch) -> tuple[jax.Array, jax.Array]:
    """(cross-entropy summed over the unmasked targets, their count) of one batch: summed over batches on the
    device, they give the held-out loss with every target weighing the same (hrm/training/evaluation.py)."""
    ce_sum, _ = forward_terms(graphdef, params, batch)
    return ce_sum, jnp.sum(batch["mask"].astype(jnp.float32))


def micro_batches(batch: dict, steps: int) -> dict:
    """(steps, rows / steps, ...) arrays: micro-batch ``i`` holds rows ``i, i + steps, i + 2·steps, …``, so with
    the rows sharded in contiguous blocks over the devices every device keeps its share of every micro-batch."""
    return jax.tree.map(lambda x: x.reshape(x.shape[0] // steps, steps, *x.shape[1:]).swapaxes(0, 1), batch)


def accumulated_gradients(graphdef, params, batch, steps: int, dropout_rng=None) -> tuple[dict, dict]:
    """(gradients, metrics) of the batch's objective, computed over ``steps`` micro-batches in sequence.

    A ``lax.scan`` over the micro-batches sums their gradients inside one jitted step, so peak activation
    memory is one micro-batch's while the optimizer, the schedule, the step count and the checkpoints see
    the global batch (``optax.MultiSteps`` would instead make every micro-batch an optimizer call and carry
    the accumulator in the checkpointed optimizer state). Each micro-batch's cross-entropy sum is divided by
    the whole batch's target count and its (per-batch mean) auxiliary loss by ``steps``, so the result equals
    the gradient over the whole batch at once. ``dropout_rng`` (None: no dropout) gives each micro-batch its
    own dropout key."""
    n_targets = target_count(batch)

    def micro_objective(params, micro, rng):
        ce_sum, sown = forward_terms(graphdef, params, micro, rng)
        return ce_sum / n_targets + sown.get("aux_loss", 0.0) / steps, (ce_sum, sown)

    grad_fn = jax.grad(micro_objective, has_aux=True)
    if steps == 1:  # no accumulator: one params-sized buffer less
        grads, (ce_sum, sown) = grad_fn(params, batch, dropout_rng)
        return grads, {"loss": ce_sum / n_targets, **sown}

    def accumulate(total, micro_and_rng):
        micro, rng = micro_and_rng
        grads, terms = grad_fn(params, micro, rng)
        return jax.tree.map(jnp.add, total, grads), terms

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    rngs = None if dropout_rng is None else jax.random.split(dropout_rng, steps)
    grads, (ce_sums, sown) = jax.lax.scan(accumulate, zeros, (micro_batches(batch, steps), rngs))
    return grads, {"loss": jnp.sum(ce_sums) / n_targets, **jax.tree.map(jnp.mean, sown)}


def all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def schedule_count(opt_state) -> jax.Array:
    """The learning-rate schedule's count in the optimizer state: the updates applied so far (a skipped step
    keeps the old optimizer state, so it lags ``state["step"]`` by the skipped steps)."""
    is_schedule = lambda x: isinstance(x, optax.ScaleByScheduleState)
    (found,) = [x for x in jax.tree.leaves(opt_state, is_leaf=is_schedule) if is_schedule(x)]
    return found.count


def make_train_step(graphdef, config: Config):
    """A pure (state, batch) → (state, metrics) function; jit it with the run's shardings."""
    optimizer = make_optimizer(config.train, graphdef)
    schedule = learning_rate_schedule(config.train)

    def train_step(state, batch):
        dropout_rng = (
            jax.random.fold_in(jax.random.PRNGKey(config.train.seed), state["step"]) if config.model.dropout else None
        )  # masks follow the seed and the step
        grads, model_metrics = accumulated_gradients(
            graphdef, state["params"], batch, config.train.accumulation_steps, dropout_rng
        )
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        grad_norm = optax.tree.norm(grads)
        # A non-finite loss, gradient or result skips the update (as optax.apply_if_finite, which checks the
        # gradient only), so parameters and optimizer state stay finite; the step and the data still advance.
        finite = jnp.isfinite(model_metrics["loss"]) & jnp.isfinite(grad_norm) & all_finite(params)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
        new_state = {
            "step": state["step"] + 1,
            "params": keep(params, state["params"]),
            "opt_state": keep(opt_state, state["opt_state"]),
        }
        metrics = {
            **model_metrics,
            "grad_norm": grad_norm,
            "lr": schedule(schedule_count(state["opt_state"])),  # the applied one (skips hold its count)
            "skipped": (~finite).astype(jnp.float32),
        }
        return new_state, metrics

    return train_step

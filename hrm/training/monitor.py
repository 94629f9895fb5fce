"""What a log step records beyond the loss: model-FLOPs utilisation, activation norms, optional wandb.

- MFU: training model FLOPs per token (3x the forward's, ``hrm.models.accounting``; recomputation under
  ``model.remat`` is not model FLOPs) x tokens/s / the devices' dense peak FLOP/s. Peaks are the vendors'
  datasheet figures for the devices in ``PEAK_TFLOPS``; anywhere else (CPUs, unknown devices) MFU is "n/a".
- Activation norms: the models sow the RMS of the residual stream after every layer (``act_rms``) and of the
  recursion state after every depth (``state_rms``; hrm/models/lm.py, recursive.py) in full forwards.
  ``activation_probe`` collects them with one jitted forward over a few rows of the current batch, run only
  on log steps; the train step drops them unused (XLA removes the reductions).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from hrm.errors import UsageError
from hrm.models.accounting import flops_per_token, parameter_table
from hrm.training.state import sown_values

# Dense (no sparsity) peak TFLOP/s per device: (bf16 with fp32 accumulation, fp32 matmuls as XLA runs them:
# TF32 on NVIDIA Ampere and later, bf16 passes on TPUs). NVIDIA's H100/H200, A100, L4, A10 and RTX 4090/3090
# datasheets; Google Cloud's TPU v4/v5e/v5p/v6e pages. Matched as substrings of ``device.device_kind``, first
# match wins (so "H100 PCIe" comes before "H100").
PEAK_TFLOPS = (
    ("H100 PCIe", (756.0, 378.0)),
    ("H100", (989.4, 494.7)),
    ("H200", (989.4, 494.7)),
    ("GH200", (989.4, 494.7)),
    ("A100", (312.0, 156.0)),
    ("L4", (121.0, 60.0)),
    ("A10", (125.0, 62.5)),
    ("RTX 4090", (165.2, 82.6)),
    ("RTX 3090", (71.0, 35.6)),
    ("TPU v4", (275.0, 275.0)),
    ("TPU v5 lite", (197.0, 197.0)),
    ("TPU v5e", (197.0, 197.0)),
    ("TPU v5p", (459.0, 459.0)),
    ("TPU v5", (459.0, 459.0)),
    ("TPU v6", (918.0, 918.0)),
)


def peak_flops(device_kind: str, dtype: str) -> float | None:
    """One device's dense peak FLOP/s for ``dtype`` compute, None for devices not in ``PEAK_TFLOPS``."""
    for name, (bf16, fp32) in PEAK_TFLOPS:
        if name.lower() in device_kind.lower():
            return 1e12 * (bf16 if dtype == "bfloat16" else fp32)
    return None


def training_flops_per_token(config, parameters: dict[str, int] | None = None) -> int:
    """Model FLOPs of one trained token: forward + backward = 3x the forward (``flops_per_token``); ``parameters``
    per component when the caller has them (``parameter_table``)."""
    parameters = parameter_table(config.model) if parameters is None else parameters
    return 3 * flops_per_token(config.model, parameters, config.data.seq_len)


class Utilisation:
    """``mfu(tokens_per_sec)`` for the run's model on the local devices (None where the peak is unknown)."""

    def __init__(self, config, parameters: dict[str, int] | None = None):
        device = jax.devices()[0]
        self.flops_per_token = training_flops_per_token(config, parameters)
        peak = peak_flops(device.device_kind, config.model.dtype)
        self.peak = None if peak is None else peak * jax.device_count()
        self.device = f"{jax.device_count()} x {device.device_kind}"

    def mfu(self, tokens_per_sec: float) -> float | None:
        return None if self.peak is None else tokens_per_sec * self.flops_per_token / self.peak

    def describe(self) -> str:
        peak = (
            f"peak {self.peak / 1e12:,.0f} TFLOP/s ({self.device})"
            if self.peak
            else f"MFU n/a: no peak FLOP/s known for {self.device}"
        )
        return f"model FLOPs per trained token {self.flops_per_token:,} (3x forward); {peak}"


def activation_norms(graphdef, params, batch) -> dict[str, jax.Array]:
    """``act_rms_layer_<i>`` (the residual stream after each layer, in order of application: a recursive model's
    depths one after another) and ``state_rms_depth_<k>`` (the recursion state after depth k, averaged over
    layers) of a full forward of ``batch``."""
    model = nnx.merge(graphdef, params)
    _, sown = nnx.capture(model.features, nnx.Intermediate)(batch["inputs"], segment_ids=batch.get("segment_ids"))
    values = sown_values(sown)
    out = {}
    if "probe_act_rms" in values:
        for i, value in enumerate(jnp.concatenate([jnp.ravel(v) for v in values["probe_act_rms"]])):
            out[f"act_rms_layer_{i + 1}"] = value
    if "probe_state_rms" in values:
        rows = [jnp.reshape(v, (-1, v.shape[-1])) for v in values["probe_state_rms"]]  # (layers, depth) each
        per_depth = jnp.mean(jnp.concatenate(rows), axis=0)
        for k, value in enumerate(per_depth):
            out[f"state_rms_depth_{k + 1}"] = value
    return out


PROBE_ROWS_PER_DEVICE = 1


def make_probe(graphdef, params_sharding, batch_sharding):
    """A jitted (params, global batch) → activation norms over the batch's first row per device: a forward of
    ``devices`` rows on log steps only."""
    rows = PROBE_ROWS_PER_DEVICE * jax.device_count()

    def probe(params, batch):
        return activation_norms(graphdef, params, jax.tree.map(lambda x: x[:rows], batch))

    return jax.jit(probe, in_shardings=(params_sharding, batch_sharding))


def require_wandb():
    """The ``wandb`` module, or a one-line ``UsageError`` saying how to install it."""
    try:
        import wandb  # optional (the wandb extra): imported only for --wandb
    except ImportError:
        raise UsageError(
            "--wandb needs the wandb package: pip install wandb (WANDB_MODE=offline logs without a "
            "network); or drop --wandb, metrics.jsonl and tensorboard (tb/) have the same records"
        ) from None
    return wandb

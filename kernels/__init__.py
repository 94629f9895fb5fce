"""Selective-scan kernels for hrm (no Flax, no hrm imports)."""

from .selective_scan import (
    BACKENDS,
    BackendUnavailable,
    banner,
    choose_backend,
    pallas_self_check,
    resolve_backend,
    selective_scan,
)

__all__ = [
    "BACKENDS",
    "BackendUnavailable",
    "banner",
    "choose_backend",
    "pallas_self_check",
    "resolve_backend",
    "selective_scan",
]

"""Selective-scan kernels for hrm (no Flax, no hrm imports)."""

from kernels.selective_scan import BACKENDS, resolve_backend, selective_scan

__all__ = ["BACKENDS", "resolve_backend", "selective_scan"]

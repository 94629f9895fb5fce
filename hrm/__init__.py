"""hrm: Hybrid Recursive Mamba language models in JAX/Flax."""

from hrm.api import LoadedModel, load

__all__ = ["LoadedModel", "load"]

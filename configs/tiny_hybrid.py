"""tiny_hybrid: a CPU-sized hybrid_recursive model on bytes (tests and demos).

2 layers of Mamba + recursive processor (depth 3, per-sequence gate) + 1x/2x/4x attention, d 128.
"""

from hrm.config import ModelConfig, cpu_sized_config

DOCUMENTED_PARAMS = None
DOCUMENTED_SOURCE = "a test-sized variant, not in the documents"


def get_config():
    return cpu_sized_config(
        ModelConfig(
            family="hybrid_recursive", d_model=128, n_layers=2, n_heads=4, max_recursion_depth=3, max_cache_len=512
        )
    )

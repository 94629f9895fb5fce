"""tiny_pattern: a CPU-sized hybrid_pattern model 'AMAM' on bytes (tests and demos).

Attention (RoPE, 4 heads) + MLP layers alternating with Mamba blocks, d 128.
"""

from hrm.config import ModelConfig, cpu_sized_config

DOCUMENTED_PARAMS = None
DOCUMENTED_SOURCE = "a test-sized variant, not in the documents"


def get_config():
    return cpu_sized_config(
        ModelConfig(
            family="hybrid_pattern", d_model=128, n_layers=4, layer_pattern="AMAM", n_heads=4, max_cache_len=512
        )
    )

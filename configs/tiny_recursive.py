"""tiny_recursive: a CPU-sized recursive_ssm model on bytes (tests and demos).

2 physical Mamba blocks x 3 depths = 6 effective layers, rank-4 per-depth adapters, d 128.
"""

from hrm.config import ModelConfig, cpu_sized_config

DOCUMENTED_PARAMS = None
DOCUMENTED_SOURCE = "a test-sized variant, not in the documents"


def get_config():
    return cpu_sized_config(
        ModelConfig(
            family="recursive_ssm",
            d_model=128,
            n_layers=2,
            recurrent_depth=3,
            adapter_rank=4,
            checkpoint_segments=1,
            remat="block",
        )
    )

"""ablate_hybrid_recursive: hybrid_recursive of the matched-size CPU ablation (scripts/ablate.py,
docs/RESULTS.md).

2 layers of Mamba + shared recursive transform (depth 3, per-sequence gate) + 1x/2x/4x attention (4 heads),
d 80: 300K parameters (ablate_mamba: 298K).
"""

from hrm.config import ModelConfig, cpu_sized_config

DOCUMENTED_PARAMS = None
DOCUMENTED_SOURCE = "an ablation size, not in the documents"


def get_config():
    return cpu_sized_config(
        ModelConfig(
            family="hybrid_recursive", d_model=80, n_layers=2, n_heads=4, max_recursion_depth=3, max_cache_len=512
        )
    )

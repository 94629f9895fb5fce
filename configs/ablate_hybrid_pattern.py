"""ablate_hybrid_pattern: hybrid_pattern of the matched-size CPU ablation (scripts/ablate.py, docs/RESULTS.md).

Layers 'MAMA' (Mamba, attention + MLP, ...), 6 heads of 14, d 84: 300K parameters (ablate_mamba: 298K).
"""

from hrm.config import ModelConfig, cpu_sized_config

DOCUMENTED_PARAMS = None
DOCUMENTED_SOURCE = "an ablation size, not in the documents"


def get_config():
    return cpu_sized_config(
        ModelConfig(family="hybrid_pattern", d_model=84, n_layers=4, layer_pattern="MAMA", n_heads=6, max_cache_len=512)
    )

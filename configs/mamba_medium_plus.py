"""mamba_medium_plus: standard Mamba 'medium-plus': d_model 640, 9 layers (docs/MODELS.md, documented sizes).

Documents: ~120M (docs/MODELS.md, documented sizes, 'medium-plus'); ours: 55.9M (0.47x).
The table rounds its rule of thumb d^2 x layers x 8 + vocab x d (61.7M here) up generously;
ours is the exact count of reference Mamba-1 blocks (expand 2, d_state 16) with a tied GPT-2 embedding.
docs/MODELS.md itemises every size; ``python -m hrm.info --config configs/mamba_medium_plus.py`` counts per component.
"""

from hrm.config import ModelConfig, documented_size_config

DOCUMENTED_PARAMS = 120_000_000
DOCUMENTED_SOURCE = "docs/MODELS.md, documented sizes, 'medium-plus'"


def get_config():
    return documented_size_config(ModelConfig(family="mamba", d_model=640, n_layers=9), accumulation_steps=8)

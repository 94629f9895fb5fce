"""mamba_medium: standard Mamba 'medium': d_model 768, 12 layers (docs/MODELS.md, documented sizes).

Documents: ~200M (docs/MODELS.md, documented sizes, 'medium'); ours: 83.9M (0.42x).
The table rounds its rule of thumb d^2 x layers x 8 + vocab x d (95.2M here) up generously;
ours is the exact count of reference Mamba-1 blocks (expand 2, d_state 16) with a tied GPT-2 embedding.
docs/MODELS.md itemises every size; ``python -m hrm.info --config configs/mamba_medium.py`` counts per component.
"""

from hrm.config import ModelConfig, documented_size_config

DOCUMENTED_PARAMS = 200_000_000
DOCUMENTED_SOURCE = "docs/MODELS.md, documented sizes, 'medium'"


def get_config():
    return documented_size_config(ModelConfig(family="mamba", d_model=768, n_layers=12), accumulation_steps=8)

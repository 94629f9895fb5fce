"""mamba_large: standard Mamba 'large': d_model 1024, 16 layers (docs/MODELS.md, documented sizes).

Documents: ~500M (docs/MODELS.md, documented sizes, 'large'); ours: 158.2M (0.32x).
The table rounds its rule of thumb d^2 x layers x 8 + vocab x d (185.7M here) up generously;
ours is the exact count of reference Mamba-1 blocks (expand 2, d_state 16) with a tied GPT-2 embedding.
docs/MODELS.md itemises every size; ``python -m hrm.info --config configs/mamba_large.py`` counts per component.
"""

from hrm.config import ModelConfig, documented_size_config

DOCUMENTED_PARAMS = 500_000_000
DOCUMENTED_SOURCE = "docs/MODELS.md, documented sizes, 'large'"


def get_config():
    return documented_size_config(ModelConfig(family="mamba", d_model=1024, n_layers=16), accumulation_steps=8)

"""mamba_medium_extra: standard Mamba 'medium-extra': d_model 832, 13 layers (docs/MODELS.md, documented sizes).

Documents: ~250M (docs/MODELS.md, documented sizes, 'medium-extra'); ours: 99.3M (0.40x).
The table rounds its rule of thumb d^2 x layers x 8 + vocab x d (113.8M here) up generously;
ours is the exact count of reference Mamba-1 blocks (expand 2, d_state 16) with a tied GPT-2 embedding.
docs/MODELS.md itemises every size; ``python -m hrm.info --config configs/mamba_medium_extra.py`` counts per component.
"""

from hrm.config import ModelConfig, documented_size_config

DOCUMENTED_PARAMS = 250_000_000
DOCUMENTED_SOURCE = "docs/MODELS.md, documented sizes, 'medium-extra'"


def get_config():
    return documented_size_config(ModelConfig(family="mamba", d_model=832, n_layers=13), accumulation_steps=8)

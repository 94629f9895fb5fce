"""mamba_medium_x: standard Mamba 'medium-x': d_model 704, 10 layers (docs/MODELS.md, documented sizes).

Documents: ~150M (docs/MODELS.md, documented sizes, 'medium-x'); ours: 67.2M (0.45x).
The table rounds its rule of thumb d^2 x layers x 8 + vocab x d (75.0M here) up generously;
ours is the exact count of reference Mamba-1 blocks (expand 2, d_state 16) with a tied GPT-2 embedding.
docs/MODELS.md itemises every size; ``python -m hrm.info --config configs/mamba_medium_x.py`` counts per component.
"""

from hrm.config import ModelConfig, documented_size_config

DOCUMENTED_PARAMS = 150_000_000
DOCUMENTED_SOURCE = "docs/MODELS.md, documented sizes, 'medium-x'"


def get_config():
    return documented_size_config(ModelConfig(family="mamba", d_model=704, n_layers=10), accumulation_steps=8)

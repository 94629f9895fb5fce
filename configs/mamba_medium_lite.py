"""mamba_medium_lite: standard Mamba 'medium-lite': d_model 512, 8 layers (docs/MODELS.md, documented sizes).

Documents: ~90M (docs/MODELS.md, documented sizes, 'medium-lite'); ours: 39.3M (0.44x).
The table rounds its rule of thumb d^2 x layers x 8 + vocab x d (42.5M here) up generously;
ours is the exact count of reference Mamba-1 blocks (expand 2, d_state 16) with a tied GPT-2 embedding.
docs/MODELS.md itemises every size; ``python -m hrm.info --config configs/mamba_medium_lite.py`` counts per component.
"""

from hrm.config import ModelConfig, documented_size_config

DOCUMENTED_PARAMS = 90_000_000
DOCUMENTED_SOURCE = "docs/MODELS.md, documented sizes, 'medium-lite'"


def get_config():
    return documented_size_config(ModelConfig(family="mamba", d_model=512, n_layers=8), accumulation_steps=8)

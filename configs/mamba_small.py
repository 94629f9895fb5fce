"""mamba_small: standard Mamba 'small': d_model 384, 6 layers (docs/MODELS.md, documented sizes).

Documents: ~50M (docs/MODELS.md, documented sizes, 'small'); ours: 25.1M (0.50x).
The table rounds its rule of thumb d^2 x layers x 8 + vocab x d (26.4M here) up generously;
ours is the exact count of reference Mamba-1 blocks (expand 2, d_state 16) with a tied GPT-2 embedding.
docs/MODELS.md itemises every size; ``python -m hrm.info --config configs/mamba_small.py`` counts per component.
"""

from hrm.config import ModelConfig, documented_size_config

DOCUMENTED_PARAMS = 50_000_000
DOCUMENTED_SOURCE = "docs/MODELS.md, documented sizes, 'small'"


def get_config():
    return documented_size_config(ModelConfig(family="mamba", d_model=384, n_layers=6), accumulation_steps=8)

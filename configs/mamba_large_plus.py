"""mamba_large_plus: standard Mamba 'large-plus': d_model 960, 15 layers (docs/MODELS.md, documented sizes).

Documents: ~400M (docs/MODELS.md, documented sizes, 'large-plus'); ours: 136.3M (0.34x).
The table rounds its rule of thumb d^2 x layers x 8 + vocab x d (158.8M here) up generously;
ours is the exact count of reference Mamba-1 blocks (expand 2, d_state 16) with a tied GPT-2 embedding.
docs/MODELS.md itemises every size; ``python -m hrm.info --config configs/mamba_large_plus.py`` counts per component.
"""

from hrm.config import ModelConfig, documented_size_config

DOCUMENTED_PARAMS = 400_000_000
DOCUMENTED_SOURCE = "docs/MODELS.md, documented sizes, 'large-plus'"


def get_config():
    return documented_size_config(ModelConfig(family="mamba", d_model=960, n_layers=15), accumulation_steps=8)

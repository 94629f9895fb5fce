"""mamba_xlarge: standard Mamba 'xlarge': d_model 1280, 20 layers (docs/MODELS.md, documented sizes).

Documents: ~750M (docs/MODELS.md, documented sizes, 'xlarge'); ours: 272.0M (0.36x).
The table rounds its rule of thumb d^2 x layers x 8 + vocab x d (326.5M here) up generously;
ours is the exact count of reference Mamba-1 blocks (expand 2, d_state 16) with a tied GPT-2 embedding.
docs/MODELS.md itemises every size; ``python -m hrm.info --config configs/mamba_xlarge.py`` counts per component.
"""

from hrm.config import ModelConfig, documented_size_config

DOCUMENTED_PARAMS = 750_000_000
DOCUMENTED_SOURCE = "docs/MODELS.md, documented sizes, 'xlarge'"


def get_config():
    return documented_size_config(ModelConfig(family="mamba", d_model=1280, n_layers=20), accumulation_steps=8)

"""mamba_xxlarge: standard Mamba 'xxlarge': d_model 1536, 24 layers (docs/MODELS.md, documented sizes).

Documents: ~1000M (docs/MODELS.md, documented sizes, 'xxlarge'); ours: 435.3M (0.44x).
The table rounds its rule of thumb d^2 x layers x 8 + vocab x d (530.2M here) up generously;
ours is the exact count of reference Mamba-1 blocks (expand 2, d_state 16) with a tied GPT-2 embedding.
docs/MODELS.md itemises every size; ``python -m hrm.info --config configs/mamba_xxlarge.py`` counts per component.
"""

from hrm.config import ModelConfig, documented_size_config

DOCUMENTED_PARAMS = 1_000_000_000
DOCUMENTED_SOURCE = "docs/MODELS.md, documented sizes, 'xxlarge'"


def get_config():
    return documented_size_config(ModelConfig(family="mamba", d_model=1536, n_layers=24), accumulation_steps=4)

"""hybrid_medium: hybrid recursive Mamba 'hybrid-medium': d_model 768, 12 layers, recursion depth 3 (docs/MODELS.md).

Documents: ~220M (docs/MODELS.md, documented sizes, 'hybrid-medium'); ours: 183.1M (0.83x).
A layer stores ~20 d^2 (Mamba 6, the shared recursive MLP 8 - applied 3x, stored once - attention 4,
fusion 2) plus the tied GPT-2 embedding; the documents estimate '1.5x a standard Mamba' and round up.
docs/MODELS.md itemises every size; ``python -m hrm.info --config configs/hybrid_medium.py`` counts per component.
"""

from hrm.config import ModelConfig, documented_size_config

DOCUMENTED_PARAMS = 220_000_000
DOCUMENTED_SOURCE = "docs/MODELS.md, documented sizes, 'hybrid-medium'"


def get_config():
    model = ModelConfig(
        family="hybrid_recursive", d_model=768, n_layers=12, n_heads=12, max_recursion_depth=3, remat="block"
    )
    # micro-batch 8 x 4 with remat inside the scanned layers (hrm.memtest, docs/BENCHMARKS.md "Scanned layer stacks")
    return documented_size_config(model, accumulation_steps=4)

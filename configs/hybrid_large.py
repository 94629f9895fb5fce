"""hybrid_large: hybrid recursive Mamba 'hybrid-large': d_model 1024, 16 layers, recursion depth 4 (docs/MODELS.md).

Documents: ~550M (docs/MODELS.md, documented sizes, 'hybrid-large'); ours: 393.3M (0.72x).
A layer stores ~20 d^2 (Mamba 6, the shared recursive MLP 8 - applied 4x, stored once - attention 4,
fusion 2) plus the tied GPT-2 embedding; the documents estimate '1.5x a standard Mamba' and round up.
docs/MODELS.md itemises every size; ``python -m hrm.info --config configs/hybrid_large.py`` counts per component.
"""

from hrm.config import ModelConfig, documented_size_config

DOCUMENTED_PARAMS = 550_000_000
DOCUMENTED_SOURCE = "docs/MODELS.md, documented sizes, 'hybrid-large'"


def get_config():
    model = ModelConfig(
        family="hybrid_recursive", d_model=1024, n_layers=16, n_heads=16, max_recursion_depth=4, remat="block"
    )
    # micro-batch 16 x 2 with remat inside the scanned layers: the largest that fits its 45 GB (hrm.memtest,
    # docs/BENCHMARKS.md "Scanned layer stacks")
    return documented_size_config(model, accumulation_steps=2)

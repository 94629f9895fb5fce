"""hybrid_7030_small: hybrid Mamba/attention 70/30: hidden 512, 8 layers (5 Mamba, 3 attention), context 1024.

Documents: ~100M ('configurable', docs/MODELS.md); ours: 43.7M (0.44x). The source's stated dimensions (d 512,
5 Mamba + 3 attention/MLP layers) give ~16M in the blocks + ~16M in its 32K embedding, ~33M. hrm ships no 32K
tokenizer, so this config uses GPT-2 BPE (+9M embedding parameters). 'Attention late' is read as the pattern
MMMMMAAA; 8 heads of 64. "MMMMMAAA" does not repeat, so its layers stay unrolled (``model.scan_layers`` scans
repeating units only); it trains at micro-batch 16 x 2, the largest that fits its 16 GB without remat
(``python -m hrm.memtest``, docs/BENCHMARKS.md).
"""

from hrm.config import ModelConfig, documented_size_config

DOCUMENTED_PARAMS = 100_000_000
DOCUMENTED_SOURCE = "docs/MODELS.md, documented sizes: '~100M (configurable)'"


def get_config():
    model = ModelConfig(family="hybrid_pattern", d_model=512, n_layers=8, layer_pattern="MMMMMAAA", n_heads=8)
    return documented_size_config(model, accumulation_steps=2, seq_len=1024)

"""recursive_48x5: recursive state space: 48 physical Mamba blocks x 5 depths = 240 effective layers (docs/MODELS.md).

Documents: no parameter count; ours: 65.6M. 48 Mamba blocks of d 384 (d_state 16) stored once, per-depth
scale/shift adapters (5 x 2 x 384) and rank-8 adapters (5 x 2 x 384 x 8), and the tied GPT-2 embedding (the source
uses GPT2TokenizerFast). Remat every 8 blocks (the source's --checkpoint_segments 8). The source trains with batch
1 x 16 accumulation at lr 3e-4 on sequences of 256; this config keeps its global batch of 16 rows and lr, in one
micro-batch of 16 (no accumulation): the largest that fits its 6 GB (``python -m hrm.memtest``,
docs/BENCHMARKS.md): the same update, computed in one pass instead of 16 sequential ones.
"""

from hrm.config import ModelConfig, documented_size_config

DOCUMENTED_PARAMS = None
DOCUMENTED_SOURCE = "the 48 x 5 source gives no parameter count (docs/MODELS.md)"


def get_config():
    model = ModelConfig(
        family="recursive_ssm",
        d_model=384,
        n_layers=48,
        recurrent_depth=5,
        adapter_rank=8,
        checkpoint_segments=8,
        remat="block",
    )
    return documented_size_config(model, seq_len=256, batch_size=16, accumulation_steps=1)

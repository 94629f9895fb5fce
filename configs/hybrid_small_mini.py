"""hybrid_small_mini: hybrid recursive Mamba 'hybrid-small-mini', d_model 576 / 9 layers, recursion depth 3 (seeds 000/002).

Documented size: 100M (seed 002 model table, 'hybrid-small-mini'). Ours: run ``python -m hrm.info --config configs/hybrid_small_mini.py``.
The documents state about 1.5x a standard Mamba of the same width. One layer here is a Mamba block
(~6 d^2) + the recursive processor's shared MLP (8 d^2 with mlp_ratio 4, applied 3 times but stored once)
+ hierarchical attention (4 d^2, scales 1/2/4 share projections) + fusion (2 d^2), ~20 d^2 per layer, plus the
tied GPT-2 embedding (50257 padded to 50264). Differences from the table are the table's rounding.
Training: the 'default' preset (100k steps, lr 3e-4, warmup 2k, save/eval every 5k) unless noted;
``--training_preset fast|careful`` switches it.
"""

from hrm.config import Config, DataConfig, ModelConfig, TrainConfig

DOCUMENTED_PARAMS = 100_000_000
DOCUMENTED_SOURCE = "seed 002 model table, 'hybrid-small-mini'"


def get_config() -> Config:
    return Config(
        model=ModelConfig(family="hybrid_recursive", d_model=576, n_layers=9, d_state=16, expand=2,
                          n_heads=9, max_recursion_depth=3, attention_scales="1,2,4", vocab_size=50264),
        data=DataConfig(tokenizer="gpt2", seq_len=2048),
        train=TrainConfig(steps=100_000, batch_size=8, lr=3e-4, warmup_steps=2000, save_every=5000, eval_every=5000),
    )

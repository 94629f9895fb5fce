"""hybrid_7030_small: hybrid Mamba/attention 70/30: hidden 512, 8 layers (5 Mamba early, 3 attention late), context 1024 (seed 004).

Documented size: 100M (seed 004, '~100M (configurable)'). Ours: run ``python -m hrm.info --config configs/hybrid_7030_small.py``.
Seed 004 claims ~100M parameters with a 32K vocabulary; its stated dimensions (d 512, 5 Mamba + 3
attention/MLP layers) give about 16M in the blocks + 16M in a 32K embedding, ~33M. hrm ships no 32K
tokenizer, so this config uses GPT-2 BPE (50257 padded to 50264: +9M embedding parameters).
'Attention late' is read as pattern MMMMMAAA. 8 heads of 64.
Training: the 'default' preset (100k steps, lr 3e-4, warmup 2k, save/eval every 5k) unless noted;
``--training_preset fast|careful`` switches it.
"""

from hrm.config import Config, DataConfig, ModelConfig, TrainConfig

DOCUMENTED_PARAMS = 100_000_000
DOCUMENTED_SOURCE = "seed 004, '~100M (configurable)'"


def get_config() -> Config:
    return Config(
        model=ModelConfig(family="hybrid_pattern", d_model=512, n_layers=8, layer_pattern="MMMMMAAA", n_heads=8,
                          d_state=16, expand=2, mlp_ratio=4, max_cache_len=2048, vocab_size=50264),
        data=DataConfig(tokenizer="gpt2", seq_len=1024),
        train=TrainConfig(steps=100_000, batch_size=8, lr=3e-4, warmup_steps=2000, save_every=5000, eval_every=5000),
    )

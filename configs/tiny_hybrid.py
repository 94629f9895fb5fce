"""tiny_hybrid: a CPU-sized hybrid_recursive model on bytes (tests and demos).

2 layers of Mamba + recursive processor (depth 3, per-sequence gate) + 1x/2x/4x attention, d 128.
Byte tokenizer, sequence 128: 300 steps take a few minutes on a 2-core CPU. With no data_dir it trains on the
embedded default corpus (the interpreter's stdlib sources).
"""

from hrm.config import Config, DataConfig, ModelConfig, TrainConfig

DOCUMENTED_PARAMS = None
DOCUMENTED_SOURCE = "a test-sized variant, not in the documents"


def get_config() -> Config:
    return Config(
        model=ModelConfig(family="hybrid_recursive", d_model=128, n_layers=2, d_state=16, expand=2, n_heads=4,
                          max_recursion_depth=3, attention_scales="1,2,4", max_cache_len=512),
        data=DataConfig(tokenizer="byte", seq_len=128),
        train=TrainConfig(steps=300, batch_size=8, lr=2e-3, warmup_steps=30, save_every=100, log_every=10, seed=0),
    )

"""tiny_recursive: a CPU-sized recursive_ssm model on bytes (tests and demos).

2 physical Mamba blocks x 3 depths = 6 effective layers, rank-4 per-depth adapters, d 128.
Byte tokenizer, sequence 128: 300 steps take a few minutes on a 2-core CPU. With no data_dir it trains on the
embedded default corpus (the interpreter's stdlib sources).
"""

from hrm.config import Config, DataConfig, ModelConfig, TrainConfig

DOCUMENTED_PARAMS = None
DOCUMENTED_SOURCE = "a test-sized variant, not in the documents"


def get_config() -> Config:
    return Config(
        model=ModelConfig(family="recursive_ssm", d_model=128, n_layers=2, recurrent_depth=3, d_state=16,
                          expand=2, adapter_rank=4, checkpoint_segments=1),
        data=DataConfig(tokenizer="byte", seq_len=128),
        train=TrainConfig(steps=300, batch_size=8, lr=2e-3, warmup_steps=30, save_every=100, log_every=10, seed=0),
    )

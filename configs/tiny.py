"""tiny: a 1.8M-parameter Mamba on bytes that trains in a few minutes on a 2-core CPU.

With no data_dir it trains on the embedded default corpus: the interpreter's stdlib sources.
"""

from hrm.config import Config, DataConfig, ModelConfig, TrainConfig


def get_config() -> Config:
    return Config(
        model=ModelConfig(family="mamba", d_model=256, n_layers=4, d_state=16, expand=2),
        data=DataConfig(tokenizer="byte", seq_len=128),
        train=TrainConfig(
            steps=300, batch_size=8, lr=2e-3, warmup_steps=30, weight_decay=0.1, save_every=100, log_every=10, seed=0
        ),
    )

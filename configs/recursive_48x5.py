"""recursive_48x5: RecursiveStateSpace: 48 physical Mamba blocks x 5 depths = 240 effective layers (seed 001).

Documented size: not stated (seed 001 gives no parameter count). Ours: run ``python -m hrm.info --config configs/recursive_48x5.py``.
Seed 001 states no parameter count. Ours: 48 Mamba blocks of d 384 (d_state 16) stored once, plus
per-depth scale/shift adapters (5 x 2 x 384) and rank-8 adapters (5 x 2 x 384 x 8), plus the tied GPT-2
embedding (seed 001 uses GPT2TokenizerFast; 50257 padded to 50264). Remat every 8 blocks
(checkpoint_segments 8, as the seed's --checkpoint_segments 8). Seed 001 trains with batch 1 x 16
accumulation at lr 3e-4; hrm has no accumulation, so batch_size is 16.
Training: the 'default' preset (100k steps, lr 3e-4, warmup 2k, save/eval every 5k) unless noted;
``--training_preset fast|careful`` switches it.
"""

from hrm.config import Config, DataConfig, ModelConfig, TrainConfig

DOCUMENTED_PARAMS = None
DOCUMENTED_SOURCE = "seed 001 gives no parameter count"


def get_config() -> Config:
    return Config(
        model=ModelConfig(family="recursive_ssm", d_model=384, n_layers=48, recurrent_depth=5, d_state=16,
                          expand=2, adapter_rank=8, checkpoint_segments=8, vocab_size=50264),
        data=DataConfig(tokenizer="gpt2", seq_len=256),
        train=TrainConfig(steps=100_000, batch_size=16, lr=3e-4, warmup_steps=2000, save_every=5000, eval_every=5000),
    )

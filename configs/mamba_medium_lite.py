"""mamba_medium_lite: standard Mamba 'medium-lite', d_model 512 / 8 layers (seed 002 model table).

Documented size: 90M (seed 002 model table, 'medium-lite'). Ours: run ``python -m hrm.info --config configs/mamba_medium_lite.py``.
The documents' sizes follow their rule of thumb ``d_model^2 x n_layers x 8 + vocab x d_model`` and
then round up generously (for this size the rule itself gives 42.5M). A reference Mamba-1 block (expand 2,
d_state 16, dt_rank d/16) has about 6 d^2 + d (3 d_state + 2 dt_rank + 12) parameters, and the head is tied to
the 50257-token GPT-2 embedding (padded to 50264), so ours is the exact count of the real architecture;
it is smaller than the table, not a different model.
Training: the 'default' preset (100k steps, lr 3e-4, warmup 2k, save/eval every 5k) unless noted;
``--training_preset fast|careful`` switches it.
"""

from hrm.config import Config, DataConfig, ModelConfig, TrainConfig

DOCUMENTED_PARAMS = 90_000_000
DOCUMENTED_SOURCE = "seed 002 model table, 'medium-lite'"


def get_config() -> Config:
    return Config(
        model=ModelConfig(family="mamba", d_model=512, n_layers=8, d_state=16, expand=2, vocab_size=50264),
        data=DataConfig(tokenizer="gpt2", seq_len=2048),
        train=TrainConfig(steps=100_000, batch_size=8, lr=3e-4, warmup_steps=2000, save_every=5000, eval_every=5000),
    )

"""hybrid_amam_1b: hybrid Mamba/attention 'AMAMAMAMAMAMAMAM': hidden 1024, 16 layers, 16 heads, d_state 48, seq 512 (seed 003).

Documented size: 1,000M (seed 003, '~1B parameters'). Ours: run ``python -m hrm.info --config configs/hybrid_amam_1b.py``.
Seed 003 claims ~1B parameters, which its own dimensions cannot give: 8 Mamba blocks (d_state 48) +
8 attention layers with a 4x MLP (12 d^2 each) at d 1024 and a tied embedding are about 0.2B
(a 1B model at 16 layers would need d ~2300). Seed 003 uses the SmolLM tokenizer (49,152 tokens), which
hrm does not ship; this config uses GPT-2 BPE (50257 padded to 50264), 1M more parameters.
Training follows seed 003: lr 3e-4 cosine, 3000 warmup steps, 30k steps, batch 64 (16 x 2 GPUs x 2 accumulation).
Training: the 'default' preset (100k steps, lr 3e-4, warmup 2k, save/eval every 5k) unless noted;
``--training_preset fast|careful`` switches it.
"""

from hrm.config import Config, DataConfig, ModelConfig, TrainConfig

DOCUMENTED_PARAMS = 1_000_000_000
DOCUMENTED_SOURCE = "seed 003, '~1B parameters'"


def get_config() -> Config:
    return Config(
        model=ModelConfig(family="hybrid_pattern", d_model=1024, n_layers=16, layer_pattern="AMAMAMAMAMAMAMAM",
                          n_heads=16, d_state=48, expand=2, mlp_ratio=4, max_cache_len=2048, vocab_size=50264),
        data=DataConfig(tokenizer="gpt2", seq_len=512),
        train=TrainConfig(steps=30_000, batch_size=64, lr=3e-4, warmup_steps=3000, save_every=2500, eval_every=2500),
    )

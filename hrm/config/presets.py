"""Starting points for configs: the training presets and the two kinds of shipped model config."""

from __future__ import annotations

from hrm.config.schema import GPT2_TOKENS, GPT2_VOCAB, Config, DataConfig, ModelConfig, TrainConfig

# --training_preset's train.* values (hrm.train): the design documents' presets, kept so their commands train the
# same schedule (docs/MODELS.md "Documented sizes").
TRAINING_PRESETS = {
    "fast": {"steps": 50_000, "lr": 5e-4, "warmup_steps": 1000, "save_every": 2500, "eval_every": 2500},
    "default": {"steps": 100_000, "lr": 3e-4, "warmup_steps": 2000, "save_every": 5000, "eval_every": 5000},
    "careful": {"steps": 200_000, "lr": 1e-4, "warmup_steps": 5000, "save_every": 10_000, "eval_every": 10_000},
}


def documented_size_config(
    model: ModelConfig, *, seq_len: int = 2048, batch_size: int = 32, dtype: str = "bfloat16", **train
) -> Config:
    """A documented model size (docs/MODELS.md "Documented sizes"): trained as those documents train it, so its
    size and memory compare with theirs: GPT-2 BPE, rows of ``seq_len`` tokens, a global batch of 32 rows (4 x 8
    accumulation), bf16 compute (mixed precision) and the 'default' training preset; ``train`` overrides single
    ``TrainConfig`` fields (each config sets the ``accumulation_steps`` that fits its documented VRAM, measured
    with ``python -m hrm.memtest``)."""
    if not model.vocab_size:
        model.vocab_size, model.token_vocab_size = GPT2_VOCAB, GPT2_TOKENS
    model.dtype = dtype
    return Config(
        model=model,
        data=DataConfig(tokenizer="gpt2", seq_len=seq_len),
        train=TrainConfig(batch_size=batch_size, **{**TRAINING_PRESETS["default"], **train}),
    )


def cpu_sized_config(model: ModelConfig) -> Config:
    """A CPU-sized demo/test model: bytes, 128-token rows, 300 steps at lr 2e-3 (minutes on 2 cores); with no
    data flag it trains on the embedded default corpus (the interpreter's stdlib sources)."""
    return Config(
        model=model,
        data=DataConfig(tokenizer="byte", seq_len=128),
        train=TrainConfig(steps=300, batch_size=8, lr=2e-3, warmup_steps=30, save_every=100, log_every=10, seed=0),
    )

"""hybrid_amam_1b: hybrid Mamba/attention 'AMAMAMAMAMAMAMAM': hidden 1024, 16 layers, 16 heads, d_state 48.

Documents: ~1B (docs/MODELS.md); ours: 207.1M (0.21x). The source's own dimensions cannot give 1B: 8 Mamba blocks
(d_state 48) + 8 attention layers with a 4x MLP (12 d^2 each) at d 1024 and a tied embedding are ~0.2B
(1B at 16 layers would need d ~2300). The source uses the SmolLM tokenizer (49,152 tokens), which hrm does not
ship; GPT-2 BPE adds 1M parameters. Training as the source: 30k steps, lr 3e-4 cosine, 3000 warmup, batch 64
(16 x 2 GPUs x 2 accumulation; here 16 x 4 accumulation on one GPU), sequences of 512.
"""

from hrm.config import ModelConfig, documented_size_config

DOCUMENTED_PARAMS = 1_000_000_000
DOCUMENTED_SOURCE = "docs/MODELS.md, documented sizes: '~1B parameters'"


def get_config():
    model = ModelConfig(
        family="hybrid_pattern", d_model=1024, n_layers=16, layer_pattern="AMAMAMAMAMAMAMAM", n_heads=16, d_state=48
    )
    return documented_size_config(
        model,
        seq_len=512,
        batch_size=64,
        accumulation_steps=4,
        steps=30_000,
        warmup_steps=3000,
        save_every=2500,
        eval_every=2500,
    )

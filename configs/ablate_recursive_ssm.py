"""ablate_recursive_ssm: recursive_ssm of the matched-size CPU ablation (scripts/ablate.py, docs/RESULTS.md).

The baseline's 4 Mamba blocks (d 96) applied twice: 8 effective layers with rank-4 per-depth adapters, 300K
parameters (ablate_mamba: 298K) at about twice its FLOPs per token.
"""

from hrm.config import ModelConfig, cpu_sized_config

DOCUMENTED_PARAMS = None
DOCUMENTED_SOURCE = "an ablation size, not in the documents"


def get_config():
    return cpu_sized_config(
        ModelConfig(family="recursive_ssm", d_model=96, n_layers=4, recurrent_depth=2, adapter_rank=4)
    )

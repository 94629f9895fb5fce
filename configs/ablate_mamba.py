"""ablate_mamba: the Mamba baseline of the matched-size CPU ablation (scripts/ablate.py, docs/RESULTS.md).

4 Mamba layers, d 96: 298K parameters, like configs/ablate_{hybrid_recursive,recursive_ssm,hybrid_pattern}.py
(within 10%, tests/test_ablate.py). Data and training settings are cpu_sized_config's for every family.
"""

from hrm.config import ModelConfig, cpu_sized_config

DOCUMENTED_PARAMS = None
DOCUMENTED_SOURCE = "an ablation size, not in the documents"


def get_config():
    return cpu_sized_config(ModelConfig(family="mamba", d_model=96, n_layers=4))

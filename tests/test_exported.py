"""hrm/exported.py: jax.export (StableHLO) of prefill and decode step, run without the model code, reproduces
``generate`` token for token (greedy and seeded sampling)."""

import pytest

from hrm.api import LoadedModel
from hrm.config import Config, DataConfig, ModelConfig
from hrm.exported import ExportedDecoder, export_decoding
from hrm.training.state import init_model

pytestmark = pytest.mark.filterwarnings("ignore:Using 'Module.sow\\(\\)' outside:DeprecationWarning")


def test_exported_decode_reproduces_generate(tmp_path):
    config = Config(
        model=ModelConfig(
            family="hybrid_pattern",
            layer_pattern="MA",
            d_model=32,
            n_layers=2,
            d_state=8,
            n_heads=4,
            max_cache_len=64,
            vocab_size=264,
        ),
        data=DataConfig(tokenizer="byte"),
    )
    _, params = init_model(config)
    model = LoadedModel(config, params, step=0)
    decoder = ExportedDecoder(export_decoding(model, tmp_path / "stablehlo", chunk=4))
    prompt = [[10, 20, 30, 40, 50, 60, 70]]  # chunks 4 + 2 + 1
    for settings in (dict(temperature=0.0), dict(temperature=1.0, top_p=0.9, seed=5)):
        want = model.generator.generate_ids(model.params, prompt, 9, **settings)
        assert decoder.generate_ids(prompt, 9, **settings) == want

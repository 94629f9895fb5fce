"""hrm/exported.py: jax.export (StableHLO) of prefill and decode step, run without the model code, reproduces
``generate`` token for token (greedy and seeded sampling)."""

import hrm
from hrm import export, exported
from hrm.config import Config, DataConfig, ModelConfig
from hrm.exported import ExportedDecoder
from hrm.models import per_layer
from hrm.training.state import init_model


def pattern_config(pattern: str) -> Config:
    """A tiny hybrid_pattern model with the byte tokenizer."""
    model = ModelConfig(
        family="hybrid_pattern",
        layer_pattern=pattern,
        d_model=32,
        n_layers=len(pattern),
        d_state=8,
        n_heads=4,
        max_cache_len=64,
        vocab_size=264,
    )
    return Config(model=model, data=DataConfig(tokenizer="byte"))


def test_exported_decode_reproduces_generate(tmp_path, capsys):
    """Through the command line: ``hrm.export --format stablehlo`` of a final-weights folder."""
    config = pattern_config("MA")  # does not repeat: unrolled
    _, params = init_model(config)
    export.save_final(config, params, tmp_path / "final")
    args = ["--checkpoint", tmp_path / "final", "--out", tmp_path / "stablehlo", "--format", "stablehlo"]
    export.main([str(a) for a in args] + ["--batch", "2", "--chunk", "4"])
    assert "StableHLO prefill and decode step, batch 2" in capsys.readouterr().out
    model, decoder = hrm.load(tmp_path / "final"), ExportedDecoder(tmp_path / "stablehlo")
    # right-padded to chunks 4 + 4: the short row's second chunk is all padding
    prompts = [[10, 20, 30, 40, 50, 60, 70], [5, 6]]
    for settings in (dict(temperature=0.0), dict(temperature=1.0, top_p=0.9, seed=5)):
        want = model.generator.generate_ids(model.params, prompts, 9, **settings)
        assert decoder.generate_ids(prompts, 9, **settings) == want


def test_a_scanned_stack_exports_and_decodes_like_generate(tmp_path):
    """``model.scan_layers`` (the default): "AMAM" scans its "AM" unit, so the exported prefill and decode step
    carry stacked (batch, layer, ...) Mamba states and KV caches through the scan, and still reproduce
    ``generate``."""
    config = pattern_config("AMAM")
    assert config.model.scan_layers
    _, params = init_model(config)
    export.save_final(config, params, tmp_path / "final")
    loaded = hrm.load(tmp_path / "final")
    assert loaded.config.model.scan_layers and not per_layer(loaded.params)
    exported.export_decoding(loaded, tmp_path / "stablehlo", batch=2, chunk=4)
    prompts = [[10, 20, 30, 40, 50], [5, 6]]
    want = loaded.generator.generate_ids(loaded.params, prompts, 6, temperature=0.0)
    assert ExportedDecoder(tmp_path / "stablehlo").generate_ids(prompts, 6, temperature=0.0) == want

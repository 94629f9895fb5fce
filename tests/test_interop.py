"""Reference Mamba checkpoints: hrm's logits match PyTorch's (transformers' MambaForCausalLM) on the same weights,
in the transformers and the state-spaces layouts, and hrm → transformers → hrm is lossless."""

import json

import jax
import numpy as np
import pytest

import hrm
import hrm.tokenizer
from hrm.config import Config, ModelConfig
from hrm.interop import save_transformers
from hrm.training.state import init_model

torch = pytest.importorskip("torch", reason="needs PyTorch: pip install -e '.[test]' (CPU torch)")
transformers = pytest.importorskip("transformers", reason="needs transformers: pip install -e '.[test]'")

TOKENS = np.random.default_rng(0).integers(0, 100, (2, 24))


def reference_model(tie: bool, **config) -> "transformers.MambaForCausalLM":
    """A random tiny MambaForCausalLM with every tensor moved off its init (a swapped or mistransposed tensor
    would otherwise hide behind constants like D = 1 or equal A_log rows)."""
    cfg = transformers.MambaConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        state_size=8,
        conv_kernel=3,
        expand=2,
        time_step_rank=3,
        tie_word_embeddings=tie,
        layer_norm_epsilon=1e-4,
        **config,
    )
    torch.manual_seed(0)
    model = transformers.MambaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("A_log", "D", "norm.weight", "norm_f.weight", "dt_proj.bias")):
                p.add_(0.3 * torch.randn_like(p))  # keep A_log/dt moderate, but every row and channel different
            elif name.endswith("bias"):
                p.normal_(0, 0.1)
            else:
                p.normal_(0, 0.3 if "conv1d" in name else 0.1)
    return model


def torch_logits(model) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(TOKENS)).logits.float().numpy()


def assert_close(ours, reference):
    error = np.max(np.abs(ours - reference)) / np.max(np.abs(reference))
    assert error < 1e-4, f"max |hrm - torch| / max |torch| = {error:.2e}"


@pytest.mark.parametrize("tie, extra", [(True, {}), (False, {"use_bias": True, "use_conv_bias": False})])
def test_transformers_folder_matches_pytorch(tmp_path, tie, extra):
    model = reference_model(tie, **extra)
    model.save_pretrained(tmp_path)
    loaded = hrm.load(tmp_path)
    m = loaded.config.model
    assert (
        m.family,
        m.d_model,
        m.n_layers,
        m.d_state,
        m.d_conv,
        m.expand,
        m.dt_rank,
        m.vocab_size,
        m.norm_eps,
        m.tie_embeddings,
        m.bias,
        m.conv_bias,
    ) == ("mamba", 32, 2, 8, 3, 2, 3, 100, 1e-4, tie, not tie, tie)
    assert_close(loaded.logits(TOKENS), torch_logits(model))

    save_transformers(m, loaded.params, tmp_path / "exported")
    assert params_equal(hrm.load(tmp_path / "exported").params, loaded.params)
    exported = transformers.MambaForCausalLM.from_pretrained(tmp_path / "exported")
    assert_close(loaded.logits(TOKENS), torch_logits(exported))


def test_state_spaces_folder_matches_pytorch(tmp_path):
    """A mamba_ssm MambaLMHeadModel folder: its names are transformers' but for the embedding, and it stores
    lm_head.weight even when tied; the padded vocabulary comes from the embedding's rows."""
    model = reference_model(tie=True)
    state = {name.replace("backbone.embeddings.", "backbone.embedding."): t for name, t in model.state_dict().items()}
    state["lm_head.weight"] = state["backbone.embedding.weight"]
    torch.save(state, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "d_model": 32,
                "n_layer": 2,
                "vocab_size": 97,
                "ssm_cfg": {"d_state": 8, "d_conv": 3, "dt_rank": 3},
                "rms_norm": True,
                "residual_in_fp32": True,
                "fused_add_norm": True,
                "pad_vocab_size_multiple": 4,
            }
        )
    )
    model.config.layer_norm_epsilon = 1e-5  # mamba_ssm's MixerModel: RMSNorm eps 1e-5, not configurable
    for module in model.modules():
        if hasattr(module, "variance_epsilon"):
            module.variance_epsilon = 1e-5
    loaded = hrm.load(tmp_path)
    assert (loaded.config.model.vocab_size, loaded.config.model.tie_embeddings) == (100, True)
    assert_close(loaded.logits(TOKENS), torch_logits(model))


def write_tokenizer(folder):
    """A small BPE tokenizer.json (fewer than 100 tokens, <|endoftext|> special) as a reference folder has."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    text = ["the quick brown fox jumps over the lazy dog", "hello world, hello mamba"] * 20
    tok.train_from_iterator(
        text,
        trainers.BpeTrainer(
            vocab_size=90,
            special_tokens=["<|endoftext|>"],
            initial_alphabet=sorted(set("".join(text))),
            show_progress=False,
        ),
    )
    tok.save(str(folder / "tokenizer.json"))
    return tok


def test_folder_tokenizer_is_used(tmp_path):
    reference_model(tie=True).save_pretrained(tmp_path)
    with pytest.raises(hrm.tokenizer.TokenizerError, match="tokenizer.json"):
        _ = hrm.load(tmp_path).tokenizer
    tok = write_tokenizer(tmp_path)
    model = hrm.load(tmp_path)
    assert model.tokenizer.encode("hello world") == tok.encode("hello world").ids
    assert model.tokenizer.eos_id == tok.token_to_id("<|endoftext|>") == 0
    assert model.tokenizer.encode("<|endoftext|>") != [0], "special-token text is encoded as text"
    assert model.tokenizer.decode(model.tokenizer.encode("the lazy fox")) == "the lazy fox"
    [text] = model.generate("hello", max_new_tokens=5, temperature=0, stop_at_eos=False)
    assert isinstance(text, str) and text


def params_equal(a, b) -> bool:
    return jax.tree.structure(a) == jax.tree.structure(b) and all(
        np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
    )


@pytest.mark.slow
def test_convert_fine_tune_export_round_trip(tmp_path):
    """reference folder → hrm.convert → hrm.train --init_from → hrm.export --format hf → transformers and hrm."""
    from hrm import convert, export, train

    reference = reference_model(tie=False, use_conv_bias=False)
    reference.save_pretrained(tmp_path / "ref")
    write_tokenizer(tmp_path / "ref")
    convert.main([str(tmp_path / "ref"), str(tmp_path / "run")])
    converted = hrm.load(tmp_path / "run")
    assert converted.config.data.tokenizer == str((tmp_path / "run" / "tokenizer.json").resolve())
    assert_close(converted.logits(TOKENS), torch_logits(reference))

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_text("the quick brown fox jumps over the lazy dog. hello mamba! " * 40)
    train.main(
        [
            "--init_from",
            str(tmp_path / "run"),
            "--data_dir",
            str(tmp_path / "data"),
            "--output_dir",
            str(tmp_path / "ft"),
            "--config.data.seq_len=16",
            "--config.data.num_threads=1",
            "--batch_size=2",
            "--config.train.steps=2",
            "--config.train.warmup_steps=0",
            "--config.train.lr=1e-4",
            "--config.train.save_every=2",
        ]
    )
    tuned = hrm.load(tmp_path / "ft")
    moved = [
        np.max(np.abs(np.asarray(x) - np.asarray(y)))
        for x, y in zip(jax.tree.leaves(tuned.params), jax.tree.leaves(converted.params))
    ]
    assert 0 < max(moved) < 1e-3, "fine-tuning starts from the converted weights and moves them a little"

    export.main(["--checkpoint", str(tmp_path / "ft"), "--format", "hf", str(tmp_path / "hf")])
    exported = hrm.load(tmp_path / "hf")
    assert params_equal(exported.params, tuned.params), "hrm → transformers → hrm is lossless"
    assert not exported.config.model.conv_bias, "use_conv_bias=False stays off: there is no conv bias to train"
    assert exported.tokenizer.encode("hello mamba") == tuned.tokenizer.encode("hello mamba")
    back = transformers.MambaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert_close(tuned.logits(TOKENS), torch_logits(back))


@pytest.mark.parametrize("tie", [True, False])
def test_trained_run_exported_hf_loads_in_transformers(tmp_path, trained_run, tie):
    """hrm.train (hrm's own init, rescale_prenorm_residual on) → hrm.export --format hf →
    MambaForCausalLM.from_pretrained: the same logits and the same greedy text. Tied: the session's mamba run
    (tests/conftest.py); untied: the same model trained here."""
    from hrm import export
    from hrm.training.loop import train
    from tests.helpers import small_config

    if tie:
        run = trained_run("mamba").path
    else:
        run, config = tmp_path / "run", small_config(steps=2, save_every=2, warmup_steps=0)
        config.model.tie_embeddings, config.model.scan_backend = False, "sequential"
        train(config, run, log=lambda *_: None)
    export.main(["--checkpoint", str(run), "--format", "hf", "--out", str(tmp_path / "hf")])
    ours = hrm.load(run)
    assert ours.config.model.rescale_prenorm_residual and ours.config.model.tie_embeddings == tie
    theirs = transformers.MambaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert theirs.config.tie_word_embeddings == tie
    tokens = ours.config.model.token_vocab_size
    assert theirs.config.vocab_size == tokens < ours.config.model.vocab_size  # the padded rows stay home
    assert_close(ours.logits(TOKENS)[..., :tokens], torch_logits(theirs))
    prompt = ours.tokenizer.encode("def main():")
    greedy = ours.generator.generate_ids(ours.params, [prompt], 12, temperature=0)[0]
    with torch.no_grad():
        out = theirs.generate(torch.as_tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=None)
    assert ours.tokenizer.decode(out[0, len(prompt) :].tolist()) == ours.tokenizer.decode(greedy)


def test_bad_folders_are_one_line(tmp_path):
    from hrm import export
    from hrm.cli import UsageError
    from hrm.training.checkpoint import CheckpointError, Checkpoints

    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(CheckpointError, match="'llama' model; hrm loads model_type 'mamba'"):
        hrm.load(tmp_path / "llama")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text(json.dumps({"model_type": "mamba"}))
    with pytest.raises(CheckpointError, match="has no model.safetensors or pytorch_model.bin"):
        hrm.load(tmp_path / "empty")

    config = Config(model=ModelConfig(family="recursive_ssm", d_model=32, n_layers=1, d_state=8, vocab_size=64))
    (tmp_path / "rec").mkdir()
    config.save_json(tmp_path / "rec" / "config.json")
    mgr = Checkpoints(tmp_path / "rec", config=config)
    mgr.save(0, {"step": 0, "params": init_model(config)[1]}, final=True)
    mgr.close()
    with pytest.raises(UsageError, match="recursive_ssm model; --format hf exports the mamba family only"):
        export.main(["--checkpoint", str(tmp_path / "rec"), "--format", "hf", str(tmp_path / "out")])

    from tests.helpers import run_module

    result = run_module("hrm.convert", tmp_path / "missing", tmp_path / "out", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: '{tmp_path / 'missing'}' is not a reference Mamba folder: it needs a config.json with model_type "
        "'mamba' (transformers) or d_model and n_layer (state-spaces) next to its weights"
    ]

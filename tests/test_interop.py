"""Reference Mamba checkpoints: hrm's logits match PyTorch's (transformers' MambaForCausalLM) on the same weights,
in the transformers and the state-spaces layouts, and hrm → transformers → hrm is lossless."""

import json

import jax
import numpy as np
import pytest

import hrm
import hrm.tokenizer
from hrm.config import Config, ModelConfig
from hrm.training.state import init_model

torch = pytest.importorskip("torch", reason="needs PyTorch: pip install -e '.[test]' (CPU torch)")
transformers = pytest.importorskip("transformers", reason="needs transformers: pip install -e '.[test]'")

TOKENS = np.random.default_rng(0).integers(0, 100, (2, 24))


def reference_model(tie: bool, **config) -> "transformers.MambaForCausalLM":
    """A random tiny MambaForCausalLM with every tensor moved off its init (a swapped or mistransposed tensor
    would otherwise hide behind constants like D = 1 or equal A_log rows)."""
    cfg = transformers.MambaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, state_size=8,
                                   conv_kernel=3, expand=2, time_step_rank=3, tie_word_embeddings=tie,
                                   layer_norm_epsilon=1e-4, **config)
    torch.manual_seed(0)
    model = transformers.MambaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("A_log", "D", "norm.weight", "norm_f.weight", "dt_proj.bias")):
                p.add_(0.3 * torch.randn_like(p))   # keep A_log/dt moderate, but every row and channel different
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
    assert (m.family, m.d_model, m.n_layers, m.d_state, m.d_conv, m.expand, m.dt_rank, m.vocab_size, m.norm_eps,
            m.tie_embeddings, m.bias, m.conv_bias) == ("mamba", 32, 2, 8, 3, 2, 3, 100, 1e-4, tie, not tie, tie)
    assert_close(loaded.logits(TOKENS), torch_logits(model))


def test_state_spaces_folder_matches_pytorch(tmp_path):
    """A mamba_ssm MambaLMHeadModel folder: its names are transformers' but for the embedding, and it stores
    lm_head.weight even when tied; the padded vocabulary comes from the embedding's rows."""
    model = reference_model(tie=True)
    state = {name.replace("backbone.embeddings.", "backbone.embedding."): t for name, t in model.state_dict().items()}
    state["lm_head.weight"] = state["backbone.embedding.weight"]
    torch.save(state, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps({
        "d_model": 32, "n_layer": 2, "vocab_size": 97, "ssm_cfg": {"d_state": 8, "d_conv": 3, "dt_rank": 3},
        "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True, "pad_vocab_size_multiple": 4}))
    model.config.layer_norm_epsilon = 1e-5            # mamba_ssm's MixerModel: RMSNorm eps 1e-5, not configurable
    for module in model.modules():
        if hasattr(module, "variance_epsilon"):
            module.variance_epsilon = 1e-5
    loaded = hrm.load(tmp_path)
    assert (loaded.config.model.vocab_size, loaded.config.model.tie_embeddings) == (100, True)
    assert_close(loaded.logits(TOKENS), torch_logits(model))


def write_tokenizer(folder) -> "tokenizers.Tokenizer":
    """A small BPE tokenizer.json (fewer than 100 tokens, <|endoftext|> special) as a reference folder has."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    text = ["the quick brown fox jumps over the lazy dog", "hello world, hello mamba"] * 20
    tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=90, special_tokens=["<|endoftext|>"],
                                                      initial_alphabet=sorted(set("".join(text))),
                                                      show_progress=False))
    tok.save(str(folder / "tokenizer.json"))
    return tok


def test_folder_tokenizer_is_used(tmp_path):
    reference_model(tie=True).save_pretrained(tmp_path)
    with pytest.raises(hrm.tokenizer.TokenizerError, match="tokenizer.json"):
        hrm.load(tmp_path).tokenizer
    tok = write_tokenizer(tmp_path)
    model = hrm.load(tmp_path)
    assert model.tokenizer.encode("hello world") == tok.encode("hello world").ids
    assert model.tokenizer.eos_id == tok.token_to_id("<|endoftext|>") == 0
    assert model.tokenizer.encode("<|endoftext|>") != [0], "special-token text is encoded as text"
    assert model.tokenizer.decode(model.tokenizer.encode("the lazy fox")) == "the lazy fox"
    [text] = model.generate("hello", max_new_tokens=5, temperature=0, stop_at_eos=False)
    assert isinstance(text, str) and text

"""hrm.load / generate / the sample CLI on a checkpoint trained here."""

import numpy as np
import pytest

import hrm
from hrm.inference import SamplingError
from hrm.training.loop import train
from tests.helpers import run_module, small_config


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("run")
    train(small_config(steps=12, save_every=6), path, log=lambda *_: None)
    return path


def test_load_restores_the_latest_checkpoint(run_dir):
    model = hrm.load(run_dir)
    assert model.step == 12
    assert model.tokenizer.decode(model.tokenizer.encode("héllo")) == "héllo"
    logits = model.logits(model.tokenizer.encode("def f(x):"))
    assert logits.shape == (1, 9, model.config.model.vocab_size)
    assert np.all(np.isfinite(logits))
    assert hrm.load(run_dir, step=6).step == 6


def test_greedy_generate_equals_stepwise_argmax_of_logits(run_dir):
    model = hrm.load(run_dir)
    for prompt in ["import os\n", "x"]:
        ids = model.tokenizer.encode(prompt)
        generated = model.generator.generate_ids(model.params, [ids], 12, temperature=0)[0]
        text = model.generate([prompt], max_new_tokens=12, temperature=0, stop_at_eos=False)[0]
        assert text == model.tokenizer.decode(generated)
        prompt_length = len(ids)
        assert len(generated) == 12
        # one fixed padded length (one compile); causality makes the padding irrelevant
        padded = ids + generated + [0] * (prompt_length + 12 - len(ids) - len(generated))
        logits = model.logits(padded)[0]
        for i, token in enumerate(generated):
            step_logits = logits[prompt_length - 1 + i]
            # the decoded token is the argmax of the full pass (up to float ties between backends)
            assert step_logits[token] >= step_logits.max() - 1e-4, (i, token, int(step_logits.argmax()))
        if prompt == "x":
            assert generated[0] == int(np.argmax(logits[prompt_length - 1]))


def test_batched_prompts_of_different_lengths_match_single_prompts(run_dir):
    model = hrm.load(run_dir)
    prompts = ["a", "def function_name(argument):\n"]
    batched = model.generate(prompts, max_new_tokens=8, temperature=0)
    assert batched == [model.generate([p], max_new_tokens=8, temperature=0)[0] for p in prompts]


def test_sampling_is_seeded_and_respects_top_k(run_dir):
    model = hrm.load(run_dir)
    a = model.generate(["the "], max_new_tokens=16, temperature=1.0, seed=1, stop_at_eos=False)
    assert a == model.generate(["the "], max_new_tokens=16, temperature=1.0, seed=1, stop_at_eos=False)
    top1 = model.generate(["the "], max_new_tokens=16, temperature=1.5, top_k=1, seed=7, stop_at_eos=False)
    assert top1 == model.generate(["the "], max_new_tokens=16, temperature=0, stop_at_eos=False)
    nucleus = model.generate(["the "], max_new_tokens=16, temperature=1.0, top_p=1e-6, seed=5, stop_at_eos=False)
    assert nucleus == top1
    with pytest.raises(SamplingError, match="temperature"):
        model.generate(["x"], temperature=-0.5)


def test_sample_cli_prints_the_continuation(run_dir):
    result = run_module("hrm.sample", "--checkpoint", run_dir, "--prompt", "def ", "--max_tokens", "20",
                        "--temperature", "0")
    assert result.stdout.startswith("def ") and len(result.stdout) > 4


@pytest.mark.parametrize("args,message", [
    (["--temperature", "-1"], "temperature must be >= 0"),
    (["--top_p", "1.5"], "top_p must be in (0, 1]"),
    (["--max_tokens", "lots"], "invalid int value"),
])
def test_sample_cli_rejects_bad_values(run_dir, args, message):
    result = run_module("hrm.sample", "--checkpoint", run_dir, "--prompt", "x", *args, check=False)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_sample_cli_names_a_missing_checkpoint(tmp_path):
    result = run_module("hrm.sample", "--checkpoint", tmp_path / "nope", "--prompt", "x", check=False)
    assert result.returncode == 2 and "does not exist" in result.stderr and "Traceback" not in result.stderr
    (tmp_path / "empty").mkdir()
    result = run_module("hrm.sample", "--checkpoint", tmp_path / "empty", "--prompt", "x", check=False)
    assert result.returncode == 2 and "config.json" in result.stderr

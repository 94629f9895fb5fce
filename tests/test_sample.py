"""hrm.load / generate / the sample CLI on a checkpoint trained in this session (tests/conftest.py)."""

import numpy as np
import pytest

import hrm
from hrm.inference import SamplingError
from hrm.sample import main
from tests.helpers import run_module


@pytest.fixture
def run_dir(trained_run):
    """The session's mamba run (tests/conftest.py): 12 steps, checkpoints at 6 and 12; read-only."""
    return trained_run("mamba").path


def test_load_restores_the_latest_checkpoint(run_dir):
    model = hrm.load(run_dir)
    assert model.step == 12
    assert model.tokenizer.decode(model.tokenizer.encode("héllo")) == "héllo"
    logits = model.logits(model.tokenizer.encode("def f(x):"))
    tokens = model.config.model.token_vocab_size
    assert logits.shape == (1, 9, model.config.model.vocab_size) and 0 < tokens < logits.shape[-1]
    assert np.all(np.isfinite(logits[..., :tokens])) and np.all(np.isneginf(logits[..., tokens:]))  # padded rows
    assert hrm.load(run_dir, step=6).step == 6


def test_greedy_generate_equals_stepwise_argmax_of_logits(run_dir):
    model = hrm.load(run_dir)
    # the last prompt runs past the 32-token rows the model was trained on: an SSM has no length limit
    for prompt in ["import os\n", "x", "def main():\n    return sorted(values, key=len)[0]\n"]:
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
    result = run_module(
        "hrm.sample", "--checkpoint", run_dir, "--prompt", "def ", "--max_tokens", "20", "--temperature", "0"
    )
    assert result.stdout.startswith("def ") and len(result.stdout) > 4


@pytest.mark.parametrize(
    "args,message",
    [
        (["--temperature", "-1"], "temperature must be >= 0"),
        (["--top_p", "1.5"], "top_p must be in (0, 1]"),
        (["--max_tokens", "lots"], "invalid int value"),
        (["--stop", ""], "stop strings must be non-empty text, got ['']"),  # was ignored
    ],
)
def test_sample_cli_rejects_bad_values(run_dir, run_cli, args, message):
    code, _, err = run_cli(main, "--checkpoint", run_dir, "--prompt", "x", *args)
    assert code == 2 and message in err and "Traceback" not in err


def test_sample_cli_names_a_missing_checkpoint(tmp_path, run_cli):
    code, _, err = run_cli(main, "--checkpoint", tmp_path / "nope", "--prompt", "x")
    assert code == 2 and "does not exist" in err and "Traceback" not in err
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(main, "--checkpoint", tmp_path / "empty", "--prompt", "x")
    assert code == 2 and "config.json" in err


def test_sample_cli_lists_the_available_steps_for_a_missing_step(run_dir, run_cli):
    code, _, err = run_cli(main, "--checkpoint", run_dir, "--prompt", "x", "--step", "-1")
    assert code == 2 and "Traceback" not in err
    assert "has no checkpoint at step -1; available steps: 6, 12" in err
    with pytest.raises(hrm.api.CheckpointError, match="has no checkpoint at step 7; available steps: 6, 12"):
        hrm.load(run_dir, step="7")
    with pytest.raises(hrm.api.CheckpointError, match="unknown step 'worst'; pass a number or one of latest, best"):
        hrm.load(run_dir, step="worst")


def test_sample_cli_refuses_nan_temperature_and_a_file_as_checkpoint(run_dir):
    from hrm.cli import UsageError

    with pytest.raises(UsageError, match="temperature must be a finite number"):
        main(["--checkpoint", str(run_dir), "--prompt", "x", "--temperature", "nan"])
    with pytest.raises(hrm.api.CheckpointError, match="is a file"):
        main(["--checkpoint", str(run_dir / "config.json"), "--prompt", "x"])


def test_load_accepts_a_step_folder_and_refuses_ids_outside_the_vocabulary(run_dir):
    model = hrm.load(run_dir / "checkpoints" / "6")
    assert model.step == 6
    with pytest.raises(SamplingError, match=r"token ids must be in \[0, 258\)"):
        model.logits([1, 2, 300])
    with pytest.raises(SamplingError, match="token ids"):
        model.logits([-1])


def test_export_writes_a_final_weights_folder_that_load_and_sample_accept(run_dir, tmp_path, run_cli):
    run_module("hrm.export", "--checkpoint", run_dir, "--out", tmp_path / "final")
    assert {p.name for p in (tmp_path / "final").iterdir()} >= {"config.json", "model.safetensors"}
    exported, original = hrm.load(tmp_path / "final"), hrm.load(run_dir)
    assert exported.step == 12
    ids = original.tokenizer.encode("for i in range(3):")
    np.testing.assert_array_equal(exported.logits(ids), original.logits(ids))
    code, out, _ = run_cli(
        main,
        "--checkpoint",
        tmp_path / "final",
        "--prompt",
        "def ",
        "--max_tokens",
        "8",
        "--temperature",
        "0",
        "--stop",
        "\n\n\n",
    )
    assert code == 0 and out == "def " + original.generate(["def "], max_new_tokens=8, temperature=0)[0] + "\n"


def test_sample_streams_samples_stops_and_prompt_files(run_dir, tmp_path, capsys):
    model = hrm.load(run_dir)
    full = model.generate(["def "], max_new_tokens=24, temperature=0, stop_at_eos=False)[0]
    stop = full[5:7]
    (tmp_path / "prompt.txt").write_text("def ")
    main(
        [
            "--checkpoint",
            str(run_dir),
            "--prompt_file",
            str(tmp_path / "prompt.txt"),
            "--max_tokens",
            "24",
            "--temperature",
            "0",
            "--stop",
            stop,
        ]
    )
    assert capsys.readouterr().out == "def " + full[: full.index(stop)] + "\n"
    main(
        [
            "--checkpoint",
            str(run_dir),
            "--prompt",
            "a",
            "--num_samples",
            "3",
            "--max_tokens",
            "8",
            "--temperature",
            "1.0",
            "--seed",
            "4",
        ]
    )
    out = capsys.readouterr().out
    assert out.count("--- sample") == 3


def test_saved_state_continues_like_the_whole_prompt(run_dir, tmp_path, capsys):
    """--save_state after a prefix, --load_state with the rest: the greedy output of the whole prompt."""
    model = hrm.load(run_dir)
    prefix, rest = "import os\nimport sys\n", "def main():\n"
    main(
        ["--checkpoint", str(run_dir), "--prompt", prefix, "--max_tokens", "0", "--save_state", str(tmp_path / "s.npz")]
    )
    capsys.readouterr()
    main(
        [
            "--checkpoint",
            str(run_dir),
            "--prompt",
            rest,
            "--max_tokens",
            "10",
            "--temperature",
            "0",
            "--load_state",
            str(tmp_path / "s.npz"),
        ]
    )
    whole = model.generate([prefix + rest], max_new_tokens=10, temperature=0)[0]
    assert capsys.readouterr().out == rest + whole + "\n"


def test_chat_carries_the_conversation_through_stdin(run_dir):
    """Two turns and commands over stdin; the second reply equals a greedy continuation of the whole
    dialogue (template of hrm.data.sources), so the state was carried, not re-read."""
    from hrm.chat_template import dialogue_prompt

    result = run_module(
        "hrm.sample",
        "--checkpoint",
        run_dir,
        "--chat",
        "--temperature",
        "0",
        "--max_tokens",
        "6",
        input="/help\nhello\n/tokens 5\n/top_k 0\nhow are you\n/reset\n/quit\n",
    )
    lines = result.stdout.split("> ")
    assert "/reset" in lines[1] and "replies up to 5 tokens" in result.stdout and "top_k must be >= 1" in result.stdout
    model = hrm.load(run_dir)
    first = model.generate([dialogue_prompt(["hello"])], max_new_tokens=6, temperature=0)[0]
    second = model.generate(
        [dialogue_prompt(["hello"]) + first + "\n" + dialogue_prompt(["how are you"])], max_new_tokens=5, temperature=0
    )[0]
    assert lines[2].startswith(first) and lines[5].startswith(second)


def test_max_tokens_past_an_attention_models_context_is_capped_with_a_note(tmp_path, capsys):
    from hrm.cli import UsageError
    from hrm.config import Config, DataConfig, ModelConfig
    from hrm.export import save_final
    from hrm.training.state import init_model

    config = Config(
        model=ModelConfig(
            family="hybrid_pattern",
            layer_pattern="A",
            d_model=16,
            n_layers=1,
            d_state=4,
            n_heads=2,
            max_cache_len=32,
            vocab_size=264,
        ),
        data=DataConfig(tokenizer="byte"),
    )
    save_final(config, init_model(config)[1], tmp_path / "final")
    main(["--checkpoint", str(tmp_path / "final"), "--prompt", "abc", "--max_tokens", "10000000", "--temperature", "0"])
    captured = capsys.readouterr()
    assert "--max_tokens 10000000 capped to 29" in captured.err and "model.max_cache_len (32" in captured.err
    assert captured.out.startswith("abc")
    with pytest.raises(UsageError, match="the prompt has 40 tokens, model.max_cache_len is 32"):
        main(["--checkpoint", str(tmp_path / "final"), "--prompt", "x" * 40])


def test_python_api_type_errors_are_hrm_errors_with_a_message(run_dir):
    from hrm.decoding import text_streams
    from hrm.inference import Sampling

    model = hrm.load(run_dir)
    for call, message in [
        (lambda: model.logits([[1.7, 2.2]]), "token ids must be integers, got float64 values such as 1.7"),
        (lambda: model.logits([[1, 2], [3]]), "token ids must be a rectangular list of integers"),
        (lambda: model.generate("hi", seed=2**70), f"seed must be an integer in [-2**63, 2**63), got {2**70}"),
        (lambda: model.generate("hi", seed=1.5), "seed must be an integer in [-2**63, 2**63), got 1.5"),
        (lambda: model.generate("hi", max_new_tokens=2.5), "max_new_tokens must be an integer >= 0, got 2.5"),
        (lambda: model.generate(123), "prompts must be a string or a non-empty list of strings, got 123"),
        (lambda: model.generate(["a", 5]), "prompts must be a string or a non-empty list of strings"),
        (lambda: text_streams(model, ["hi"], 4, Sampling(), stop=[""]), "stop strings must be non-empty text"),
        (lambda: text_streams(model, ["hi"], 4, Sampling(), stop=""), "stop strings must be non-empty text"),
    ]:
        with pytest.raises(SamplingError) as error:
            call()
        assert str(error.value).startswith(message), str(error.value)
    assert model.logits(np.array([[1, 2]], np.int32)).shape[:2] == (1, 2)  # integer arrays of any width still work
    streams, pieces = text_streams(model, ["ab"], 4, Sampling(temperature=0), stop="\n\n")  # one string is one stop
    list(pieces)
    assert streams[0].stop == ["\n\n"]

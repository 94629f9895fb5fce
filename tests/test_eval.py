"""hrm.eval: exact-match scoring, GSM8K parsing, perplexity over every target, the CLI's table/JSON/file."""

import json
import math
import shutil

import numpy as np
import pytest

import hrm
from hrm import api
from hrm import eval as hrm_eval
from hrm.cli import run_main
from hrm.config import SyntheticConfig
from hrm.data import synthetic
from hrm.data.sources import COLUMN_SEPARATOR
from hrm.tokenizer import get_tokenizer


class ScriptedModel:
    """Stands in for hrm.load's model: ``generate`` answers from a table of prompt → continuation."""

    def __init__(self, replies):
        self.tokenizer = get_tokenizer("byte")
        self.replies = replies
        self.calls = []

    def generate(self, prompts, max_new_tokens, temperature):
        self.calls.append((len(prompts), max_new_tokens, temperature))
        return [self.replies(p) for p in prompts]


@pytest.mark.parametrize("name", list(synthetic.TASKS))
def test_exact_match_is_one_for_right_and_zero_for_wrong_answers(name):
    cfg = SyntheticConfig(seed=3)
    truth = {e.prompt: e.answer for e in synthetic.examples(name, cfg, 40, stream=synthetic.TEST_STREAM)}
    right = ScriptedModel(lambda p: truth[p])
    result = hrm_eval.task_accuracy(right, f"synthetic:{name}", cfg, 40, batch_size=16)
    assert result["exact_match"] == 1.0 and result["correct"] == 40 and result["char_match"] == 1.0
    assert [c[0] for c in right.calls] == [16, 16, 8] and all(c[2] == 0 for c in right.calls)  # greedy
    assert right.calls[0][1] == max(len(a) for a in truth.values()) + 1  # room for the answer and EOS
    wrong = ScriptedModel(lambda p: "#### 99999" + truth[p][::-1] + "x")
    assert hrm_eval.task_accuracy(wrong, f"synthetic:{name}", cfg, 40)["exact_match"] == 0.0


def test_gsm8k_final_answers_are_parsed_and_scored(tmp_path):
    assert synthetic.final_answer("Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 1,072") == "1072"
    assert synthetic.final_answer("#### -3.5") == "-3.5" and synthetic.final_answer("72") is None
    path = tmp_path / "gsm8k.jsonl"
    rows = [
        {"question": "How many?", "answer": "2+2=4\n#### 4"},
        {"question": "no result", "answer": "4"},
        {"question": "Money?", "answer": "#### 1,000"},
    ]
    path.write_text("\n".join(map(json.dumps, rows)) + "\nnot json\n")
    assert hrm_eval.gsm8k_examples(path) == [("How many?", "2+2=4\n#### 4"), ("Money?", "#### 1,000")]
    replies = {"How many?" + COLUMN_SEPARATOR: "so #### 4", "Money?" + COLUMN_SEPARATOR: "#### 999"}
    result = hrm_eval.gsm8k_accuracy(ScriptedModel(replies.get), path)
    assert (result["correct"], result["examples"]) == (1, 2)
    replies["Money?" + COLUMN_SEPARATOR] = "#### 1000.0"
    assert hrm_eval.gsm8k_accuracy(ScriptedModel(replies.get), path)["exact_match"] == 1.0


@pytest.fixture
def addition_run(trained_run, tmp_path):
    """A copy (the CLI writes eval/ into it) of the session's mamba run (tests/conftest.py): synthetic:addition
    with the loss on the answers, 10% of 60 documents held out."""
    run = trained_run("mamba")
    assert run.config.data.dataset == "synthetic:addition" and run.config.data.completion_only
    shutil.copytree(run.path, tmp_path / "addition")
    return tmp_path / "addition"


def test_perplexity_counts_every_held_out_answer_target_once(addition_run):
    model = hrm.load(addition_run)
    result = hrm_eval.perplexity(model, model.config.data, batch_size=4, log=lambda *_: None)
    held_out = [
        e
        for i, e in enumerate(synthetic.examples("addition", model.config.data.synthetic, 60))
        if i in set(np.random.default_rng(12345).permutation(60)[:6])
    ]  # split_documents' sample
    assert result["documents"] == "held_out" and result["n_documents"] == 6
    assert result["targets"] == sum(len(e.answer) + 1 for e in held_out)  # answers + EOS
    assert result["bytes"] == result["targets"]  # bytes: one per token
    assert result["bits_per_byte"] == pytest.approx(result["loss_per_token"] / math.log(2))
    assert result["perplexity"] == pytest.approx(math.exp(result["loss_per_token"]))
    everything = hrm_eval.perplexity(model, model.config.data, documents="all", batch_size=4, log=lambda *_: None)
    assert everything["n_documents"] == 60 and everything["targets"] > result["targets"]


def test_eval_cli_prints_json_and_writes_it_to_the_run(addition_run, capsys, monkeypatch):
    cfg = SyntheticConfig(examples=60, length=3)
    truth = {e.prompt: e.answer for e in synthetic.examples("addition", cfg, 5, stream=synthetic.TEST_STREAM)}
    monkeypatch.setattr(api.LoadedModel, "generate", lambda self, prompts, **_: [truth[p] for p in prompts])
    hrm_eval.main(
        [
            "--checkpoint",
            str(addition_run),
            "--perplexity",
            "--task",
            "synthetic:addition",
            "--examples",
            "5",
            "--config.data.synthetic.length=3",
            "--json",
        ]
    )  # longer than trained
    line = capsys.readouterr().out.strip()
    report = json.loads(line)
    assert "\n" not in line and report["step"] == 12 and report["name"] == "perplexity_addition"
    task = report["results"]["synthetic:addition"]
    assert (task["exact_match"], task["examples"], task["length"]) == (1.0, 5, 3)
    assert report["results"]["perplexity"]["loss_per_token"] > 0
    assert json.loads((addition_run / "eval" / "perplexity_addition.json").read_text()) == report
    hrm_eval.main(
        [
            "--checkpoint",
            str(addition_run),
            "--task",
            "synthetic:addition",
            "--examples",
            "5",
            "--config.data.synthetic.length=3",
            "--name",
            "table",
        ]
    )
    out = capsys.readouterr().out
    assert "synthetic:addition" in out and "exact match 1.000" in out and (addition_run / "eval/table.json").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--checkpoint", "/no/such/run", "--perplexity"], "checkpoint directory '/no/such/run' does not exist"),
        (["--checkpoint", "RUN", "--task", "synthetic:copying"], "unknown synthetic task 'copying'"),
        (["--checkpoint", "RUN"], "nothing to evaluate"),
        (["--checkpoint", "RUN", "--gsm8k", "/no/such.jsonl"], "--gsm8k file '/no/such.jsonl' does not exist"),
        (["--checkpoint", "RUN", "--perplexity", "--config.model.d_model=8"], "does not apply to evaluation"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(addition_run, capsys, args, message):
    args = [str(addition_run) if a == "RUN" else a for a in args]
    with pytest.raises(SystemExit) as exit_info:
        run_main(hrm_eval.main, args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and err.count("\n") == 1, err


def test_an_unwritable_eval_folder_prints_the_results_and_one_line(addition_run, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(addition_run, run)
    shutil.rmtree(run / "eval", ignore_errors=True)  # earlier tests' results
    (run / "eval").write_text("")  # as root nothing is read-only: a file where the folder goes fails the same way
    monkeypatch.setattr(api.LoadedModel, "generate", lambda self, prompts, **_: ["" for _ in prompts])
    with pytest.raises(SystemExit) as exit_info:
        run_main(hrm_eval.main, ["--checkpoint", str(run), "--task", "synthetic:addition", "--examples", "2", "--json"])
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2 and json.loads(out)["results"]["synthetic:addition"]["examples"] == 2
    assert err.startswith(f"error: cannot write the results to '{run / 'eval'}'") and err.count("\n") == 1, err

"""hrm.lm_eval: lm-evaluation-harness scores an hrm model in-process (loglikelihood, loglikelihood_rolling,
generate_until) on local task YAMLs over local JSONL files (no hub), and the scores equal those of lm-eval's own
``local-completions`` client against hrm.serve (echo + logprobs, token-id prompts, the remote tokenizer)."""

import json

import numpy as np
import pytest

import hrm
from tests.test_serve import KEY, call, model_dir, server  # noqa: F401 (fixtures)

lm_eval = pytest.importorskip("lm_eval", reason="needs lm-evaluation-harness: pip install -e '.[lm_eval]'")

TASKS = ["hrm_mc", "hrm_gen", "hrm_roll"]
DATA = {
    "mc": [
        {"question": "The quick brown", "choices": [" fox", " dog", " cat"], "answer": 0},
        {"question": "def main", "choices": ["():", " = 1", "[0]"], "answer": 0},
        {"question": "import", "choices": [" os", " sys"], "answer": 1},
    ],
    "gen": [{"question": "x = ", "answer": "1"}, {"question": "for i in", "answer": " range"}],
    "roll": [{"text": "the quick brown fox jumps over the lazy dog"}, {"text": "def f(x):\n    return x"}],
}
SPECS = {
    "mc": 'output_type: multiple_choice\ntarget_delimiter: ""\ndoc_to_text: "{{question}}"\n'
    'doc_to_choice: "{{choices}}"\ndoc_to_target: "{{answer}}"\nmetric_list:\n  - metric: acc\n',
    "gen": 'output_type: generate_until\ndoc_to_text: "{{question}}"\ndoc_to_target: "{{answer}}"\n'
    'generation_kwargs:\n  until: ["\\n"]\n  max_gen_toks: 8\n  do_sample: false\n'
    "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n",
    "roll": 'output_type: loglikelihood_rolling\ndoc_to_text: ""\ndoc_to_target: "{{text}}"\n'
    "metric_list:\n  - metric: word_perplexity\n  - metric: bits_per_byte\n",
}


@pytest.fixture
def task_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name, rows in DATA.items():
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (tmp_path / f"hrm_{name}.yaml").write_text(
            f"task: hrm_{name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
            f"    test: {tmp_path / f'{name}.jsonl'}\ntest_split: test\n" + SPECS[name]
        )
    return tmp_path


def responses(results, task):
    return [s["resps"] for s in sorted(results["samples"][task], key=lambda s: s["doc_id"])]


def flat(resps):
    """Every number and string of lm-eval's nested responses, in order."""
    if isinstance(resps, (list, tuple)):
        return [x for r in resps for x in flat(r)]
    return [resps]


@pytest.mark.slow
def test_in_process_scores_equal_model_logits_and_the_server_path(server, model_dir, task_dir, monkeypatch):  # noqa: F811
    from lm_eval.tasks import TaskManager

    from hrm.lm_eval import evaluate

    model = hrm.load(model_dir)
    native = evaluate(model, TASKS, str(task_dir), log_samples=True, batch_size=4)

    # the first choice of the first question, by hand from model.logits
    context, continuation = model.tokenizer.encode("The quick brown"), model.tokenizer.encode(" fox")
    ids = context + continuation
    logits = model.logits(ids)[0].astype(np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    want = sum(logp[len(context) - 1 + i, t] for i, t in enumerate(continuation))
    assert flat(responses(native, "hrm_mc"))[0] == pytest.approx(want, abs=1e-5)
    generated = flat(responses(native, "hrm_gen"))
    assert len(generated) == 2 and all(isinstance(text, str) for text in generated)

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    model_id = call(server, "/v1/models")[1]["data"][0]["id"]
    remote = lm_eval.simple_evaluate(
        model="local-completions",
        model_args={
            "base_url": server + "/v1/completions",
            "model": model_id,
            "tokenizer_backend": "remote",
            "tokenized_requests": True,
            "auth_token": KEY,
            "num_concurrent": 1,
            "max_retries": 1,
            "batch_size": 4,
        },
        tasks=TASKS,
        task_manager=TaskManager(include_path=str(task_dir)),
        log_samples=True,
    )
    for task in TASKS:
        ours, theirs = flat(responses(native, task)), flat(responses(remote, task))
        assert len(ours) == len(theirs) > 0
        for a, b in zip(ours, theirs):
            if isinstance(a, str):
                assert a == b, task
            else:
                assert float(a) == pytest.approx(float(b), rel=1e-5, abs=1e-5), task
    for task, metric in [("hrm_mc", "acc,none"), ("hrm_roll", "bits_per_byte,none")]:
        assert native["results"][task][metric] == pytest.approx(remote["results"][task][metric], rel=1e-5)

"""Synthetic tasks: deterministic generators that follow their definitions, and their use as training data."""

import dataclasses
import re

import numpy as np
import pytest

from hrm.config import DataConfig, SyntheticConfig
from hrm.data import synthetic, tokenized_corpus
from hrm.data.sources import source_fingerprint
from hrm.tokenizer import get_tokenizer

CFG = SyntheticConfig(seed=7)


@pytest.mark.parametrize("name", list(synthetic.TASKS))
def test_generators_are_deterministic_and_extend_without_changing(name):
    first = synthetic.examples(name, CFG, 6)
    assert first == synthetic.examples(name, CFG, 6)
    assert synthetic.examples(name, CFG, 3) == first[:3]
    assert synthetic.examples(name, dataclasses.replace(CFG, seed=8), 6) != first
    assert synthetic.examples(name, CFG, 6, stream=synthetic.TEST_STREAM) != first
    assert all(e.prompt.isascii() and e.answer for e in first)


def test_selective_copying_answer_is_the_data_tokens_in_order_at_random_spacing():
    cfg = dataclasses.replace(CFG, length=40, targets=5, vocab=6)
    spacings = set()
    for e in synthetic.examples("selective_copying", cfg, 50):
        body, separator = e.prompt[:-1], e.prompt[-1]
        assert separator == "|" and len(body) == 40
        data = [c for c in body if c != "."]
        assert "".join(data) == e.answer and len(e.answer) == 5 and set(e.answer) <= set("abcdef")
        spacings.add(tuple(i for i, c in enumerate(body) if c != "."))
    assert len(spacings) == 50  # positions vary (what LTI models cannot handle)


def test_induction_heads_answer_follows_the_repeated_trigger():
    cfg = dataclasses.replace(CFG, length=30, vocab=5)
    for e in synthetic.examples("induction_heads", cfg, 50):
        assert len(e.prompt) == 30 and e.prompt.count("@") == 2 and e.prompt.endswith("@")
        assert e.answer == e.prompt[e.prompt.index("@") + 1]
        assert set(e.prompt) - {"@"} <= set("abcde")


def test_mqar_answers_are_the_queried_keys_values():
    cfg = dataclasses.replace(CFG, length=10, targets=3)
    for e in synthetic.examples("mqar", cfg, 50):
        pairs, queries = e.prompt[:-1].split("|")
        table = dict(zip(pairs[0::2], pairs[1::2]))
        assert len(table) == 10 and len(queries) == 3 and len(set(queries)) == 3
        assert e.answer == "".join(table[k] for k in queries)


def test_addition_and_arithmetic_are_correct_and_worked_left_to_right():
    for e in synthetic.examples("addition", dataclasses.replace(CFG, length=4), 50):
        a, b = e.prompt[:-1].split("+")
        assert int(a) + int(b) == int(e.answer) and max(len(a), len(b)) <= 4
    for e in synthetic.examples("arithmetic", dataclasses.replace(CFG, length=3), 50):
        value, ops = int(e.prompt[0]), re.findall(r"([-+*])(\d)", e.prompt[1:-1])
        steps = e.answer.split(" #### ")[0].split(",")
        assert len(ops) == len(steps) == 3
        for (op, digit), step in zip(ops, steps):
            new = {"+": value + int(digit), "-": value - int(digit), "*": value * int(digit)}[op]
            assert step == f"{value}{op}{digit}={new}"
            value = new
        assert synthetic.final_answer(e.answer) == str(value)


def test_scoring_rules():
    assert synthetic.is_correct("mqar", " ABC\n", "ABC") and not synthetic.is_correct("mqar", "ABD", "ABC")
    assert synthetic.is_correct("arithmetic", "wrong steps #### 14", "3+4=7,7*2=14 #### 14")
    assert not synthetic.is_correct("arithmetic", "3+4=7,7*2=14", "3+4=7,7*2=14 #### 14")


def test_bad_settings_are_one_line_errors():
    with pytest.raises(synthetic.SyntheticError, match="unknown synthetic task 'copy'.*synthetic:mqar"):
        synthetic.task_name("synthetic:copy")
    with pytest.raises(synthetic.SyntheticError, match="at most 26"):
        synthetic.examples("mqar", dataclasses.replace(CFG, length=27), 1)
    with pytest.raises(synthetic.SyntheticError, match="data.synthetic.vocab"):
        synthetic.examples("induction_heads", dataclasses.replace(CFG, vocab=40), 1)


def test_as_training_source_the_loss_is_on_the_answers_only(tmp_path):
    cfg = DataConfig(
        dataset="synthetic:addition",
        completion_only=True,
        cache_dir=str(tmp_path),
        num_threads=1,
        synthetic=SyntheticConfig(examples=30, length=2),
    )
    tokenizer = get_tokenizer("byte")
    corpus = tokenized_corpus(cfg, tokenizer, log=lambda *_: None)
    examples = synthetic.examples("addition", cfg.synthetic, 30)
    assert len(corpus) == 30
    for i, e in enumerate(examples):
        doc = corpus.document(i)
        assert tokenizer.decode(doc["tokens"][:-1]) == e.prompt + e.answer
        assert doc["loss_mask"].tolist() == [0] * len(e.prompt) + [1] * (len(e.answer) + 1)  # answer + EOS
    longer = dataclasses.replace(cfg, synthetic=dataclasses.replace(cfg.synthetic, length=3))
    assert source_fingerprint(longer) != source_fingerprint(cfg)  # the token cache follows the task
    assert not np.array_equal(tokenized_corpus(longer, tokenizer, log=lambda *_: None).tokens, corpus.tokens)

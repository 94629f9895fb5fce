"""The serving engine without HTTP (``hrm.serving.engine``): warmed buckets serve without compiling, a request
whose programs are not compiled waits without stalling the others, cancellation, per-row faults."""

import queue
import time

import numpy as np
import pytest

from hrm.api import LoadedModel
from hrm.config import Config, DataConfig, ModelConfig, resolve_config
from hrm.decoding import TextStream
from hrm.inference import Sampling, row_key
from hrm.serving.engine import BatchEngine, Row, bucket, buckets, compile_count
from hrm.training.state import init_model

MODELS = {
    "mamba": ModelConfig(d_model=32, n_layers=2, d_state=8, vocab_size=264),
    "attention": ModelConfig(
        family="hybrid_pattern",
        layer_pattern="AM",
        d_model=32,
        n_layers=2,
        d_state=8,
        n_heads=4,
        max_cache_len=256,
        vocab_size=264,
    ),
}
NO_EOS = ((256, -100.0),)  # the byte tokenizer's end-of-text biased off: a row runs to its max_tokens
GREEDY = Sampling(0.0)


def load(family: str) -> LoadedModel:
    config = resolve_config(Config(name=family, model=MODELS[family], data=DataConfig(tokenizer="byte", seq_len=32)))
    return LoadedModel(config, init_model(config)[1], 0)


@pytest.fixture(scope="module", params=list(MODELS))
def model(request):
    return load(request.param)


class Request:
    """A row submitted to ``engine``, its events kept; ``result()`` waits for its end."""

    def __init__(self, engine, prompt: str, max_tokens: int, sampling: Sampling = GREEDY, seed: int = 0):
        self.events, self.steps_at_first = queue.Queue(), None
        self.engine, self.text = engine, ""
        tokenizer = engine.model.tokenizer
        self.row = Row(
            tokenizer.encode(prompt),
            max_tokens,
            sampling,
            np.asarray(row_key(seed)),
            TextStream(tokenizer, eos_id=tokenizer.eos_id),
            self.deliver,
        )
        self.submitted_at = engine.steps
        engine.submit(self.row)

    def deliver(self, event):
        if self.steps_at_first is None:
            self.steps_at_first = self.engine.steps
        self.events.put(event)

    def result(self, timeout: float = 600) -> tuple[str, str]:
        while True:
            kind, value = self.events.get(timeout=timeout)
            if kind == "text":
                self.text += value
            elif kind == "error":
                raise value
            else:
                return self.text, value


def greedy(model, prompt: str, max_tokens: int) -> str:
    return model.generate([prompt], max_new_tokens=max_tokens, temperature=0)[0]


def test_buckets_are_powers_of_two_up_to_the_largest():
    assert buckets(8) == [1, 2, 4, 8] and buckets(6) == [1, 2, 4, 6] and buckets(1) == [1]
    assert [bucket(n, 6) for n in (1, 2, 3, 5, 6)] == [1, 2, 4, 6, 6]


def test_after_warmup_serving_compiles_nothing(model):
    """Every shape a served run meets is in the warmed buckets: prompts of 1-60 tokens (one or two chunks),
    1 or 2 rows admitted together, slots growing and shrinking, greedy and sampling rows, a logit bias."""
    work = [("a", 5), ("def f(x):", 12), ("x" * 60, 7), ("import os", 20), ("b" * 33, 3)]
    want = [greedy(model, p, n) for p, n in work + [("y" * 17, 4)]]  # compiled here, before counting
    engine = BatchEngine(model, max_batch=2, prefill_chunk=32)
    assert engine.warmup() == len(engine.programs())
    before = compile_count()
    requests = [Request(engine, p, n) for p, n in work]  # queued before the start: the first two join together
    sampled = Request(engine, "hello", 9, Sampling(0.9, top_k=20, logit_bias=NO_EOS), seed=3)
    engine.start()
    try:
        answers = [r.result() for r in requests]
        assert sampled.result()[1] == "length" and sampled.row.tokens == 9
        late = Request(engine, "y" * 17, 4)  # alone, after the others left
        answers.append(late.result())
        assert compile_count() == before
        assert [text for text, _ in answers] == want
        assert engine.max_active == 2 and engine.max_prefill == 2
    finally:
        engine.stop()


def test_a_request_needing_a_new_program_waits_without_stalling_the_others():
    """Without warm-up, a prompt whose chunk length was never compiled waits for the compile thread while the row
    already streaming keeps decoding (a compile in the decode thread would stop it for the whole compile)."""
    model = load("mamba")
    engine = BatchEngine(model, max_batch=2)
    engine.start()
    try:
        first = Request(engine, "a", 100_000, Sampling(0.0, logit_bias=NO_EOS))
        while first.steps_at_first is None or engine.steps < first.steps_at_first + 5:
            time.sleep(0.05)  # streaming
        second = Request(engine, "z" * 100, 6)  # a 128-token chunk: a program not compiled yet
        assert second.result()[0] == greedy(model, "z" * 100, 6)
        assert second.steps_at_first - second.submitted_at >= 5  # the first row kept decoding meanwhile
        assert first.row.tokens > 10 and first.events.qsize() > 0
    finally:
        first.row.cancelled = True
        engine.stop()


def test_cancelled_and_faulty_rows_leave_alone(model):
    """A row whose client left is dropped at the next step; a row with token ids outside the vocabulary gets the
    error; the rows beside them are answered as if alone."""
    engine = BatchEngine(model, max_batch=2, prefill_chunk=32)
    engine.start()
    try:
        gone = Request(engine, "q", 250, Sampling(0.0, logit_bias=NO_EOS))  # within the attention model's 256
        while gone.steps_at_first is None:
            time.sleep(0.05)
        gone.row.cancelled = True
        bad = Request(engine, "x", 3)
        bad.row.ids = [1, 9999]
        good = Request(engine, "def f(x):", 8)
        with pytest.raises(Exception, match="token ids must be in"):
            bad.result()
        assert good.result()[0] == greedy(model, "def f(x):", 8)
        deadline = time.monotonic() + 60
        while engine.active and time.monotonic() < deadline:
            time.sleep(0.05)
        assert engine.cancelled == 1 and engine.active == 0 and gone.row.tokens < 250
    finally:
        engine.stop()

"""hrm.serve: the real server (uvicorn, a subprocess on a free loopback port) over HTTP — OpenAI completions
and chat round trips, streaming, /generate, 100 concurrent requests batched together with outputs independent
of their batch-mates, every kind of bad request, the API key."""

import concurrent.futures
import functools
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

import hrm
from hrm.chat_template import dialogue_prompt
from hrm.config import Config, DataConfig
from hrm.export import save_final
from hrm.training.state import init_model
from tests.helpers import ROOT
from tests.test_engine import MODELS

pytest.importorskip("fastapi")
KEY = "test-key"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A small byte-level mamba straight from initialisation, as an hrm.export folder."""
    config = Config(
        name="serve",
        model=MODELS["mamba"],
        data=DataConfig(tokenizer="byte", seq_len=32),
    )
    _, params = init_model(config)
    return save_final(config, params, tmp_path_factory.mktemp("final"))


def serving(folder, *flags):
    """``python -m hrm.serve --checkpoint folder --api_key KEY flags`` on a free loopback port: yields its URL,
    then stops it (it must exit within 30 s: no request is left hanging)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "hrm.serve", "--checkpoint", str(folder), "--port", str(port), "--api_key", KEY]
        + list(flags),
        cwd=ROOT,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 900  # a warm-up compiles before it listens
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url + "/health", timeout=1)
            break
        except OSError:
            if process.poll() is not None:
                raise AssertionError(process.stdout.read()) from None
            time.sleep(0.2)
    yield url
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def server(model_dir):
    """Without warm-up: each new shape is compiled the first time it comes (off the decode thread)."""
    yield from serving(model_dir, "--max_tokens_limit", "4000", "--no-warmup")


def call(url, path, body=None, key=KEY, raw=None):
    """(status, parsed JSON or the raw text of an event stream)."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(
        url + path,
        data=data,
        headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            text = response.read().decode()
            status = response.status
    except urllib.error.HTTPError as error:
        text, status = error.read().decode(), error.code
    return status, (text if text.startswith("data:") else json.loads(text))


@functools.cache
def loaded(model_dir):
    return hrm.load(model_dir)


def expected(model_dir, prompt, max_tokens):
    """The greedy continuation by hrm.load's generate, in this process."""
    return loaded(model_dir).generate([prompt], max_new_tokens=max_tokens, temperature=0)[0]


def test_completions_round_trip_equals_generate(server, model_dir):
    status, body = call(
        server, "/v1/completions", {"prompt": ["def f(x):", "import"], "max_tokens": 12, "temperature": 0}
    )
    assert status == 200 and body["object"] == "text_completion"
    assert [c["text"] for c in body["choices"]] == [
        expected(model_dir, "def f(x):", 12),
        expected(model_dir, "import", 12),
    ]
    assert body["choices"][0]["finish_reason"] in ("length", "stop")
    assert body["usage"]["prompt_tokens"] == len("def f(x):") + len("import")
    status, sampled = call(
        server, "/v1/completions", {"prompt": "a", "max_tokens": 8, "n": 2, "seed": 3, "temperature": 1.0, "top_p": 0.9}
    )
    assert status == 200 and len(sampled["choices"]) == 2
    assert sampled == call(
        server, "/v1/completions", {"prompt": "a", "max_tokens": 8, "n": 2, "seed": 3, "temperature": 1.0, "top_p": 0.9}
    )[1] | {"id": sampled["id"], "created": sampled["created"]}


def test_streaming_sends_the_same_text_as_events_ending_done(server, model_dir):
    status, text = call(
        server, "/v1/completions", {"prompt": "class ", "max_tokens": 10, "temperature": 0, "stream": True}
    )
    events = [line[len("data: ") :] for line in text.splitlines() if line.startswith("data: ")]
    assert status == 200 and events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == expected(model_dir, "class ", 10)
    assert chunks[-1]["choices"][0]["finish_reason"] in ("length", "stop")
    status, text = call(
        server,
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 6, "temperature": 0, "stream": True},
    )
    chunks = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == expected(
        model_dir, dialogue_prompt(["hi"]), 6
    )


def test_chat_generate_health_and_models(server, model_dir):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    status, body = call(server, "/v1/chat/completions", {"messages": messages, "max_tokens": 8, "temperature": 0})
    assert status == 200 and body["choices"][0]["message"]["role"] == "assistant"
    assert body["choices"][0]["message"]["content"] == expected(model_dir, "be brief\nhello\n", 8)
    status, body = call(server, "/generate", {"prompt": "x = ", "max_tokens": 5, "temperature": 0})
    assert status == 200 and body == {"response": expected(model_dir, "x = ", 5)}
    assert call(server, "/health", key=None)[1]["status"] == "ok"
    assert call(server, "/v1/models")[1]["data"][0]["object"] == "model"


def test_a_hundred_concurrent_requests_are_batched_and_independent(server, model_dir):
    prompts = ["a", "def main():", "The quick brown fox", "1 + 1 ="]
    want = {p: expected(model_dir, p, 6) for p in prompts}
    before = call(server, "/health")[1]["decode_steps"]
    with concurrent.futures.ThreadPoolExecutor(100) as pool:
        results = list(
            pool.map(
                lambda i: (
                    prompts[i % 4],
                    call(server, "/v1/completions", {"prompt": prompts[i % 4], "max_tokens": 6, "temperature": 0}),
                ),
                range(100),
            )
        )
    assert all(status == 200 for _, (status, _) in results)
    assert all(body["choices"][0]["text"] == want[p] for p, (_, body) in results)
    health = call(server, "/health")[1]
    assert health["max_active_rows"] > 1  # requests shared decode steps ...
    assert health["decode_steps"] - before < 100 * 6  # ... fewer steps than one request at a time
    assert health["max_prefill_rows"] > 1  # and requests that arrived together were prefilled as one batch


@pytest.mark.parametrize(
    "body,param",
    [
        (b'{"prompt": "x", "max_tokens": ', None),  # malformed JSON
        ({"prompt": 5}, "prompt"),  # wrong type
        ({"prompt": "x", "max_tokens": "5"}, "max_tokens"),
        ({"prompt": "x", "bogus": 1}, "bogus"),  # unknown field
        ({"prompt": "x", "max_tokens": -1}, "max_tokens"),
        ({"prompt": "x", "max_tokens": 10**9}, "max_tokens"),
        ({"prompt": "x", "temperature": -0.5}, "temperature"),
        ({"prompt": "x" * 20000}, "prompt"),  # longer than allowed
        ({"messages": []}, None),
        ({"prompt": "x", "top_p": 2}, "top_p"),  # the range hrm.sample refuses too
        ({"prompt": "x", "seed": 2**70}, "seed"),
        ({"prompt": [1, 2, 999]}, "prompt"),  # a token id outside the vocabulary
        ({"prompt": "x", "stop": ""}, "stop"),
        ({"prompt": "x", "logprobs": 21}, "logprobs"),
        ({"prompt": "x", "frequency_penalty": 3}, "frequency_penalty"),
        ({"prompt": "x", "logit_bias": {"999": 1}}, "logit_bias"),
        ({"prompt": "x", "echo": True, "stream": True}, "stream"),
        ({"prompt": "x", "suffix": "y"}, "suffix is not supported"),  # named, not "extra inputs"
    ],
)
def test_bad_requests_get_a_400_with_an_openai_error_and_the_server_keeps_serving(server, body, param):
    path = "/v1/chat/completions" if isinstance(body, dict) and "messages" in body else "/v1/completions"
    status, answer = call(
        server, path, raw=body if isinstance(body, bytes) else None, body=None if isinstance(body, bytes) else body
    )
    assert status == 400 and answer["error"]["type"] == "invalid_request_error" and answer["error"]["message"]
    if param:
        assert param in (answer["error"]["param"] or "") + answer["error"]["message"]
    assert call(server, "/v1/completions", {"prompt": "ok", "max_tokens": 2})[0] == 200


def test_a_missing_api_key_gets_401(server):
    status, answer = call(server, "/v1/completions", {"prompt": "x"}, key=None)
    assert status == 401 and answer["error"]["type"] == "authentication_error"
    assert call(server, "/v1/models", key="wrong")[0] == 401


def test_unknown_models_get_a_404_and_aliases_are_accepted(server):
    status, answer = call(server, "/v1/completions", {"prompt": "x", "model": "gpt-4-nonexistent", "max_tokens": 1})
    assert status == 404 and answer["error"]["code"] == "model_not_found"
    model_id = call(server, "/v1/models")[1]["data"][0]["id"]
    for name in (model_id, str(ROOT / "does-not-matter")):
        status, _ = call(server, "/v1/completions", {"prompt": "x", "model": name, "max_tokens": 1})
        assert status == (200 if name == model_id else 404)
    assert call(server, f"/v1/models/{model_id}")[1]["id"] == model_id
    assert call(server, "/v1/models/nope")[0] == 404


def test_a_real_internal_error_is_a_json_500(model_dir):
    """A bug (not the request's fault) still answers JSON, never starlette's plain-text page."""
    import asyncio

    from hrm.serving.app import Server, create_app

    server = Server(loaded(model_dir), "m")
    server.prompt_ids = lambda prompt: 1 / 0
    app = create_app(server)
    sent, inbox = [], [{"type": "http.request", "body": b'{"prompt": "x"}', "more_body": False}]

    async def receive():
        return inbox.pop(0) if inbox else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/completions",
        "headers": [(b"content-type", b"application/json")],
        "query_string": b"",
        "http_version": "1.1",
        "scheme": "http",
        "server": ("test", 80),
        "client": ("test", 1),
        "root_path": "",
    }
    with pytest.raises(ZeroDivisionError):  # re-raised after the response, so the log has the traceback
        asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 500
    body = json.loads(b"".join(m.get("body", b"") for m in sent[1:]))
    assert body["error"]["type"] == "server_error" and "ZeroDivisionError" in body["error"]["message"]


@pytest.mark.parametrize("port", ["99999", "-1", "0"])
def test_ports_out_of_range_are_one_line_naming_the_flag(model_dir, run_cli, port):
    """The first through ``python -m hrm.serve`` (nothing else on stderr, imports included), the rest in-process."""
    from hrm.serve import main
    from tests.helpers import run_module

    if port == "99999":
        result = run_module("hrm.serve", "--checkpoint", model_dir, "--port", port, check=False, timeout=120)
        code, err = result.returncode, result.stderr
    else:
        code, _, err = run_cli(main, "--checkpoint", model_dir, "--port", port)
    assert code == 2 and err.strip().splitlines() == [f"error: --port must be in [1, 65535], got {port}"]


def test_a_non_streaming_request_whose_client_leaves_is_cancelled(server, model_dir):
    host, port = server.removeprefix("http://").split(":")
    before = call(server, "/health")[1]
    no_eos = {str(loaded(model_dir).tokenizer.eos_id): -100}  # it runs to max_tokens unless cancelled
    body = json.dumps({"prompt": "abandoned", "max_tokens": 4000, "logit_bias": no_eos}).encode()
    with socket.create_connection((host, int(port))) as client:
        client.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        for _ in range(600):  # (a first request with a logit bias compiles its programs)
            if call(server, "/health")[1]["active_rows"]:
                break
            time.sleep(0.1)
    for _ in range(600):  # the client is gone: its row leaves at the next step after the watcher's poll
        health = call(server, "/health")[1]
        if not health["active_rows"]:
            break
        time.sleep(0.1)
    assert health["active_rows"] == 0 and health["cancelled_rows"] == before["cancelled_rows"] + 1
    assert health["decode_steps"] - before["decode_steps"] < 4000


def test_openai_client_logprobs_and_echo_equal_model_logits(server, model_dir):
    """The official openai package: echo scores the prompt's tokens (max_tokens 0), logprobs scores the
    generated ones, both equal to log_softmax(model.logits); token-id prompts and lists of them."""
    import numpy as np

    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server + "/v1", api_key=KEY)
    model = loaded(model_dir)
    prompts = [model.tokenizer.encode("def f(x):"), model.tokenizer.encode("import os")]

    def reference(ids):
        logits = model.logits(ids)[0].astype(np.float64)
        top = logits.max(-1, keepdims=True)
        return logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))

    model_id = client.models.list().data[0].id
    echoed = client.completions.create(model=model_id, prompt=prompts, max_tokens=0, echo=True, logprobs=3)
    for choice, ids in zip(sorted(echoed.choices, key=lambda c: c.index), prompts):
        lp = reference(ids)
        assert choice.text == model.tokenizer.decode(ids)
        assert choice.logprobs.token_logprobs[0] is None and len(choice.logprobs.tokens) == len(ids)
        np.testing.assert_allclose(choice.logprobs.token_logprobs[1:], lp[np.arange(len(ids) - 1), ids[1:]], atol=1e-5)
        for i, top in enumerate(choice.logprobs.top_logprobs[1:]):
            best = np.sort(lp[i])[::-1][:3]
            assert sorted(top.values(), reverse=True)[0] == pytest.approx(best[0], abs=1e-5)
        assert choice.logprobs.text_offset == list(range(len(ids)))  # one byte per token
    generated = client.completions.create(model=model_id, prompt=prompts[0], max_tokens=6, temperature=0, logprobs=1)
    choice = generated.choices[0]
    new = model.generator.generate_ids(model.params, [prompts[0]], 6, temperature=0)[0]
    new = new[: new.index(model.tokenizer.eos_id)] if model.tokenizer.eos_id in new else new
    assert choice.text == model.tokenizer.decode(new)
    lp = reference(prompts[0] + new)
    want = lp[np.arange(len(prompts[0]) - 1, len(prompts[0]) + len(new) - 1), new]
    np.testing.assert_allclose(choice.logprobs.token_logprobs, want, atol=1e-5)
    assert all(
        t == pytest.approx(max(top.values()))
        for t, top in zip(choice.logprobs.token_logprobs, choice.logprobs.top_logprobs)
    )  # greedy
    assert choice.logprobs.text_offset[0] == len("def f(x):")


def test_openai_client_chat_parity(server, model_dir):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server + "/v1", api_key=KEY)
    model_id = client.models.list().data[0].id
    assert client.models.retrieve(model_id).id == model_id
    with pytest.raises(openai.NotFoundError) as error:
        client.completions.create(model="gpt-4-nonexistent", prompt="x", max_tokens=1)
    assert error.value.code == "model_not_found"
    messages = [
        {"role": "developer", "content": [{"type": "text", "text": "be "}, {"type": "text", "text": "brief"}]},
        {"role": "user", "content": "hello"},
    ]
    want = expected(model_dir, dialogue_prompt(["be brief", "hello"]), 5)
    answer = client.chat.completions.create(model=model_id, messages=messages, max_completion_tokens=5, temperature=0)
    assert answer.choices[0].message.content == want
    chunks = list(
        client.chat.completions.create(
            model=model_id,
            messages=messages,
            max_completion_tokens=5,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
    assert all(c.usage is None for c in chunks[:-1])


def test_penalties_and_logit_bias_have_openai_semantics(server, model_dir):
    model = loaded(model_dir)
    token = model.tokenizer.encode("z")[0]
    status, body = call(
        server, "/v1/completions", {"prompt": "a", "max_tokens": 6, "temperature": 0, "logit_bias": {str(token): 100}}
    )
    assert status == 200 and body["choices"][0]["text"] == "z" * 6
    settings = {"frequency_penalty": 2.0, "presence_penalty": 0.5}
    status, body = call(server, "/v1/completions", {"prompt": "a", "max_tokens": 12, "temperature": 0, **settings})
    plain = expected(model_dir, "a", 12)
    penalised = model.generate(["a"], max_new_tokens=12, temperature=0, **settings)[0]
    assert status == 200 and body["choices"][0]["text"] == penalised != plain


def test_tokenize_detokenize_and_tokenizer_info(server, model_dir):
    tokenizer = loaded(model_dir).tokenizer
    assert call(server, "/tokenize", {"prompt": "héllo"})[1]["tokens"] == tokenizer.encode("héllo")
    assert call(server, "/detokenize", {"tokens": tokenizer.encode("héllo")})[1] == {"prompt": "héllo"}
    info = call(server, "/tokenizer_info")[1]
    assert info["eos_token_id"] == tokenizer.eos_id
    assert call(server, "/tokenize", {"prompt": info["eos_token"]})[1]["tokens"] == [tokenizer.eos_id]
    assert call(server, "/detokenize", {"tokens": [10**6]})[0] == 400


@pytest.fixture(scope="module")
def attention_dir(tmp_path_factory):
    """A small byte-level hybrid_pattern model (attention then Mamba) with a KV cache of 256 positions."""
    config = Config(
        name="serve-attention",
        model=MODELS["attention"],
        data=DataConfig(tokenizer="byte", seq_len=32),
    )
    _, params = init_model(config)
    return save_final(config, params, tmp_path_factory.mktemp("attention"))


@pytest.fixture(scope="module")
def attention_server(attention_dir):
    """Warmed up: every program of 4 slots and chunks up to 64 tokens is compiled before it listens."""
    yield from serving(attention_dir, "--max_batch", "4", "--prefill_chunk", "64", "--warmup")


def test_an_attention_model_serves_joins_leaves_grows_its_kv_buffer_and_reuses_slots(attention_server, attention_dir):
    """Ten requests of different prompt and output lengths on 4 slots: rows join and leave mid-batch, slots are
    reused, the KV buffer holds a 150-token prompt (three chunks) + 30 tokens, and every greedy answer is what
    generate gives alone, with no program compiled after the warm-up; a request past the 256-position cache is
    refused up front."""
    work = [("a", 4), ("def f(x):", 40), ("x" * 150, 30), ("import os", 9), ("b", 60)] * 2
    want = {(p, n): expected(attention_dir, p, n) for p, n in set(work)}
    compiles = call(attention_server, "/health")[1]["compiles"]
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        answers = list(
            pool.map(
                lambda w: call(
                    attention_server, "/v1/completions", {"prompt": w[0], "max_tokens": w[1], "temperature": 0}
                ),
                work,
            )
        )
    assert [status for status, _ in answers] == [200] * len(work)
    assert [body["choices"][0]["text"] for _, body in answers] == [want[w] for w in work]
    health = call(attention_server, "/health")[1]
    assert health["max_active_rows"] > 1 and health["active_rows"] == 0
    assert health["compiles"] == compiles  # every shape was in the warmed buckets
    status, answer = call(attention_server, "/v1/completions", {"prompt": "x" * 250, "max_tokens": 10})
    assert status == 400 and "context of 256" in answer["error"]["message"]


def test_an_attention_stream_whose_client_leaves_is_cancelled_and_its_slot_reused(attention_server, attention_dir):
    before = call(attention_server, "/health")[1]["cancelled_rows"]
    request = urllib.request.Request(
        attention_server + "/v1/completions",
        data=json.dumps({"prompt": "long", "max_tokens": 200, "stream": True, "logit_bias": {"256": -100}}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"},
    )
    with urllib.request.urlopen(request, timeout=300) as response:
        assert response.readline().startswith(b"data: ")  # one chunk, then the client goes
    for _ in range(600):
        health = call(attention_server, "/health")[1]
        if health["cancelled_rows"] > before and not health["active_rows"]:
            break
        time.sleep(0.1)
    assert health["cancelled_rows"] == before + 1 and health["active_rows"] == 0
    status, body = call(
        attention_server, "/v1/completions", {"prompt": "def f(x):", "max_tokens": 12, "temperature": 0}
    )
    assert status == 200 and body["choices"][0]["text"] == expected(attention_dir, "def f(x):", 12)


def test_free_slots_are_parked_at_position_zero(attention_dir):
    """A slot whose request left stays at KV position 0, so the batch's cached attention reads only as far as
    its longest live row (not the buffer of a long request that already finished)."""
    import jax
    import numpy as np

    from hrm.decoding import TextStream
    from hrm.inference import Sampling, row_key
    from hrm.models.attention import KVCache
    from hrm.serving.engine import BatchEngine, Row

    model, events = loaded(attention_dir), []
    make = lambda prompt, n: Row(
        model.tokenizer.encode(prompt),
        n,
        Sampling(0.0),
        np.asarray(row_key(0)),
        TextStream(model.tokenizer),
        events.append,
    )
    engine = BatchEngine(model, max_batch=4)
    engine._admit([make("x" * 100, 3), make("a", 40), make("b", 40), make("c", 40)])  # by hand: no decode thread
    for _ in range(10):
        engine._step()
    assert engine.slots[0] is None and all(engine.slots[1:])  # 3 live rows: the 4-slot bucket stays
    kv = next(
        x
        for x in jax.tree.leaves(engine.state.cache, is_leaf=lambda x: isinstance(x, KVCache))
        if isinstance(x, KVCache)
    )
    assert np.asarray(kv.pos).tolist() == [1] + [1 + 10] * 3  # parked (then one step), and the live row's own

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
from hrm.config import Config, DataConfig, ModelConfig
from hrm.data.sources import dialogue_prompt
from hrm.export import save_final
from hrm.training.state import init_model
from tests.helpers import ROOT

pytest.importorskip("fastapi")
KEY = "test-key"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A small byte-level mamba straight from initialisation, as an hrm.export folder."""
    config = Config(
        name="serve",
        model=ModelConfig(d_model=32, n_layers=2, d_state=8, vocab_size=264),
        data=DataConfig(tokenizer="byte", seq_len=32),
    )
    _, params = init_model(config)
    return save_final(config, params, tmp_path_factory.mktemp("final"))


@pytest.fixture(scope="module")
def server(model_dir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hrm.serve",
            "--checkpoint",
            str(model_dir),
            "--port",
            str(port),
            "--api_key",
            KEY,
            "--max_tokens_limit",
            "64",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            urllib.request.urlopen(url + "/health", timeout=1)
            break
        except OSError:
            if process.poll() is not None:
                raise AssertionError(process.stdout.read())
            time.sleep(0.2)
    yield url
    process.terminate()
    process.wait(timeout=30)


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

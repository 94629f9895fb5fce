"""Serving throughput and latency: python scripts/bench_serve.py [--configs tiny,tiny_pattern]
[--clients 1,8,32,100] [--max_tokens 32] [--max_batch 32] [--no-warmup]

For each config, a model straight from initialisation (the weights do not change the cost) is served by
``hrm.serve`` in a subprocess (with its start-up ``--warmup`` unless ``--no-warmup``; the time to its first
answer is printed); at each concurrency C, C clients each send one greedy ``/v1/completions`` request at once
(prompts of 4 to 40 bytes, ``--max_tokens`` new tokens, end-of-text biased off so every request runs to its
length). A first pass at each C runs, then a timed second pass reports generated tokens/s (all clients'
tokens / wall time), the p50 and p95 request latency, and the programs the server built (``/health``'s
``compiles``) during the first and the timed pass.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def serve(folder: Path, max_batch: int, warmup: bool):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "hrm.serve", "--checkpoint", str(folder), "--port", str(port)]
        + ["--max_batch", str(max_batch), "--warmup" if warmup else "--no-warmup"],
        cwd=ROOT,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 3600  # the warm-up compiles every bucket before it listens
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url + "/health", timeout=1)
            return process, url
        except OSError:
            if process.poll() is not None:
                raise SystemExit("the server exited") from None
            time.sleep(0.2)
    raise SystemExit("the server did not start")


def post(url: str, body: dict) -> float:
    start = time.perf_counter()
    request = urllib.request.Request(
        url + "/v1/completions", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=600) as response:
        answer = json.loads(response.read())
    assert answer["usage"]["completion_tokens"] == body["max_tokens"], answer
    return time.perf_counter() - start


def one_pass(url: str, clients: int, max_tokens: int) -> tuple[float, list[float]]:
    bodies = [
        {"prompt": "x" * (4 + 36 * i // max(clients - 1, 1)), "max_tokens": max_tokens, "temperature": 0}
        | {"logit_bias": {"256": -100}}  # the byte tokenizer's end-of-text: every request runs to max_tokens
        for i in range(clients)
    ]
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        latencies = list(pool.map(lambda b: post(url, b), bodies))
    return time.perf_counter() - start, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="tiny,tiny_pattern")
    parser.add_argument("--clients", default="1,8,32,100")
    parser.add_argument("--max_tokens", type=int, default=32)
    parser.add_argument("--max_batch", type=int, default=32)
    parser.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()

    from hrm.config import resolve_config
    from hrm.export import save_final
    from hrm.training.state import init_model

    rows = []
    for name in args.configs.split(","):
        config = resolve_config(importlib.import_module(f"configs.{name}").get_config())
        folder = Path(tempfile.mkdtemp(prefix=f"bench_serve_{name}_"))
        save_final(config, init_model(config)[1], folder)
        start = time.perf_counter()
        process, url = serve(folder, args.max_batch, args.warmup)
        print(f"{name}: the server answered {time.perf_counter() - start:.0f} s after its start", flush=True)
        compiles = lambda: json.loads(urllib.request.urlopen(url + "/health").read())["compiles"]
        try:
            for clients in map(int, args.clients.split(",")):
                before = compiles()
                one_pass(url, clients, args.max_tokens)
                first = compiles() - before
                wall, latencies = one_pass(url, clients, args.max_tokens)
                timed = compiles() - before - first
                row = {
                    "config": name,
                    "clients": clients,
                    "tokens_per_s": clients * args.max_tokens / wall,
                    "p50_s": float(np.percentile(latencies, 50)),
                    "p95_s": float(np.percentile(latencies, 95)),
                    "compiles_first_pass": first,
                    "compiles_timed_pass": timed,
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
        finally:
            process.terminate()
            process.wait(timeout=60)
    print("| config | clients | tokens/s | p50 latency (s) | p95 latency (s) | compiles: first pass | timed pass |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['config']} | {r['clients']} | {r['tokens_per_s']:,.0f} | {r['p50_s']:.2f} | {r['p95_s']:.2f} "
            f"| {r['compiles_first_pass']} | {r['compiles_timed_pass']} |"
        )


if __name__ == "__main__":
    main()

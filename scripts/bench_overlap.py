"""Host/device overlap of the train loop: a data source that takes X ms per batch beside a step that takes about X ms.

CPU dispatch is asynchronous like a GPU's (a jitted call returns before it finishes), so the effect shows here:
a loop that reads the step's outputs every step and prepares the next batch only then runs at about
1 / (data + step); one that prepares batches on a thread ahead of the step and reads the device only at log
steps approaches 1 / max(data, step). In one run, on the same model, batches and source:

- ``serial``: the loop as it was before prefetching (issue 23): next batch, split, put on the device, step,
  ``bool(metrics["skipped"])`` every step;
- ``prefetched``: the same pieces as ``hrm.training.loop`` drives them now (``Prefetcher``, skips counted on
  the device, metrics read every ``log_every`` steps);
- ``hrm.train``: the real ``train()`` with its data source slowed the same way (steps/s from its records,
  compilation excluded).

    python scripts/bench_overlap.py [--config configs/tiny.py] [--batch_size 8] [--steps 40] [--data_ms auto]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hrm.config import load_config_file, resolve_config  # noqa: E402
from hrm.data import split_batch, tokenized_corpus, training_batches  # noqa: E402
from hrm.tokenizer import get_tokenizer  # noqa: E402
from hrm.training import faults, loop  # noqa: E402
from hrm.training.metrics import read_metrics  # noqa: E402
from hrm.training.prefetch import Prefetcher  # noqa: E402


class Slow:
    """A grain iterator that takes ``seconds`` longer per batch (a slow disk, tokenizer or augmentation)."""

    def __init__(self, iterator, seconds: float):
        self.iterator, self.seconds = iterator, seconds

    def __iter__(self):
        return self

    def __next__(self):
        time.sleep(self.seconds)
        return next(self.iterator)

    def get_state(self):
        return self.iterator.get_state()

    def set_state(self, state):
        self.iterator.set_state(state)


def setup(config):
    graphdef, abstract = loop.memory.abstract_train_state(config)
    mesh = loop.data_mesh()
    sharding = loop.state_shardings(abstract, mesh, False)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, sharding)
    step_fn, _ = loop.compile_steps(graphdef, config, abstract, sharding, mesh)
    sharded = loop.NamedSharding(mesh, loop.P("data"))
    to_device = lambda b: {k: jax.device_put(v.astype(loop.memory.BATCH_DTYPES[k]), sharded) for k, v in b.items()}
    return step_fn, lambda: loop.sharded_init(config, sharding)(), to_device


def serial(config, corpus, step_fn, init, to_device, steps, delay):
    state, data = init(), Slow(iter(training_batches(config.data, corpus, config.train.batch_size, 0)), delay)
    state, metrics = step_fn(state, to_device(split_batch(next(data))))
    bool(metrics["skipped"])
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step_fn(state, to_device(split_batch(next(data))))
        bool(metrics["skipped"])
    return steps / (time.perf_counter() - start)


def prefetched(config, corpus, step_fn, init, to_device, steps, delay):
    state = init()
    source = Slow(iter(training_batches(config.data, corpus, config.train.batch_size, 0)), delay)
    batches = Prefetcher(source, lambda raw: to_device(split_batch(raw)))
    bad = faults.BadSteps(config.train.max_bad_steps)
    state, metrics = step_fn(state, next(batches))
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for i in range(1, steps + 1):
        state, metrics = step_fn(state, next(batches))
        bad.count(i, metrics["skipped"])
        if i % config.train.log_every == 0:
            jax.device_get(metrics)
            bad.check(i, lambda: "", print)
    jax.block_until_ready(state)
    batches.close()
    return steps / (time.perf_counter() - start)


def real_train(config, steps, delay):
    real = loop.training_batches

    class SlowDataset:
        def __init__(self, *args):
            self.dataset = real(*args)

        def __iter__(self):
            return Slow(iter(self.dataset), delay)

    loop.training_batches = SlowDataset
    try:
        with tempfile.TemporaryDirectory() as run_dir:
            t = dataclasses.replace(config.train, steps=steps, save_every=10**6, eval_batches=0)
            loop.train(dataclasses.replace(config, train=t), run_dir, log=lambda *_: None)
            records = [r for r in read_metrics(Path(run_dir)) if "loss" in r]
    finally:
        loop.training_batches = real
    first, last = records[0], records[-1]  # log steps: the rate between them, compilation excluded
    return (last["step"] - first["step"]) / (last["seconds"] - first["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "configs/tiny.py"))
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--log_every", type=int, default=10)
    parser.add_argument("--data_ms", default="auto", help="milliseconds per batch; auto: the measured step time")
    args = parser.parse_args()
    config = load_config_file(args.config)
    train = dataclasses.replace(config.train, batch_size=args.batch_size, log_every=args.log_every)
    config = resolve_config(dataclasses.replace(config, train=train))
    corpus = tokenized_corpus(config.data, get_tokenizer(config.data.tokenizer), lambda *_: None)
    step_fn, init, to_device = setup(config)
    no_wait = serial(config, corpus, step_fn, init, to_device, 10, 0.0)
    step_ms = 1000 / no_wait
    data_ms = step_ms if args.data_ms == "auto" else float(args.data_ms)
    delay = data_ms / 1000
    bound = 1000 / max(step_ms, data_ms)
    print(
        f"config {config.name}, batch {args.batch_size} x {config.data.seq_len}, jax {jax.__version__} "
        f"({jax.default_backend()}); step {step_ms:.1f} ms with data at no cost, data source {data_ms:.1f} ms"
    )
    print(f"bound 1/max(data, step) = {bound:.2f} steps/s; 1/(data + step) = {1000 / (step_ms + data_ms):.2f}")
    print("| loop | steps/s | of 1/max(data, step) |")
    print("|---|---|---|")
    for name, run in (
        ("serial (before)", lambda: serial(config, corpus, step_fn, init, to_device, args.steps, delay)),
        ("prefetched (now)", lambda: prefetched(config, corpus, step_fn, init, to_device, args.steps, delay)),
        ("hrm.train (now)", lambda: real_train(config, args.steps, delay)),
    ):
        rate = run()
        print(f"| {name} | {rate:.2f} | {rate / bound:.2f} |", flush=True)


if __name__ == "__main__":
    main()

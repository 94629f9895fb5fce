"""Train-step memory from XLA's compiled analysis: hrm.memtest, accumulation's saving and the --vram choice."""

import json

import pytest

from hrm.cli import run_main
from hrm.config import ConfigError, resolve_config
from hrm.memtest import main as memtest_main
from hrm.training.memory import fit_to_vram, parse_vram, train_step_memory
from tests.helpers import TINY, small_config


def config(**train):
    return resolve_config(small_config(**{"batch_size": 8, **train}))


@pytest.mark.slow
def test_accumulation_keeps_one_micro_batch_of_activations():
    whole = train_step_memory(config())
    quarter = train_step_memory(config(accumulation_steps=4))
    assert (whole.micro_batch_size, quarter.micro_batch_size, quarter.accumulation_steps) == (8, 2, 4)
    assert whole.param_bytes == quarter.param_bytes and whole.optimizer_bytes == 2 * whole.param_bytes + 8
    assert quarter.temp_bytes < 0.5 * whole.temp_bytes


@pytest.mark.slow
def test_vram_choice_takes_the_largest_micro_batch_that_fits():
    c = config()
    sizes = {m: train_step_memory(c, m).total_bytes for m in (1, 2, 4, 8)}
    assert sizes[1] < sizes[2] < sizes[4] < sizes[8]
    chosen, step = fit_to_vram(c, (sizes[2] + sizes[4]) // 2)
    assert (step.micro_batch_size, chosen.train.accumulation_steps, chosen.train.batch_size) == (2, 4, 8)
    with pytest.raises(ConfigError, match=r"small does not fit: .* even at micro-batch 1 .* lower data.seq_len"):
        fit_to_vram(c, sizes[1] // 2)


@pytest.mark.parametrize("text, gib", [("24gb", 24), ("24", 24), ("20.5", 20.5), ("16GiB", 16), ("2048MB", 2)])
def test_vram_sizes_parse_as_the_documents_write_them(text, gib):
    assert parse_vram(text) == int(gib * 2**30)


def test_bad_vram_is_one_line():
    with pytest.raises(ConfigError, match="--vram expects a size such as 24gb"):
        parse_vram("lots")


@pytest.mark.slow
def test_memtest_reports_fit_and_the_largest_micro_batch_as_json(tmp_path, monkeypatch, capsys):
    """python -m hrm.memtest's main, run in-process (a subprocess would add only the interpreter's start-up)."""
    monkeypatch.setenv("HRM_CACHE_DIR", str(tmp_path))
    args = ["--config", str(TINY), "--config.model.d_model=32", "--config.model.n_layers=1", "--seq_len", "64"]

    def memtest(*more):
        run_main(memtest_main, [*args, "--json", *more])
        return capsys.readouterr().out

    fits = json.loads(memtest("--vram", "1gb", "--vram_safety_margin", "0").splitlines()[-1])
    assert fits["fits"] is True and fits["global_batch_size"] == 8 and fits["seq_len"] == 64
    assert {
        "fits",
        "total_bytes",
        "vram_bytes",
        "micro_batch_size",
        "accumulation_steps",
        "global_batch_size",
        "seq_len",
        "param_bytes",
        "optimizer_bytes",
        "temp_bytes",
    } <= set(fits)
    budget_mb = (fits["total_bytes"] * 0.6) / 2**20
    tight = memtest("--vram", f"{budget_mb:.3f}mb", "--vram_safety_margin", "0")
    record = json.loads(tight.splitlines()[-1])
    assert record["fits"] is False and record["largest_fitting_micro_batch"] in (1, 2, 4)
    assert "does NOT fit" in tight and "largest micro-batch that fits" in tight


def test_chunked_cross_entropy_equals_the_whole_and_never_holds_all_logits():
    import jax
    import jax.numpy as jnp
    import optax

    from hrm.training.state import chunked_cross_entropy

    keys = jax.random.split(jax.random.key(0), 4)
    x, head = jax.random.normal(keys[0], (4, 512, 32)), jax.random.normal(keys[1], (32, 1024)) * 0.1
    targets, mask = jax.random.randint(keys[2], (4, 512), 0, 1024), jax.random.bernoulli(keys[3], 0.7, (4, 512))

    def whole(x, head):
        return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(x @ head, targets) * mask)

    def chunked(x, head):
        return chunked_cross_entropy(x, head, targets, mask, chunk_tokens=256)

    assert float(chunked(x, head)) == pytest.approx(float(whole(x, head)), rel=1e-6)
    for a, b in zip(jax.grad(chunked, (0, 1))(x, head), jax.grad(whole, (0, 1))(x, head)):
        assert float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b))) < 1e-5
    logits_bytes = 4 * 512 * 1024 * 4
    temp = lambda f: jax.jit(jax.grad(f, (0, 1))).lower(x, head).compile().memory_analysis().temp_size_in_bytes
    assert temp(whole) >= logits_bytes and temp(chunked) < logits_bytes / 2


def test_vram_auto_on_a_cpu_keeps_the_batch_and_says_why():
    from hrm.training.loop import VramRequest, fit_batch_to_vram

    messages = []
    c = config(accumulation_steps=2)
    assert fit_batch_to_vram(c, VramRequest(), messages.append) is c
    assert messages == [
        "--vram_auto: the cpu backend reports no memory limit; keeping micro-batch 4 x 2 "
        "accumulation (pass --vram to size for a GPU)"
    ]

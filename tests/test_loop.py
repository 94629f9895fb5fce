"""The train loop at GPU scale (hrm/training/loop.py): evaluation in micro-batches inside the memory check, batches
prefetched with an exact data position, skips counted on the device, sharded init and restore, the LM head."""

import grain
import jax
import jax.numpy as jnp
import optax
import pytest

import hrm.training.loop as loop
from hrm.config import resolve_config
from hrm.data import DataError
from hrm.models import FAMILIES, accounting, build_model
from hrm.models.lm import head_logits
from hrm.training.faults import TrainingError
from hrm.training.memory import train_step_memory
from hrm.training.metrics import read_metrics
from hrm.training.optimizer import learning_rate_schedule
from hrm.training.prefetch import Prefetcher
from hrm.training.state import chunked_cross_entropy, loss_chunking
from tests.helpers import poison_gradients, report_on_fake_devices, small_config


def quiet(*_):
    pass


# --- evaluation ---------------------------------------------------------------------------------------------


def test_evaluation_runs_at_the_micro_batch_and_is_in_the_memory_estimate(tmp_path, monkeypatch):
    """A global batch of 8 in 4 micro-batches evaluates 2 rows at a time (8 held-out rows per eval batch of the
    config, as before), and the memory estimate has the evaluation beside the step."""
    seen = []
    real = loop.eval_batches
    monkeypatch.setattr(loop, "eval_batches", lambda *a: seen.append(a[2:]) or real(*a))
    loop.train(small_config(batch_size=8, accumulation_steps=4, eval_batches=2), tmp_path, quiet, stop_at_step=2)
    assert seen == [(2, 8)]
    whole = train_step_memory(resolve_config(small_config(batch_size=8)))
    micro = train_step_memory(resolve_config(small_config(batch_size=8, accumulation_steps=4)))
    assert 0 < micro.eval_temp_bytes < whole.eval_temp_bytes
    assert whole.eval_total_bytes > whole.optimizer_bytes and whole.peak_bytes >= whole.total_bytes


# --- the host never waits for ordinary steps ------------------------------------------------------------------


def test_prefetched_batches_checkpoint_the_position_of_the_last_batch_taken():
    """The thread reads ahead, but the state is that of the last batch a step took: a fresh iterator set to it
    continues with the very next batch; set_state drops what was prefetched."""
    source = lambda: iter(grain.MapDataset.range(100).to_iter_dataset())
    batches = Prefetcher(source(), lambda x: x * 10, depth=4)
    assert [next(batches) for _ in range(3)] == [0, 10, 20]
    position = batches.get_state()
    assert next(batches) == 30  # prefetched further than that by now
    other = Prefetcher(source(), lambda x: x * 10)
    other.set_state(position)
    assert next(other) == 30
    batches.set_state(position)
    assert next(batches) == 30
    batches.close()
    assert next(batches) == 40  # closing puts the iterator back at the last batch taken
    batches.close()
    other.close()


def test_a_failing_data_source_raises_in_the_training_thread():
    def broken():
        yield from range(2)
        raise DataError("disk went away")

    class Source:
        def __init__(self):
            self.it = broken()

        def __next__(self):
            return next(self.it)

        def get_state(self):
            return {}

        def set_state(self, state):
            pass

    batches = Prefetcher(Source(), lambda x: x)
    assert [next(batches), next(batches)] == [0, 1]
    with pytest.raises(DataError, match="disk went away"):
        next(batches)


def test_skipped_steps_are_counted_on_the_device_and_read_at_log_steps(tmp_path, monkeypatch):
    """With log_every=3, the NaN steps 2 and 4 are reported together at the log steps, and counted exactly."""
    poison_gradients(monkeypatch, {2, 4})
    messages = []
    loop.train(small_config(steps=6, save_every=6, log_every=3), tmp_path, messages.append)
    skips = [m for m in messages if "non-finite" in m]
    assert skips == [
        "steps 1-3: non-finite loss or gradient, update skipped (1 this run)",
        "steps 4-6: non-finite loss or gradient, update skipped (2 this run)",
    ]
    assert [r["skipped_steps"] for r in read_metrics(tmp_path) if "loss" in r] == [1, 2]


def test_the_logged_learning_rate_is_the_applied_one_after_a_skipped_step(tmp_path, monkeypatch):
    """A skipped update keeps the optimizer's schedule count, so the update after it uses the same rate."""
    poison_gradients(monkeypatch, {2})
    config = small_config(steps=4, save_every=4, warmup_steps=4)
    loop.train(config, tmp_path, quiet)
    schedule = learning_rate_schedule(resolve_config(config).train)
    lrs = {r["step"]: r["lr"] for r in read_metrics(tmp_path) if "lr" in r}
    expected = {1: schedule(0), 2: schedule(1), 3: schedule(1), 4: schedule(2)}
    assert lrs == pytest.approx({k: float(v) for k, v in expected.items()})


def test_a_run_whose_every_step_was_skipped_fails(tmp_path, monkeypatch):
    poison_gradients(monkeypatch, set(range(1, 100)))
    with pytest.raises(TrainingError, match="every one of the 4 steps of this run had a non-finite loss"):
        loop.train(small_config(steps=4, save_every=4, max_bad_steps=100), tmp_path, quiet)


# --- setup: data first, one compile, sharded init, restore without init -------------------------------------


def test_data_errors_come_before_anything_is_compiled(tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "compile_steps", lambda *a: pytest.fail("compiled before reading the data"))
    config = small_config()
    config.data.data_dir = str(tmp_path / "empty")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError):
        loop.train(config, tmp_path / "run", quiet)
    assert not (tmp_path / "run").exists()


def test_epochs_compile_the_train_step_once(tmp_path, monkeypatch):
    calls = []
    real = loop.compile_steps
    monkeypatch.setattr(loop, "compile_steps", lambda *a: calls.append(1) or real(*a))
    config = small_config(save_every=1000)
    config.train.epochs = 0.01  # about 2,400 steps of the default corpus: the first 2 show the compiles
    loop.train(config, tmp_path, quiet, stop_at_step=2)
    assert len(calls) == 1


def test_setup_builds_one_abstract_model_one_parameter_table_and_compiles_once(tmp_path, monkeypatch):
    """The run plan: the model is built once abstractly (shapes, shardings, the compiled step) and once for real
    (the sharded init); the parameters are counted once (the size check and MFU share it); the train step and
    the evaluation compile once each, with --epochs too. A resume builds only the abstract model."""
    builds, tables, compiles, in_table = [], [], [], []

    class Counted(FAMILIES["mamba"]):  # every model build, abstract or real, constructs its family's class
        def __init__(self, *args, **kwargs):
            if not in_table:
                builds.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setitem(FAMILIES, "mamba", Counted)
    real_table = accounting.full_parameter_table  # parameter_table's shapes-only 1- and 2-layer models

    def table(cfg):
        tables.append(1)
        in_table.append(1)
        try:
            return real_table(cfg)
        finally:
            in_table.clear()

    monkeypatch.setattr(accounting, "full_parameter_table", table)
    real_compile = jax.stages.Lowered.compile
    monkeypatch.setattr(jax.stages.Lowered, "compile", lambda *a, **k: compiles.append(1) or real_compile(*a, **k))
    config = small_config(steps=4, save_every=2)
    config.train.epochs = 0.01
    loop.train(config, tmp_path, quiet, stop_at_step=2)
    assert (len(builds), len(tables), len(compiles)) == (2, 2, 2)
    builds.clear()
    loop.train(config, tmp_path, quiet, stop_at_step=3)
    assert len(builds) == 1


@pytest.mark.parametrize("eval_batches,eval_fraction", [(0, 0.01), (8, 0.0)])
def test_a_run_that_never_evaluates_compiles_no_evaluation(tmp_path, monkeypatch, eval_batches, eval_fraction):
    """train.eval_batches 0, or nothing held out: the plan compiles the train step alone, and the run writes no
    eval record."""
    compiles = []
    real_compile = jax.stages.Lowered.compile
    monkeypatch.setattr(jax.stages.Lowered, "compile", lambda *a, **k: compiles.append(1) or real_compile(*a, **k))
    config = small_config(steps=2, save_every=2, eval_batches=eval_batches)
    config.data.eval_fraction = eval_fraction
    loop.train(config, tmp_path, quiet)
    assert len(compiles) == 1
    assert not [r for r in read_metrics(tmp_path) if "eval_loss" in r]


def test_a_vram_search_keeps_the_step_it_chose_instead_of_compiling_it_again(tmp_path, monkeypatch):
    """--vram where the search measures the run's own program (on a GPU, or here: "auto" takes the Pallas kernel
    for float32 on CPU too): the plan's step is the search's compile at the chosen micro-batch, not a second
    compile of it; a later plan (the estimates cached on disk) compiles the step and the evaluation once."""
    monkeypatch.setenv("HRM_CACHE_DIR", str(tmp_path / "cache"))
    compiles = []
    real_compile = jax.stages.Lowered.compile
    monkeypatch.setattr(jax.stages.Lowered, "compile", lambda *a, **k: compiles.append(1) or real_compile(*a, **k))
    config = resolve_config(small_config())
    corpus = loop.read_corpus(config, quiet)
    plan = loop.plan_run(config, corpus, loop.VramRequest(vram_bytes=2**40), quiet)
    # everything fits: the binary search over micro-batches 1, 2, 4 measures 2 and 4 (step + evaluation)
    assert (plan.micro_batch, len(compiles)) == (4, 4)
    compiles.clear()
    assert loop.plan_run(config, corpus, loop.VramRequest(vram_bytes=2**40), quiet).micro_batch == 4
    assert len(compiles) == 2


def test_a_resume_restores_without_initialising_a_state(tmp_path, monkeypatch):
    loop.train(small_config(save_every=2), tmp_path, quiet, stop_at_step=2)
    monkeypatch.setattr(loop, "init_train_state", lambda *a: pytest.fail("initialised a state to restore into"))
    loop.train(small_config(save_every=2), tmp_path, quiet, stop_at_step=4)
    assert [r["step"] for r in read_metrics(tmp_path) if "loss" in r] == [1, 2, 3, 4]


SHARDED_INIT = """
import json
import jax
from hrm.config import resolve_config
from hrm.training import memory
from hrm.training.loop import data_mesh, sharded_init, state_shardings
from tests.helpers import small_config
config = small_config(shard_params=True)
config.model.d_model = 64
config = resolve_config(config)
_, abstract = memory.abstract_train_state(config)
compiled = sharded_init(config, state_shardings(abstract, data_mesh(), True)).lower().compile()
total = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract))
print(json.dumps({"devices": jax.device_count(), "share": compiled.memory_analysis().output_size_in_bytes / total}))
"""


def test_sharded_init_puts_a_quarter_of_the_state_on_each_of_4_devices():
    report = report_on_fake_devices(SHARDED_INIT)
    assert report["devices"] == 4 and 0.25 <= report["share"] < 0.3  # a few small vectors stay replicated


# --- the LM head -----------------------------------------------------------------------------------------------


def test_a_bf16_head_multiplies_in_bf16_and_accumulates_in_fp32():
    config = resolve_config(small_config())
    config.model.dtype = "bfloat16"
    x, head = jnp.ones((2, 3, 32)), jnp.ones((32, config.model.vocab_size))
    jaxpr = str(jax.make_jaxpr(lambda a, b: head_logits(a, b, config.model))(x, head))
    assert "dot_general" in jaxpr and "preferred_element_type=float32" in jaxpr
    assert "bf16[2,3,32]" in jaxpr and "bf16[32," in jaxpr
    config.model.logits_dtype = "float32"
    assert "bf16" not in str(jax.make_jaxpr(lambda a, b: head_logits(a, b, config.model))(x, head))


def test_the_vocabulary_is_padded_to_128_and_padded_ids_are_never_generated():
    from flax import nnx

    from hrm.inference import Generator

    cfg = resolve_config(small_config()).model
    assert cfg.vocab_size % 128 == 0 and cfg.token_vocab_size < cfg.vocab_size
    model = build_model(cfg, seed=0)
    table = model.embed.embedding[...]
    model.embed.embedding[...] = table.at[cfg.token_vocab_size :].set(5.0)  # padded rows that would win
    graphdef, params = nnx.split(model)
    params = nnx.to_pure_dict(params)
    logits = model(jnp.array([[1, 2, 3]]))[0]
    assert bool(jnp.all(jnp.isneginf(logits[..., cfg.token_vocab_size :])))
    ids = Generator(graphdef).generate_ids(params, [[1, 2, 3], [4]], 64, temperature=1.5, seed=1)
    assert max(max(row) for row in ids) < cfg.token_vocab_size


def test_a_prime_sequence_length_keeps_full_loss_chunks():
    assert loss_chunking(8, 2039) == (16, 128)  # not 2039 chunks of one position
    features = jax.random.normal(jax.random.key(0), (2, 127, 16))
    head = jax.random.normal(jax.random.key(1), (16, 40))
    targets = jax.random.randint(jax.random.key(2), (2, 127), 0, 40)
    mask = jax.random.bernoulli(jax.random.key(3), 0.8, (2, 127))
    whole = jnp.sum(optax.softmax_cross_entropy_with_integer_labels(features @ head, targets) * mask)
    chunked = chunked_cross_entropy(features, head, targets, mask, chunk_tokens=64)
    assert float(chunked) == pytest.approx(float(whole), rel=1e-5)


def test_resolve_config_leaves_the_callers_sections_alone():
    config = small_config()
    config.train.lr = "0.001"  # as a loosely typed source may give it
    resolved = resolve_config(config)
    assert resolved.train.lr == 0.001 and config.train.lr == "0.001"
    assert resolved.data is not config.data and resolved.train is not config.train

"""The documents' command line: JSON configs, --resume, --epochs, shorthands and hints, bad sizes, logs."""

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hrm.cli import UsageError
from hrm.config import Config, ConfigError, load_config_file
from hrm.train import main as train_main
from hrm.train import parse_command_line
from hrm.training.checkpoint import CHECKPOINT_DIR, CheckpointError
from hrm.training.loop import train, training_tokens
from hrm.training.metrics import read_metrics
from hrm.training.resume import resume_point
from tests.helpers import ROOT, TINY, small_config

DOCUMENTS_JSON = {  # seed 002's "Custom config format", verbatim
    "model": {
        "d_model": 512,
        "n_layers": 10,
        "d_state": 16,
        "expand_factor": 2,
        "dropout": 0.1,
        "max_seq_len": 2048,
        "vocab_size": 50257,
    },
    "training": {
        "learning_rate": 3e-4,
        "warmup_steps": 2000,
        "max_steps": 100000,
        "save_steps": 5000,
        "eval_steps": 1000,
    },
    "vram": {"batch_size": 4, "gradient_accumulation_steps": 8, "effective_batch_size": 32},
}


def losses(run_dir):
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir) if "loss" in r]


def test_the_documents_json_config_loads(tmp_path):
    path = tmp_path / "custom.json"
    path.write_text(json.dumps(DOCUMENTS_JSON))
    config = load_config_file(path)
    m, d, t = config.model, config.data, config.train
    assert (config.name, m.d_model, m.n_layers, m.d_state, m.expand, m.dropout, m.vocab_size) == (
        "custom",
        512,
        10,
        16,
        2,
        0.1,
        50257,
    )
    assert (d.seq_len, d.tokenizer) == (2048, "gpt2")
    assert (t.lr, t.warmup_steps, t.steps, t.save_every, t.eval_every) == (3e-4, 2000, 100000, 5000, 1000)
    assert (t.batch_size, t.accumulation_steps) == (32, 8)  # global batch 4 x 8


def test_a_saved_config_json_loads_as_config(tmp_path, run_cli):
    from hrm.info import main as info_main

    config = small_config()
    config.model.dropout = 0.2
    config.save_json(tmp_path / "config.json")
    assert load_config_file(tmp_path / "config.json") == config
    code, out, _ = run_cli(info_main, "--config", tmp_path / "config.json")  # a CLI takes it as --config
    assert code == 0 and "family mamba, d_model 32" in out


@pytest.mark.parametrize(
    "raw,message",
    [
        ({"model": {"d_modle": 4}, "optim": {}}, "unknown keys 'model.d_modle', 'optim'; did you mean model.d_model"),
        (
            {"vram": {"batch_size": 4, "gradient_accumulation_steps": 8, "effective_batch_size": 30}},
            "vram.effective_batch_size (30) must equal vram.batch_size x vram.gradient_accumulation_steps",
        ),
        ({"model": {"d_model": "wide"}}, "config key 'model.d_model' expects int, got 'wide'"),
        ([1, 2], "must hold a JSON object"),
    ],
)
def test_bad_json_configs_are_one_line(tmp_path, raw, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config_file(path)


def test_config_file_errors_say_what_they_got(tmp_path, run_cli):
    raising = tmp_path / "raising.py"
    raising.write_text("def get_config():\n    return {}['model']\n")
    (tmp_path / "data_folder").mkdir()
    for args, expected in [
        (["--config", raising], f"get_config() in config file '{raising}' failed: KeyError"),
        (["--config", tmp_path], f"--config '{tmp_path}' is a folder"),
        (
            ["--config", "configs/tiny.py", "--data_path", tmp_path / "data_folder"],
            "is a folder; pass a dialogue JSONL file, or the folder as --data_dir",
        ),
    ]:
        code, _, err = run_cli(train_main, *args, "--output_dir", tmp_path / "run")
        lines = err.strip().splitlines()
        assert code == 2 and "Traceback" not in err, err
        assert expected in lines[-1], lines


def test_shorthands_and_the_documents_flag_names():
    config, args = parse_command_line(
        [
            "--config",
            "configs/tiny.py",
            "--learning_rate",
            "1e-3",
            "--max_seq_len",
            "64",
            "--epochs",
            "2",
            "--batch_size",
            "16",
            "--accumulation_steps",
            "4",
        ]
    )
    assert (config.train.lr, config.data.seq_len, config.train.epochs) == (1e-3, 64, 2.0)
    assert (config.train.batch_size, config.train.accumulation_steps) == (16, 4)
    for flag, hint in [
        ("--n_blocks", "--config.model.n_layers"),
        ("--max_grad_norm", "--config.train.grad_clip"),
        ("--checkpoint_dir", "--output_dir"),
        ("--resume_from", "--resume"),
        ("--use_checkpointing", "--config.model.remat=block"),
    ]:
        with pytest.raises(UsageError, match=f"unrecognized argument '{flag}'; did you mean {hint}"):
            parse_command_line(["--config", "configs/tiny.py", flag, "3"])


def test_help_shows_overrides_resuming_and_an_example_per_data_source(run_cli):
    code, text, _ = run_cli(train_main, "--help")
    assert code == 0
    for expected in [
        "--config.section.key=value",
        "resumes",
        "--data_dir",
        "--data_path",
        "--dataset",
        "--resume",
        "--epochs",
        "--learning_rate",
        "--max_seq_len",
        "train_background.sh",
    ]:
        assert expected in text, expected


@pytest.mark.slow
def test_resume_from_a_path_into_a_new_directory_continues_exactly(tmp_path):
    config = small_config(steps=8, save_every=4)
    train(config, tmp_path / "straight", log=lambda *_: None)
    train(config, tmp_path / "first", log=lambda *_: None, stop_at_step=6)  # checkpoints 4 and 6
    messages = []
    train(config, tmp_path / "from_step", log=messages.append, resume_from=tmp_path / "first" / CHECKPOINT_DIR / "4")
    assert any(m.startswith("resumed from") and m.endswith(f"/4 into {tmp_path / 'from_step'}") for m in messages)
    assert losses(tmp_path / "from_step") == [x for x in losses(tmp_path / "straight") if x[0] > 4]
    train(config, tmp_path / "from_dir", log=lambda *_: None, resume_from=tmp_path / "first")  # its latest: 6
    assert losses(tmp_path / "from_dir") == [x for x in losses(tmp_path / "straight") if x[0] > 6]


@pytest.mark.slow
def test_resume_points_and_settings(tmp_path):
    config = small_config(save_every=2)
    train(config, tmp_path / "a", log=lambda *_: None, stop_at_step=4)
    assert resume_point(tmp_path / "a") == (tmp_path / "a", 4)
    assert resume_point(tmp_path / "a" / CHECKPOINT_DIR / "2") == (tmp_path / "a", 2)
    assert resume_point(tmp_path / "a" / "step_2") == (tmp_path / "a", 2)  # the documents' spelling
    for bad, message in [
        (tmp_path / "a" / CHECKPOINT_DIR / "3", "has no checkpoint at step 3; available steps: 2, 4"),
        (tmp_path / "nowhere", "does not exist"),
    ]:
        with pytest.raises(CheckpointError, match=message):
            resume_point(bad)
    # a new preset and overrides apply; the model, tokenizer and row length stay the resumed run's
    resumed, _ = parse_command_line(
        ["--config", "configs/tiny.py", "--training_preset", "careful", "--config.train.warmup_steps=7"]
        + ["--resume", str(tmp_path / "a")]
    )
    assert resumed.model == Config.load_json(tmp_path / "a" / "config.json").model
    assert (resumed.train.steps, resumed.train.lr, resumed.train.warmup_steps, resumed.data.seq_len) == (
        200_000,
        1e-4,
        7,
        32,
    )


@pytest.mark.slow
def test_epochs_set_the_steps_from_the_training_tokens(tmp_path):
    data = tmp_path / "texts"
    data.mkdir()
    for i in range(40):
        (data / f"{i}.txt").write_text(f"document {i} " * 20)
    config = small_config(epochs=0.5, log_every=1, save_every=100)
    config.data.data_dir = str(data)
    config.data.eval_fraction = 0.0
    messages = []
    records = train(config, tmp_path / "run", log=messages.append)
    from hrm.data import tokenized_corpus
    from hrm.tokenizer import get_tokenizer

    tokens = training_tokens(config.data, tokenized_corpus(config.data, get_tokenizer("byte"), lambda *_: None))
    steps = math.ceil(0.5 * tokens / (4 * 33))
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["steps"] == steps
    assert [r["step"] for r in records] == list(range(1, steps + 1))
    assert records[-1]["epoch"] == pytest.approx(steps * 4 * 33 / tokens) and 0.5 <= records[-1]["epoch"] < 0.6
    assert any(m.startswith(f"epochs: 0.5 x {tokens:,} tokens") for m in messages)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["--config.model.d_model=1000000"], "parameters: their weights, gradients and AdamW moments need"),
        (["--config.model.n_layers=10000"], "parameters: their weights, gradients and AdamW moments need"),
        pytest.param(  # a 1-layer, 32-wide model: its step needs ~500 GB, still far over the host, and compiles fast
            ["--config.data.seq_len=10000000", "--config.model.d_model=32", "--config.model.n_layers=1"],
            "does not fit: its train step needs",
            marks=pytest.mark.slow,
        ),
    ],
)
def test_impossible_sizes_are_one_line_before_anything_is_allocated(tmp_path, run_cli, overrides, message):
    started = time.time()
    code, _, err = run_cli(train_main, "--config", TINY, *overrides, "--output_dir", tmp_path)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and message in lines[0], err
    assert not (tmp_path / CHECKPOINT_DIR).exists() and time.time() - started < 300


@pytest.mark.slow
def test_train_background_starts_detached_logs_and_stops(tmp_path):
    env = {**os.environ, "HRM_LOG_DIR": str(tmp_path / "logs"), "JAX_PLATFORMS": "cpu"}
    run_dir = tmp_path / "bg_run"
    started = subprocess.run(
        [
            "bash",
            ROOT / "scripts/train_background.sh",
            "--config",
            "configs/tiny.py",
            "--config.model.d_model=32",
            "--config.model.n_layers=1",
            "--config.data.seq_len=32",
            "--config.train.steps=100000",
            "--config.train.log_every=1",
            "--output_dir",
            run_dir,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode == 0, started.stderr
    (pid_file,) = (tmp_path / "logs").glob("training_bg_run_*.pid")
    log_file = pid_file.with_suffix(".log")
    assert f"tail -f {log_file}" in started.stdout and f"--stop {pid_file}" in started.stdout
    pid = int(pid_file.read_text())
    try:
        deadline = time.time() + 60  # the script returns as soon as it forks; setsid runs in the child
        while time.time() < deadline and os.getpgid(pid) != pid:
            time.sleep(0.05)
        assert os.getpgid(pid) == pid  # its own process group (setsid)
        deadline = time.time() + 300
        while time.time() < deadline and "step 2 " not in log_file.read_text():
            time.sleep(0.5)
        assert "step 2 " in log_file.read_text(), log_file.read_text()
        assert "step 2 " in (run_dir / "train.log").read_text()  # hrm.train's own log in the run directory
        stopped = subprocess.run(
            ["bash", ROOT / "scripts/train_background.sh", "--stop", pid_file],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=90,
        )
    finally:  # a failed check must not leave a 100000-step trainer running detached for the rest of the suite
        if pid_file.exists():
            subprocess.run(["kill", "-KILL", "--", f"-{pid}", str(pid)], capture_output=True)
    assert stopped.returncode == 0 and f"stopped training process {pid}" in stopped.stdout, stopped
    assert not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] == "Z"
    assert not pid_file.exists()


def test_an_unreadable_data_file_is_skipped_and_counted(tmp_path, monkeypatch):
    from hrm.data.sources import Skipped, read_text

    secret = tmp_path / "secret.txt"
    secret.write_text("text")
    secret.chmod(0)
    if os.access(secret, os.R_OK):  # root reads anything: make the read fail as it would for a user
        real = Path.read_bytes
        monkeypatch.setattr(
            Path,
            "read_bytes",
            lambda p: (_ for _ in ()).throw(PermissionError(13, "denied")) if p == secret else real(p),
        )
    skipped = Skipped()
    assert read_text(secret, skipped) is None
    assert skipped.summary() == "skipped 1 unreadable files (e.g. secret.txt)"


@pytest.mark.parametrize("name", ["tiny", "tiny_hybrid", "tiny_recursive", "tiny_pattern"])
def test_the_size_check_counts_parameters_exactly(name):
    """parameter_table extrapolates from 1- and 2-layer shapes; it equals tracing every layer."""
    from hrm.config import resolve_config
    from hrm.models.accounting import full_parameter_table, parameter_table

    model = resolve_config(load_config_file(ROOT / "configs" / f"{name}.py")).model
    assert parameter_table(model) == full_parameter_table(model)


@pytest.mark.parametrize(
    "override,message",
    [
        ("--config.train.grad_clip=-1", "config key 'train.grad_clip' must be >= 0 (0 = no clipping), got -1.0"),
        ("--config.model.d_model=1000000", "parameters: their weights, gradients and AdamW moments need"),
    ],
)
def test_a_refused_config_leaves_no_run_directory(tmp_path, run_cli, override, message):
    """Refused by validation (before the log opens) or by the size check (after): no --output_dir is left."""
    run_dir = tmp_path / "new_run"
    code, _, err = run_cli(train_main, "--config", TINY, override, "--output_dir", run_dir)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and message in lines[0], err
    assert not run_dir.exists()


def test_epochs_must_be_a_positive_number_of_passes():
    for value in ("0", "-1", "nan"):
        with pytest.raises(UsageError, match="--epochs must be a positive number of passes"):
            parse_command_line(["--config", "configs/tiny.py", "--epochs", value])
    config, _ = parse_command_line(["--config", "configs/tiny.py", "--epochs", "0.5"])
    assert config.train.epochs == 0.5


def test_an_unwritable_run_directory_is_one_line(tmp_path):
    """The log cannot be opened (a read-only disk, or as here, as root: train.log is a folder)."""
    from hrm.train import log_to_file

    (tmp_path / "train.log").mkdir()
    with pytest.raises(UsageError, match=r"cannot write the training log '.*train.log' \(.+\); pass a writable"):
        log_to_file(tmp_path, [])


def test_a_console_pipe_that_closes_leaves_the_run_logging_to_its_file(tmp_path, monkeypatch):
    """``python -m hrm.train ... | head``: once head exits, writing the console raises BrokenPipeError; the run
    must go on (it would otherwise die between checkpoints), its log file complete."""
    import io

    from hrm.train import log_to_file

    read, write = os.pipe()
    console = io.TextIOWrapper(os.fdopen(write, "wb"), line_buffering=True)
    monkeypatch.setattr("sys.stdout", console)
    log = log_to_file(tmp_path, ["--config", "x"])
    print("step 1")
    os.close(read)  # the reader went away
    print("step 2")
    print("step 3")
    sys.stdout.flush()
    assert log.read_text().splitlines()[1:] == ["step 1", "step 2", "step 3"]
    console.write("after")  # the console's descriptor now points at /dev/null: the exit's flush cannot fail
    console.flush()


def test_export_out_pointing_at_a_file_is_one_line(tmp_path):
    from hrm import export

    target = tmp_path / "weights.bin"
    target.write_bytes(b"x")
    with pytest.raises(UsageError, match=r"--out '.*weights.bin' is a file; pass a folder"):
        export.main(["--checkpoint", str(tmp_path), "--out", str(target)])
    assert target.read_bytes() == b"x"


def test_train_background_reports_a_trainer_that_cannot_start(tmp_path):
    """An interpreter without jax (a venv not activated): the script says it failed, with the log's last line;
    without PYTHON it picks an interpreter on PATH that imports hrm, past one that cannot."""
    subprocess.run(["python", "-m", "venv", "--without-pip", tmp_path / "bare"], check=True, timeout=120)
    bare = tmp_path / "bare" / "bin"
    env = {**os.environ, "HRM_LOG_DIR": str(tmp_path / "logs"), "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    script = ["bash", ROOT / "scripts/train_background.sh", "--config", "configs/tiny.py"]
    failed = subprocess.run(
        [*script, "--output_dir", tmp_path / "run"],
        cwd=ROOT,
        env={**env, "PYTHON": str(bare / "python")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert failed.returncode == 1 and "training started" not in failed.stdout, failed
    assert "error: training failed to start (exit code 1" in failed.stderr
    assert "ModuleNotFoundError: No module named 'jax'" in failed.stderr and not list((tmp_path / "logs").glob("*.pid"))
    chosen = subprocess.run(
        ["bash", ROOT / "scripts/train_background.sh", "--config", "configs/missing.py"],
        cwd=ROOT,
        env={**env, "PATH": f"{bare}:{env['PATH']}", "HRM_START_WAIT": "60"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert chosen.returncode == 1 and str(bare) not in chosen.stderr, chosen  # the bare venv's python was passed
    assert "config file 'configs/missing.py' not found" in chosen.stderr  # ...for one that runs hrm.train

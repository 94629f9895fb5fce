"""Small configs and subprocess helpers shared by the tests."""

import os
import subprocess
import sys
from pathlib import Path

from hrm.config import Config, DataConfig, ModelConfig, TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def small_config(**train) -> Config:
    """A model small enough that a few steps take well under a second on CPU."""
    return Config(
        name="small",
        model=ModelConfig(d_model=32, n_layers=2, d_state=8),
        data=DataConfig(seq_len=32, num_threads=1),
        train=TrainConfig(
            **{
                "steps": 8,
                "batch_size": 4,
                "lr": 3e-3,
                "warmup_steps": 2,
                "save_every": 4,
                "log_every": 1,
                "seed": 3,
                **train,
            }
        ),
    )


def run_module(module: str, *args, check=True, timeout=600, **popen) -> subprocess.CompletedProcess:
    """``python -m module args`` from the repository root; returns the completed process."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **popen,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{module} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result

"""scripts/gpu_acceptance.sh --dry-run: every step's command resolves on a machine without a GPU."""

import os
import subprocess

import pytest

from tests.helpers import ROOT

SCRIPT = ROOT / "scripts" / "gpu_acceptance.sh"


def _dry_run(tmp_path, **env):
    return subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", "--out", str(tmp_path / "acceptance")],
        cwd=ROOT,
        env={**os.environ, "JAX_PLATFORMS": "cpu", **env},
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_dry_run_resolves_every_step_within_eight_minutes(tmp_path):
    result = _dry_run(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    steps = [line.split(":")[0].split(" (")[0].strip() for line in lines if line.startswith("  ok")]
    assert steps == [
        "ok   doctor",
        "ok   gpu and kernel tests",
        "ok   bench scan",
        "ok   memtest hybrid_small",
        "ok   memtest mamba_small",
        "ok   train hybrid_small",
        "ok   train mamba_small",
    ]
    assert "--lengths 2048 8192 --channels 2048 --state 16 --backends pallas chunked sequential" in result.stdout
    limit = next(line for line in lines if line.startswith("time limits sum to"))
    assert int(limit.split()[4]) <= 480 and lines[-1] == "PASS"
    assert not (tmp_path / "acceptance").exists()  # nothing ran


def test_dry_run_fails_naming_the_step_whose_command_does_not_resolve(tmp_path):
    """A Python that cannot import hrm: every step fails and the run says so (exit 1)."""
    result = _dry_run(tmp_path, PYTHON="python -I -S")
    assert result.returncode == 1
    assert "  FAIL doctor:" in result.stdout and result.stdout.splitlines()[-1] == "FAIL"


def test_unknown_argument_is_one_line_error():
    result = subprocess.run(["bash", str(SCRIPT), "--fast"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: unknown argument --fast; usage: scripts/gpu_acceptance.sh [--out DIR] [--dry-run]"
    )

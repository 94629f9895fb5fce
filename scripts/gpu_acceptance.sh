#!/usr/bin/env bash
# One-command GPU acceptance run: what a user's first GPU session checks and measures, in one Markdown report.
#
#   scripts/gpu_acceptance.sh [--out DIR] [--dry-run]
#
# In order: python -m hrm.doctor; the gpu-marked tests and the kernel tests compiled (JAX_PLATFORMS=cuda);
# scripts/bench_scan.py at B=8, L in {2048, 8192}, D=2048, N=16 for pallas / chunked / sequential (and
# mamba-ssm's CUDA kernel when importable); 30 training steps of hybrid_small and mamba_small (byte tokens,
# the embedded corpus: no network) with tokens/s, MFU and peak_mem_gb next to hrm.memtest's prediction.
# Each step has its own time limit (they sum to 8 minutes); a failing or timed-out step is reported and the
# run goes on.  Needs the machine's jax with its CUDA plugin (README "GPU") and `pip install -e .`.
# The report is DIR/gpu_acceptance.md (default DIR: runs/gpu_acceptance); paste it into docs/BENCHMARKS.md.
#
# --dry-run (any machine, no GPU needed): check that every step's command resolves — the modules import,
# the scripts and configs exist, the flags parse, pytest collects the tests — without running the steps.
set -uo pipefail

cd "$(dirname "$0")/.."
OUT=runs/gpu_acceptance
DRY=0
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT="$2"; shift 2 ;;
        --dry-run) DRY=1; shift ;;
        -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "error: unknown argument $1; usage: scripts/gpu_acceptance.sh [--out DIR] [--dry-run]" >&2; exit 2 ;;
    esac
done
PY=${PYTHON:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
REPORT="$OUT/gpu_acceptance.md"
STEPS=30
TRAIN_ARGS="--tokenizer byte --config.train.steps=$STEPS --config.train.log_every=10 --config.train.warmup_steps=5"
TRAIN_ARGS="$TRAIN_ARGS --config.train.save_every=1000 --config.train.eval_batches=1"
FAILED=0

# name | time limit (s) | command
step_list() {
    cat <<EOF
doctor|60|$PY -m hrm.doctor
gpu and kernel tests|150|env JAX_PLATFORMS=cuda $PY -m pytest -q -p no:cacheprovider -n 0 -m "gpu or not slow" tests/test_pallas_scan.py tests/test_kernels.py tests/test_doctor.py::test_tiny_training_run_on_gpu
bench scan|90|$PY scripts/bench_scan.py --batch 8 --lengths 2048 8192 --channels 2048 --state 16 --backends pallas chunked sequential --iters 5 --warmup 1
memtest hybrid_small|20|$PY -m hrm.memtest --config configs/hybrid_small.py --json
memtest mamba_small|20|$PY -m hrm.memtest --config configs/mamba_small.py --json
train hybrid_small|70|$PY -m hrm.train --config configs/hybrid_small.py --output_dir $OUT/hybrid_small $TRAIN_ARGS
train mamba_small|70|$PY -m hrm.train --config configs/mamba_small.py --output_dir $OUT/mamba_small $TRAIN_ARGS
EOF
}

# The command a step's line stands for, checked without running it: its module or script resolves and its
# flags parse (argparse --help as `python -m X --help` or `python SCRIPT --help` runs it, the config file loads,
# --collect-only for pytest). The Python steps are checked in one process (each of their own would spend seconds
# importing jax), each step apart: a step whose check raises or exits non-zero fails with its error's last lines.
# Writes DIR/N.ok for each step N (from 1) that resolves, else DIR/N.err.
read -r -d '' DRY_CHECK <<'PYEOF'
import contextlib, io, runpy, shlex, sys, traceback
from pathlib import Path

checks = Path(sys.argv[1])


def run_help(argv0, run):
    sys.argv = [argv0, "--help"]
    try:
        run()
    except SystemExit as exit:
        if exit.code not in (0, None):
            raise


def check(name, words):
    if name == "doctor" or name.startswith("memtest"):
        module = words[words.index("-m") + 1]
        run_help(module, lambda: runpy.run_module(module, run_name="__main__", alter_sys=True))
    if name.startswith("memtest"):
        from hrm.config import load_config_file

        load_config_file(words[words.index("--config") + 1])
    elif name == "bench scan":
        script = next(word for word in words if word.endswith(".py"))
        run_help(script, lambda: runpy.run_path(script, run_name="__main__"))
        sys.path.insert(0, str(Path(script).parent))
        import bench_scan

        bench_scan.parse_args(words[words.index(script) + 1 :])
    elif name.startswith("train"):
        from hrm.config import resolve_config
        from hrm.train import parse_command_line

        resolve_config(parse_command_line(words[words.index("hrm.train") + 1 :])[0])


for number, line in enumerate(Path(checks, "steps").read_text().splitlines(), 1):
    name, _, cmd = line.split("|", 2)
    if "tests" in name:
        continue  # pytest's collection: in its own process, by the caller
    output = io.StringIO()
    try:
        with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
            check(name, shlex.split(cmd))
    except BaseException as error:
        detail = f"exit {error.code}\n" if isinstance(error, SystemExit) else traceback.format_exc()
        Path(checks, f"{number}.err").write_text(output.getvalue()[-2000:] + detail)
    else:
        Path(checks, f"{number}.ok").touch()
    finally:
        sys.argv = sys.argv[:1]
PYEOF

if [ "$DRY" = 1 ]; then
    echo "gpu_acceptance dry run: each step's command, resolved but not run"
    checks=$(mktemp -d)
    step_list >"$checks/steps"
    $PY -c "$DRY_CHECK" "$checks" >"$checks/checker.log" 2>&1
    total=0
    number=0
    while IFS='|' read -r name limit cmd; do
        number=$((number + 1))
        total=$((total + limit))
        case "$name" in
            *tests*) c=${cmd/env JAX_PLATFORMS=cuda /}
                bash -c "${c/-q /-q --collect-only }" >/dev/null 2>"$checks/$number.err" && touch "$checks/$number.ok" ;;
        esac
        if [ -e "$checks/$number.ok" ]; then
            echo "  ok   $name (${limit} s): $cmd"
        else
            echo "  FAIL $name: $cmd"; FAILED=1
            # the step's own error, or the checker's when it did not get to the step
            tail -5 "$([ -e "$checks/$number.err" ] && echo "$checks/$number.err" || echo "$checks/checker.log")" | sed 's/^/       /'
        fi
    done <"$checks/steps"
    rm -rf "$checks"
    echo "time limits sum to ${total} s"
    [ "$total" -le 480 ] || { echo "FAIL: the steps' limits exceed 8 minutes"; FAILED=1; }
    [ "$FAILED" = 0 ] && echo "PASS" || echo "FAIL"
    exit "$FAILED"
fi

mkdir -p "$OUT"
{
    echo "# GPU acceptance run ($(date -u +%Y-%m-%dT%H:%MZ))"
    echo
    echo "Machine: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1 || echo 'nvidia-smi not found');" \
        "$($PY -c 'import jax, jaxlib, platform; print(f"Python {platform.python_version()}, jax {jax.__version__}, jaxlib {jaxlib.__version__}, devices {jax.devices()}")' 2>&1 | tail -1)"
    echo "Command: \`scripts/gpu_acceptance.sh\` (git $(git rev-parse --short HEAD 2>/dev/null || echo '?'))"
    echo
    echo "| step | result | seconds |"
    echo "|---|---|---|"
} >"$REPORT.head"
: >"$REPORT.body"

while IFS='|' read -r name limit cmd; do
    log="$OUT/$(echo "$name" | tr ' ' '_').log"
    echo "== $name (limit ${limit} s): $cmd"
    start=$(date +%s)
    timeout --kill-after=10 "$limit" bash -c "$cmd" >"$log" 2>&1
    rc=$?
    secs=$(($(date +%s) - start))
    case $rc in
        0) result=pass ;;
        124|137) result="TIMEOUT after ${limit} s"; FAILED=1 ;;
        *) result="FAIL (exit $rc)"; FAILED=1 ;;
    esac
    echo "   $result in ${secs} s (log: $log)"
    echo "| $name | $result | $secs |" >>"$REPORT.head"
    {
        echo
        echo "## $name: $result"
        echo
        echo "\`$cmd\`"
        echo
        echo '```'
        case "$name" in
            "bench scan") grep -E '^(#|\|)' "$log" | head -80 ;;
            train*) grep -E 'selective scan backend|warning|error|step +[0-9]+' "$log" | tail -8 ;;
            *) tail -25 "$log" ;;
        esac
        echo '```'
    } >>"$REPORT.body"
done < <(step_list)

# Training: the last logged record of each run next to memtest's compiled prediction.
$PY - "$OUT" >>"$REPORT.body" 2>&1 <<'PYEOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
print("\n## Training: measured vs predicted\n")
print("| config | tokens/s | MFU | peak_mem_gb (measured) | memtest prediction (GiB) | scan backend |")
print("|---|---|---|---|---|---|")
for name in ("hybrid_small", "mamba_small"):
    records = []
    path = out / name / "metrics.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    last = next((r for r in reversed(records) if "tokens_per_sec" in r), {})
    predicted = "n/a"
    memtest = out / f"memtest_{name}.log"
    for line in memtest.read_text().splitlines() if memtest.exists() else []:
        if line.startswith("{"):
            try:
                result = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(result.get("total_bytes"), (int, float)):
                predicted = f"{result['total_bytes'] / 2**30:.2f}"
    train_log = out / f"train_{name}.log"
    backend = next(
        (l.split("selective scan backend: ", 1)[1].split(":")[0] for l in train_log.read_text().splitlines()
         if "selective scan backend: " in l), "?") if train_log.exists() else "?"
    fmt = lambda key, spec: format(last[key], spec) if key in last else "n/a"
    print(f"| {name} | {fmt('tokens_per_sec', ',.0f')} | {fmt('mfu', '.1%')} | {fmt('peak_mem_gb', '.2f')} | {predicted} | {backend} |")
PYEOF

{
    cat "$REPORT.head"
    echo
    echo "Overall: $([ "$FAILED" = 0 ] && echo PASS || echo FAIL)"
    cat "$REPORT.body"
} >"$REPORT"
rm -f "$REPORT.head" "$REPORT.body"
echo "report: $REPORT ($([ "$FAILED" = 0 ] && echo PASS || echo FAIL))"
exit "$FAILED"

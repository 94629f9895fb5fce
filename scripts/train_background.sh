#!/usr/bin/env bash
# Start `python -m hrm.train` detached from the terminal (setsid + nohup: it survives logout and SSH drops).
#
#   scripts/train_background.sh [the flags of python -m hrm.train]    start; prints how to follow and stop it
#   scripts/train_background.sh --stop PID_FILE                        stop it (SIGTERM to its process group)
#
# Writes logs/training_<run>_<timestamp>.log (the console output) and logs/training_<run>_<timestamp>.pid
# ($HRM_LOG_DIR instead of logs/), where <run> is the --output_dir's name, else the --model_size or --config
# name. The run directory also gets its own train.log (hrm.train writes it). Re-running the same command
# resumes the run from its latest checkpoint. PYTHON selects the interpreter; by default the one hrm is installed
# in: the hrm-train console script's, else the first python3 or python on PATH that imports hrm and jax. A trainer
# that is gone $HRM_START_WAIT seconds (default 3) after the start is reported as failed, with its log's last line.
set -euo pipefail

log_dir="${HRM_LOG_DIR:-logs}"

alive() {   # running, not a zombie awaiting its reaper
    kill -0 "$1" 2>/dev/null && [[ "$(ps -o stat= -p "$1" 2>/dev/null)" != Z* ]]
}

if [[ "${1:-}" == "--stop" ]]; then
    pid_file="${2:?usage: $0 --stop PID_FILE}"
    [[ -f "$pid_file" ]] || { echo "error: no PID file '$pid_file'" >&2; exit 2; }
    pid="$(cat "$pid_file")"
    if ! alive "$pid"; then
        echo "training process $pid is not running (finished or stopped); removing $pid_file"
        rm -f "$pid_file"
        exit 0
    fi
    kill -TERM -- "-$pid"   # the whole process group: setsid made the trainer its leader
    for _ in $(seq 1 600); do
        alive "$pid" || { echo "stopped training process $pid"; rm -f "$pid_file"; exit 0; }
        sleep 0.1
    done
    echo "error: process $pid still runs 60 s after SIGTERM; kill -KILL -- -$pid ends it" >&2
    exit 1
fi

[[ $# -gt 0 ]] || { echo "usage: $0 [python -m hrm.train flags] | --stop PID_FILE (see python -m hrm.train --help)" >&2
                    exit 2; }

out="" name=""
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[$i]}" in
        --output_dir) out="${args[$((i + 1))]:-}" ;;
        --output_dir=*) out="${args[$i]#*=}" ;;
        --model_size | --config) name="$(basename "${args[$((i + 1))]:-}")" ;;
        --model_size=* | --config=*) name="$(basename "${args[$i]#*=}")" ;;
    esac
done
name="${name%.*}"
run="${out:+$(basename "$out")}"
run="${run:-${name:-run}}"
stamp="$(date +%Y%m%d_%H%M%S)"
mkdir -p "$log_dir"
log_file="$log_dir/training_${run}_${stamp}.log"
pid_file="$log_dir/training_${run}_${stamp}.pid"

imports_hrm() {   # the interpreter can import hrm and its heavy dependency (a venv that is not activated cannot)
    "$1" -c 'import importlib.util as u, sys; sys.exit(not (u.find_spec("hrm") and u.find_spec("jax")))' \
        2>/dev/null
}

python_with_hrm() {
    local script candidate
    if script="$(command -v hrm-train 2>/dev/null)"; then
        candidate="$(head -n 1 "$script" | sed -n 's/^#![[:space:]]*//p' | awk '{print $1}')"
        [[ -n "$candidate" && -x "$candidate" ]] && imports_hrm "$candidate" && { echo "$candidate"; return; }
    fi
    for candidate in $(type -ap python3 python); do
        imports_hrm "$candidate" && { echo "$candidate"; return; }
    done
    return 1
}

if [[ -n "${PYTHON:-}" ]]; then
    py="$PYTHON"
elif ! py="$(python_with_hrm)"; then
    echo "error: no python on PATH imports hrm and jax; activate hrm's environment or pass PYTHON=/path/to/python" >&2
    exit 2
fi

# setsid: a new session and process group, so the trainer outlives this shell and --stop can signal the group.
PYTHONUNBUFFERED=1 setsid nohup "$py" -m hrm.train "$@" >"$log_file" 2>&1 </dev/null &
pid=$!
echo "$pid" >"$pid_file"

# A trainer that cannot start (wrong interpreter, bad flags) is gone within moments: say so, not "started".
for _ in $(seq 1 "$((${HRM_START_WAIT:-3} * 10))"); do
    alive "$pid" || break
    sleep 0.1
done
if ! alive "$pid"; then
    code=0
    wait "$pid" || code=$?
    rm -f "$pid_file"
    last="$(grep -v '^[[:space:]]*$' "$log_file" | tail -n 1 || true)"
    echo "error: training failed to start (exit code $code, $py): ${last:-no output}; full log: $log_file" >&2
    exit 1
fi

echo "training started: PID $pid ($py)"
echo "  log:    $log_file"
echo "  follow: tail -f $log_file"
echo "  stop:   $0 --stop $pid_file"

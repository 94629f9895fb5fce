#!/usr/bin/env bash
# Start `python -m hrm.train` detached from the terminal (setsid + nohup: it survives logout and SSH drops).
#
#   scripts/train_background.sh [the flags of python -m hrm.train]    start; prints how to follow and stop it
#   scripts/train_background.sh --stop PID_FILE                        stop it (SIGTERM to its process group)
#
# Writes logs/training_<run>_<timestamp>.log (the console output) and logs/training_<run>_<timestamp>.pid
# ($HRM_LOG_DIR instead of logs/), where <run> is the --output_dir's name, else the --model_size or --config
# name. The run directory also gets its own train.log (hrm.train writes it). Re-running the same command
# resumes the run from its latest checkpoint. PYTHON selects the interpreter (default: python).
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

# setsid: a new session and process group, so the trainer outlives this shell and --stop can signal the group.
PYTHONUNBUFFERED=1 setsid nohup "${PYTHON:-python}" -m hrm.train "$@" >"$log_file" 2>&1 </dev/null &
echo $! >"$pid_file"

echo "training started: PID $(cat "$pid_file")"
echo "  log:    $log_file"
echo "  follow: tail -f $log_file"
echo "  stop:   $0 --stop $pid_file"

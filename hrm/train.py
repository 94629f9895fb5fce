"""python -m hrm.train --config FILE | --model_size NAME | --resume PATH | --init_from RUN_DIR [flags]
[--config.section.key=value ...]

Train a model, or continue one. Re-running the same command on a run directory with checkpoints resumes
from the latest one; ``--resume PATH`` (a run directory or ``DIR/checkpoints/N``) continues another run's
weights, optimizer, step, schedule and data position in a new ``--output_dir``, with the settings given here
(e.g. a new ``--training_preset``). ``--init_from`` fine-tunes: the run starts from RUN_DIR's weights (e.g.
``python -m hrm.convert`` output) with RUN_DIR's model and tokenizer and a fresh optimizer; the data and
training settings come from --config when given, else from RUN_DIR.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import sys
from pathlib import Path

import jax

from hrm.cli import ArgumentParser, UsageError, add_config_source, run_main
from hrm.config import DEFAULT_SAFETY_MARGIN_MB, model_size_config, resolve_config
from hrm.config.flags import DATA_FLAGS, build_config, parse_overrides
from hrm.errors import UserError
from hrm.training.checkpoint import read_run_config
from hrm.training.faults import remember_interrupts
from hrm.training.loop import VramRequest, init_distributed, train
from hrm.training.memory import parse_vram
from hrm.training.monitor import require_wandb
from hrm.training.resume import resume_point

EXAMPLES = """\
overrides: any config field, --config.section.key=value (sections model, data, train), e.g.
  --config.train.steps=2000 --config.model.dropout=0.1 --config.data.seq_len=1024
  (a Python config file's get_config(), or a JSON file: a run's config.json or the README's JSON format)
re-running the same command resumes its run directory from the latest checkpoint (Ctrl-C saves one)

examples, one per data source:
  python -m hrm.train --config configs/tiny.py                                   # embedded corpus (stdlib sources)
  python -m hrm.train --model_size hybrid-small --data_dir my_texts/             # .txt .py .md .json files
  python -m hrm.train --config configs/tiny_recursive.py --data_path chats.jsonl --epochs 2   # dialogue JSONL
  python -m hrm.train --model_size hybrid-small --dataset TIGER-Lab/MathInstruct --text_column "instruction,output"
  python -m hrm.train --model_size medium --dataset my_hf_folder --dataset_split validation   # save_to_disk folder
  python -m hrm.train --resume runs/a/checkpoints/5000 --training_preset careful --output_dir runs/b
  scripts/train_background.sh --model_size hybrid-small --vram_auto ...           # detached, log in logs/
"""


def main(argv: list[str]) -> None:
    sys.unraisablehook = remember_interrupts(sys.unraisablehook)  # a Ctrl-C during setup is never lost
    config, args = parse_command_line(argv)
    if args.wandb:
        require_wandb()
    if args.coordinator_address:
        init_distributed(args.coordinator_address, args.num_processes, args.process_id)
    vram = None
    if args.vram_auto or args.vram:
        vram = VramRequest(parse_vram(args.vram) if args.vram else None, args.vram_safety_margin)
    run_dir = Path(args.output_dir or Path("runs") / config.name)
    resolve_config(config)  # a refused config is said before the run directory exists
    created = not run_dir.exists()
    log_to_file(run_dir, argv)
    try:
        train(
            config,
            run_dir,
            vram=vram,
            allow_data_change=args.allow_data_change,
            init_from=args.init_from,
            resume_from=args.resume,
            wandb=args.wandb,
        )
    except UserError:
        if created:
            remove_if_only_logs(run_dir)
        raise


def remove_if_only_logs(run_dir: Path) -> None:
    """Remove a run directory this process made and then refused to train in (a size or data problem found after
    it opened its log): it holds nothing but that log."""
    if run_dir.is_dir() and all(p.is_file() and p.name.endswith(".log") for p in run_dir.iterdir()):
        shutil.rmtree(run_dir, ignore_errors=True)


LOG_FILE = "train.log"


class _Tee:
    """A text stream that writes to the console stream and to a log file. A console that goes away (a pipe into
    ``head`` that closed) stops the console copy, not the run: training goes on, logged to the file."""

    def __init__(self, stream, file):
        self.stream, self.file = stream, file

    def write(self, text: str) -> int:
        self.file.write(text)
        self.file.flush()
        return self._to_console(lambda: self.stream.write(text)) or len(text)

    def flush(self) -> None:
        self._to_console(lambda: self.stream.flush())

    def _to_console(self, call):
        if self.stream is None:
            return None
        try:
            return call()
        except BrokenPipeError:
            # the interpreter's own flush of this stream at exit would fail again: point it at /dev/null
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, self.stream.fileno())
            except (OSError, ValueError, AttributeError):  # a stream without a file descriptor
                pass
            finally:
                os.close(devnull)
            self.stream = None
            return None

    def isatty(self) -> bool:
        return self.stream is not None and self.stream.isatty()

    def __getattr__(self, name):
        return getattr(self.stream if self.stream is not None else self.file, name)


def log_to_file(run_dir: Path, argv: list[str]) -> Path:
    """Append everything this process prints (progress, warnings, the error line) to ``run_dir/train.log``
    (``train.<i>.log`` for process i > 0 of a multi-process run), after a header with the time and command."""
    name = LOG_FILE if jax.process_index() == 0 else f"train.{jax.process_index()}.log"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        file = open(run_dir / name, "a", buffering=1)
    except OSError as error:  # a read-only or full disk, a file where the folder should be
        raise UsageError(
            f"cannot write the training log '{run_dir / name}' ({error.strerror or error}); "
            f"pass a writable --output_dir"
        ) from None
    file.write(f"--- {datetime.datetime.now().isoformat(timespec='seconds')} python -m hrm.train {' '.join(argv)}\n")
    sys.stdout, sys.stderr = _Tee(sys.stdout, file), _Tee(sys.stderr, file)
    return run_dir / name


SHORTHANDS = {
    "seed": "train.seed",
    "batch_size": "train.batch_size",
    "accumulation_steps": "train.accumulation_steps",
    "epochs": "train.epochs",
    "learning_rate": "train.lr",
    "max_seq_len": "data.seq_len",
}


def parse_command_line(argv: list[str]):
    """(config, parsed flags) from the command line: config file or model size, preset, then overrides."""
    parser = ArgumentParser(
        prog="python -m hrm.train",
        description=__doc__.split("\n\n", 1)[1].strip(),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = add_config_source(parser)
    source.required = False  # --resume or --init_from alone is enough
    parser.add_argument(
        "--resume",
        metavar="PATH",
        help="continue a run (its directory, latest step, or DIR/checkpoints/N) in --output_dir: "
        "weights, optimizer, step, schedule and data position; later flags change settings",
    )
    parser.add_argument(
        "--init_from",
        help="fine-tune: start from this run directory's weights, model and tokenizer "
        "(e.g. python -m hrm.convert output)",
    )
    parser.add_argument(
        "--training_preset",
        help="fast, default or careful (steps, lr, warmup, save/eval interval; before --config.* overrides)",
    )
    parser.add_argument("--output_dir", help="run directory (default runs/<config name>)")
    for flag, help_text in DATA_FLAGS.items():
        parser.add_argument(f"--{flag}", help=help_text)
    parser.add_argument("--seed", type=int, help="random seed (train.seed)")
    parser.add_argument(
        "--epochs", type=float, help="passes over the training tokens; sets train.steps from the data (train.epochs)"
    )
    parser.add_argument("--learning_rate", type=float, help="peak learning rate (train.lr)")
    parser.add_argument("--max_seq_len", type=int, help="tokens per row (data.seq_len)")
    parser.add_argument("--batch_size", type=int, help="global batch per optimizer step (train.batch_size)")
    parser.add_argument(
        "--accumulation_steps", type=int, help="micro-batches per optimizer step (train.accumulation_steps)"
    )
    memory = parser.add_argument_group("GPU memory (python -m hrm.memtest shows the same analysis)")
    vram = memory.add_mutually_exclusive_group()
    vram.add_argument(
        "--vram_auto",
        action="store_true",
        help="choose the largest micro-batch that fits the device's memory, keeping the global batch",
    )
    vram.add_argument("--vram", help="as --vram_auto for this much memory: 24gb, 24 or 20.5 (GB = GiB)")
    memory.add_argument(
        "--vram_safety_margin",
        type=float,
        default=DEFAULT_SAFETY_MARGIN_MB,
        help=f"MB kept free (default {DEFAULT_SAFETY_MARGIN_MB})",
    )
    parser.add_argument(
        "--allow_data_change",
        action="store_true",
        help="resume although the data changed (the exact resume of the data order is lost)",
    )
    parser.add_argument(
        "--wandb",
        action="store_true",
        help="also log to Weights & Biases (pip install wandb; WANDB_MODE=offline works offline)",
    )
    multi = parser.add_argument_group("multi-process (one process per host; run the same command on each)")
    multi.add_argument("--coordinator_address", help="HOST:PORT of process 0, reachable from every host")
    multi.add_argument("--num_processes", type=int, help="number of processes in the run")
    multi.add_argument("--process_id", type=int, help="this process's index, 0 .. num_processes-1")
    args, extra = parser.parse_known_args(argv)
    check_distributed_flags(args)
    shorthand = [(f"data.{flag}", getattr(args, flag)) for flag in DATA_FLAGS if getattr(args, flag) is not None]
    if args.tokenizer is not None:
        shorthand.append(("model.vocab_size", "0"))  # 0: the vocab follows the chosen tokenizer
    for flag, key in SHORTHANDS.items():
        if getattr(args, flag) is not None:
            shorthand.append((key, str(getattr(args, flag))))
    if args.epochs is not None and not args.epochs > 0:
        raise UsageError(
            f"--epochs must be a positive number of passes over the training tokens, got {args.epochs:g}; "
            f"leave it out to train --config.train.steps steps"
        )
    if args.vram_safety_margin < 0:
        raise UsageError(f"--vram_safety_margin must be >= 0 MB, got {args.vram_safety_margin:g}")
    if not (args.config or args.model_size or args.init_from or args.resume):
        raise UsageError("one of --config FILE, --model_size NAME, --resume PATH or --init_from RUN_DIR is required")
    if args.init_from and args.resume:
        raise UsageError(
            "--resume continues a run (optimizer, step, data) and --init_from takes only weights; pass one of them"
        )
    config_path = args.config or (model_size_config(args.model_size) if args.model_size else None)
    start = (
        read_run_config(resume_point(args.resume)[0] if args.resume else Path(args.init_from))
        if (args.resume or args.init_from)
        else None
    )
    config = build_config(
        config_path, shorthand + parse_overrides(extra), args.training_preset, start, resuming=bool(args.resume)
    )
    return config, args


def check_distributed_flags(args) -> None:
    given = [args.coordinator_address is not None, args.num_processes is not None, args.process_id is not None]
    if any(given) and not all(given):
        raise UsageError(
            "a multi-process run needs all of --coordinator_address HOST:PORT, --num_processes N and --process_id I"
        )
    if all(given) and not (args.num_processes >= 1 and 0 <= args.process_id < args.num_processes):
        raise UsageError(
            f"--process_id must be in 0..{args.num_processes - 1} with --num_processes "
            f"{args.num_processes} >= 1, got --process_id {args.process_id}"
        )


def cli() -> None:
    """The console script (pyproject.toml [project.scripts])."""
    run_main(main)


if __name__ == "__main__":
    cli()

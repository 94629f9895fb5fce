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
import shutil
import sys
from pathlib import Path

from hrm.cli import ArgumentParser, UsageError, add_config_source, run_main
from hrm.config import (
    DEFAULT_SAFETY_MARGIN_MB,
    TRAINING_PRESETS,
    Config,
    apply_override,
    load_config_file,
    model_size_config,
    resolve_config,
)
from hrm.errors import UserError

EXAMPLES = """\
overrides: any config field, --config.section.key=value (sections model, data, train), e.g.
  --config.train.steps=2000 --config.model.dropout=0.1 --config.data.seq_len=1024
  (a Python config file's get_config(), or a JSON file: a run's config.json or the documents' format)
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

OVERRIDE_PREFIX = "--config."
DATA_FLAGS = {  # the trainer guide's data flags, shorthands for --config.data.<flag>
    "data_dir": "a folder of .txt/.py/.md/.json files",
    "data_path": "a dialogue JSONL file ({context: [...], response, source} per line)",
    "dataset": "a local .jsonl/.json/.parquet/.csv file, a save_to_disk folder or a Hugging Face dataset name",
    "dataset_split": "the dataset split (default train)",
    "text_column": "comma-separated text columns, joined with a blank line (default text)",
    "tokenizer": "byte, cl100k_base, gpt2, r50k_base, o200k_base or a .tiktoken file (the model's vocab follows it)",
}


def parse_overrides(extra: list[str]) -> list[tuple[str, str]]:
    """``--config.a.b=v`` or ``--config.a.b v`` pairs from the arguments argparse did not know."""
    pairs, i = [], 0
    while i < len(extra):
        arg = extra[i]
        if not arg.startswith(OVERRIDE_PREFIX):
            raise UsageError(f"unrecognized argument '{arg}'; {flag_hint(arg)}")
        key, eq, value = arg[len(OVERRIDE_PREFIX) :].partition("=")
        if not eq:
            if i + 1 >= len(extra):
                raise UsageError(f"override '{arg}' needs a value, e.g. {arg}=VALUE")
            value, i = extra[i + 1], i + 1
        pairs.append((key, value))
        i += 1
    return pairs


# The trainer guide's flags (README.md "Training") that hrm spells differently: where each one lives here.
DOCUMENT_FLAGS = {
    "n_blocks": "--config.model.n_layers",
    "n_layers": "--config.model.n_layers",
    "d_model": "--config.model.d_model",
    "d_state": "--config.model.d_state",
    "expand_factor": "--config.model.expand",
    "dropout": "--config.model.dropout",
    "recurrent_depth": "--config.model.recurrent_depth",
    "checkpoint_segments": "--config.model.checkpoint_segments",
    "use_checkpointing": "--config.model.remat=block",
    "max_grad_norm": "--config.train.grad_clip",
    "warmup_steps": "--config.train.warmup_steps",
    "max_steps": "--config.train.steps",
    "steps": "--config.train.steps",
    "lr": "--learning_rate",
    "save_steps": "--config.train.save_every",
    "save_interval": "--config.train.save_every",
    "eval_steps": "--config.train.eval_every",
    "weight_decay": "--config.train.weight_decay",
    "gradient_accumulation_steps": "--accumulation_steps",
    "max_length": "--max_seq_len",
    "seq_len": "--max_seq_len",
    "checkpoint_dir": "--output_dir",
    "resume_from": "--resume",
    "use_wandb": "--wandb",
    "cache_tokenization": "nothing (hrm always caches the tokenized data)",
    "use_8bit_adam": "nothing (hrm's AdamW keeps float32 moments; try --config.train.shard_params=True)",
}


def flag_hint(arg: str) -> str:
    """What to write instead of an unknown flag: the documents' flag's hrm name, else the override syntax."""
    name = arg.lstrip("-").split("=", 1)[0].replace("-", "_")
    if name in DOCUMENT_FLAGS:
        return f"did you mean {DOCUMENT_FLAGS[name]}?"
    return "overrides look like --config.train.steps=100 (see --help)"


def apply_preset(config: Config, preset: str) -> None:
    if preset not in TRAINING_PRESETS:
        raise UsageError(f"unknown --training_preset '{preset}'; choose one of {', '.join(TRAINING_PRESETS)}")
    for key, value in TRAINING_PRESETS[preset].items():
        setattr(config.train, key, value)


def build_config(
    config_path: str | None,
    overrides: list[tuple[str, str]],
    preset: str | None = None,
    init_from: str | None = None,
    resume: str | None = None,
) -> Config:
    """The config file's (or, with none, the starting run's) config; the model and tokenizer (and, resuming, the
    row length) of the run that ``init_from`` or ``resume`` starts from; the preset; then the overrides."""
    config = load_config_file(config_path) if config_path else None
    start_from = resume or init_from
    if start_from:
        from hrm.training.checkpoint import read_run_config
        from hrm.training.resume import resume_point

        start = read_run_config(resume_point(resume)[0] if resume else Path(init_from))
        config = config or start
        config.model, config.data.tokenizer = start.model, start.data.tokenizer
        if resume:
            config.data.seq_len = start.data.seq_len
    if preset is not None:
        apply_preset(config, preset)
    for key, value in overrides:
        apply_override(config, key, value)
    return config


def main(argv: list[str]) -> None:
    config, args = parse_command_line(argv)
    if args.wandb:
        from hrm.training.monitor import require_wandb

        require_wandb()
    from hrm.training.loop import VramRequest, init_distributed, train  # heavy imports after the arguments

    if args.coordinator_address:
        init_distributed(args.coordinator_address, args.num_processes, args.process_id)
    vram = None
    if args.vram_auto or args.vram:
        from hrm.training.memory import parse_vram

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
    """A text stream that writes to the console stream and to a log file."""

    def __init__(self, stream, file):
        self.stream, self.file = stream, file

    def write(self, text: str) -> int:
        self.file.write(text)
        self.file.flush()
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def __getattr__(self, name):
        return getattr(self.stream, name)


def log_to_file(run_dir: Path, argv: list[str]) -> Path:
    """Append everything this process prints (progress, warnings, the error line) to ``run_dir/train.log``
    (``train.<i>.log`` for process i > 0 of a multi-process run), after a header with the time and command."""
    import datetime

    import jax

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
    config = build_config(
        config_path, shorthand + parse_overrides(extra), args.training_preset, args.init_from, args.resume
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

"""python -m hrm.export --checkpoint RUN_DIR --out DIR [--step N] [--format hrm|hf|stablehlo]

- ``hrm`` (default): the final-weights folder a trainer ships (``hrm.weights``): ``DIR/config.json`` (the run's
  config), ``DIR/model.safetensors`` (every parameter in its stored dtype, named by its path in the model,
  e.g. ``layers.0.mixer.in_proj.kernel``) and the tokenizer description (``DIR/tokenizer.json`` copied when
  the run used one, else the tokenizer's name in config.json's ``data.tokenizer``). ``hrm.load``,
  ``hrm.sample`` and ``hrm.serve`` accept it.
- ``hf``: a ``mamba`` run in the transformers layout (config.json + model.safetensors, float32, and the run's
  tokenizer.json when it has one), which ``transformers.MambaForCausalLM.from_pretrained(DIR)`` and
  ``hrm.load(DIR)`` read.
- ``stablehlo``: ``jax.export`` of the prefill and the decode step (``hrm.exported``), for serving without
  the Python model code.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import hrm
from hrm import exported, interop
from hrm.cli import ArgumentParser, UsageError, run_main
from hrm.weights import save_final

FORMATS = ("hrm", "hf", "stablehlo")


def _export_hf(model, checkpoint: str, out: Path) -> str:
    family = model.config.model.family
    if family != "mamba":
        raise UsageError(
            f"'{checkpoint}' is a {family} model; --format hf exports the mamba family only "
            f"(transformers has no {family})"
        )
    tokenizer = model.config.data.tokenizer
    eos_id = model.tokenizer.eos_id if tokenizer else 0
    interop.save_transformers(model.config.model, model.params, out, eos_id)
    if tokenizer.endswith(".json"):
        shutil.copy(tokenizer, out / interop.TOKENIZER_FILE)
        if (settings := Path(tokenizer).with_name("tokenizer_config.json")).is_file():
            shutil.copy(settings, out / settings.name)
        note = "with its tokenizer.json"
    else:
        note = f"without a tokenizer.json (the run's tokenizer '{tokenizer}' has none; eos id {eos_id})"
    return f"transformers MambaForCausalLM, step {model.step}) {note}"


def main(argv: list[str]) -> None:
    parser = ArgumentParser(prog="python -m hrm.export", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a run directory written by hrm.train or hrm.convert")
    parser.add_argument(
        "--format",
        default="hrm",
        choices=FORMATS,
        help="hrm: final-weights folder (default); hf: transformers Mamba; stablehlo: jax.export",
    )
    parser.add_argument("--step", default=None, help="checkpoint step (default: latest)")
    parser.add_argument("--out", help="the folder to write")
    parser.add_argument("out_positional", nargs="?", help=argparse.SUPPRESS)  # the older spelling: OUT
    parser.add_argument("--batch", type=int, default=1, help="stablehlo: the batch the exported functions take")
    parser.add_argument(
        "--chunk",
        type=int,
        default=None,
        help="stablehlo: the longest prefill chunk exported, a power of two (default 256); longer prompts take several",
    )
    parser.add_argument(
        "--max_context",
        type=int,
        default=None,
        help="stablehlo: KV positions of the exported cache (default: model.max_cache_len)",
    )
    args = parser.parse_args(argv)
    out = args.out or args.out_positional
    if not out:
        raise UsageError("give the folder to write with --out DIR (see python -m hrm.export --help)")
    if args.chunk is not None and (args.chunk < 1 or args.chunk & (args.chunk - 1)):
        raise UsageError(f"--chunk must be a power of two, got {args.chunk}")
    if Path(out).exists() and not Path(out).is_dir():
        raise UsageError(f"--out '{out}' is a file; pass a folder to write (new, or one to overwrite)")
    model = hrm.load(args.checkpoint, step=args.step, max_context=args.max_context)
    out = Path(out)
    if args.format == "hf":
        note = _export_hf(model, args.checkpoint, out)
    elif args.format == "stablehlo":
        exported.export_decoding(model, out, batch=args.batch, chunk=args.chunk or exported.EXPORT_CHUNK)
        note = f"StableHLO prefill and decode step, batch {args.batch}, step {model.step})"
    else:
        save_final(model.config, model.params, out, model.step)
        note = f"hrm final weights, step {model.step}): config.json, model.safetensors, tokenizer"
    print(f"wrote {out} ({note}")


def cli() -> None:
    """The console script (pyproject.toml [project.scripts])."""
    run_main(main)


if __name__ == "__main__":
    cli()

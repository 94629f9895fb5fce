"""python -m hrm.export --checkpoint RUN_DIR --format hf OUT [--step N]: a ``mamba`` run in the transformers
layout (OUT/config.json + OUT/model.safetensors, float32, and the run's tokenizer.json when it has one), which
``transformers.MambaForCausalLM.from_pretrained(OUT)`` and ``hrm.load(OUT)`` read."""

from __future__ import annotations

import shutil
from pathlib import Path

from hrm.cli import ArgumentParser, UsageError, run_main

FORMATS = ("hf",)


def main(argv: list[str]) -> None:
    parser = ArgumentParser(prog="python -m hrm.export", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a run directory written by hrm.train or hrm.convert")
    parser.add_argument("--format", required=True, choices=FORMATS, help="hf: Hugging Face transformers Mamba")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    parser.add_argument("out", help="the folder to write")
    args = parser.parse_args(argv)
    import hrm
    from hrm import interop
    model = hrm.load(args.checkpoint, step=args.step)
    family = model.config.model.family
    if family != "mamba":
        raise UsageError(f"'{args.checkpoint}' is a {family} model; --format hf exports the mamba family only "
                         f"(transformers has no {family})")
    out = Path(args.out)
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
    print(f"wrote {out} (transformers MambaForCausalLM, step {model.step}) {note}")


def cli() -> None:
    """The console script (pyproject.toml [project.scripts])."""
    run_main(main)


if __name__ == "__main__":
    cli()

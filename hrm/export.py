"""python -m hrm.export --checkpoint RUN_DIR --out DIR [--step N] [--format hrm|hf|stablehlo]

- ``hrm`` (default): the final-weights folder a trainer ships (as the trainer guide's): ``DIR/config.json`` (the run's
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
import json
import shutil
from pathlib import Path

import jax
import numpy as np

from hrm.cli import ArgumentParser, UsageError, run_main
from hrm.config import Config

FORMATS = ("hrm", "hf", "stablehlo")
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"


def _names(tree) -> tuple[list[str], object]:
    paths, treedef = jax.tree_util.tree_flatten_with_path(tree)
    names = [".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path) for path, _ in paths]
    return names, treedef


def save_final(config: Config, params, out: str | Path, step: int = 0) -> Path:
    """Write the final-weights folder (see the module docstring); returns it."""
    from safetensors.numpy import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names, _ = _names(params)
    leaves = jax.tree.leaves(params)
    save_file(
        {n: np.ascontiguousarray(np.asarray(x)) for n, x in zip(names, leaves)},
        out / WEIGHTS_FILE,
        metadata={"format": "hrm", "step": str(step)},
    )
    raw = config.to_dict()
    tokenizer = config.data.tokenizer
    if tokenizer.endswith(".json") and Path(tokenizer).is_file():
        shutil.copy(tokenizer, out / TOKENIZER_FILE)
        raw["data"]["tokenizer"] = TOKENIZER_FILE
    (out / CONFIG_FILE).write_text(json.dumps(raw, indent=2) + "\n")
    return out


def is_final_folder(path: str | Path) -> bool:
    path = Path(path)
    return (
        (path / WEIGHTS_FILE).is_file()
        and (path / CONFIG_FILE).is_file()
        and "model" in json.loads((path / CONFIG_FILE).read_text())
    )


def load_final(path: str | Path):
    """(Config, params, step) of a final-weights folder; a tokenizer.json in it is used by its full path."""
    from safetensors import safe_open
    from safetensors.numpy import load_file

    from hrm.training.checkpoint import CheckpointError, saved_config
    from hrm.training.state import abstract_params

    path = Path(path)
    config = saved_config(json.loads((path / CONFIG_FILE).read_text()))
    if config.data.tokenizer == TOKENIZER_FILE:
        config.data.tokenizer = str(path / TOKENIZER_FILE)
    tensors = load_file(path / WEIGHTS_FILE)
    abstract = abstract_params(config)
    names, treedef = _names(abstract)
    missing = [n for n in names if n not in tensors]
    if missing:
        raise CheckpointError(
            f"'{path / WEIGHTS_FILE}' lacks {len(missing)} parameter(s) of its config.json's "
            f"model, e.g. {missing[0]}; export it again with python -m hrm.export"
        )
    leaves = []
    for name, spec in zip(names, jax.tree.leaves(abstract)):
        if tensors[name].shape != spec.shape:
            raise CheckpointError(
                f"'{path / WEIGHTS_FILE}': {name} has shape {tensors[name].shape}, its "
                f"config.json's model needs {spec.shape}"
            )
        leaves.append(jax.numpy.asarray(tensors[name], spec.dtype))
    with safe_open(path / WEIGHTS_FILE, "np") as f:
        step = int((f.metadata() or {}).get("step", 0))
    return config, jax.tree.unflatten(treedef, leaves), step


def _export_hf(model, checkpoint: str, out: Path) -> str:
    from hrm import interop

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
    import hrm

    model = hrm.load(args.checkpoint, step=args.step, max_context=args.max_context)
    out = Path(out)
    if args.format == "hf":
        note = _export_hf(model, args.checkpoint, out)
    elif args.format == "stablehlo":
        from hrm import exported

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

"""python -m hrm.convert SRC OUT: a reference Mamba folder or an hrm run in another layout, as an hrm run directory.

- A reference Mamba folder (transformers or state-spaces layout, ``hrm.interop``): ``OUT/config.json``, the
  weights as an orbax checkpoint at step 0, and the folder's tokenizer.json. ``hrm.load``/``hrm.sample`` read it;
  ``python -m hrm.train --init_from OUT`` fine-tunes it.
- An hrm run directory: every step in the other layer layout (``--layout``, default stacked: scanned layers),
  resumable exactly with ``python -m hrm.train --output_dir OUT`` (``hrm.training.relayout``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from hrm import interop
from hrm.cli import ArgumentParser, UsageError, run_main
from hrm.training import checkpoint
from hrm.training.relayout import relayout_run


def main(argv: list[str]) -> None:
    parser = ArgumentParser(prog="python -m hrm.convert", description=__doc__.splitlines()[0])
    parser.add_argument(
        "src",
        help="a transformers (model.safetensors) or state-spaces (pytorch_model.bin) Mamba folder with its config.json",
    )
    parser.add_argument("out", help="the hrm run directory to write (new or empty)")
    parser.add_argument(
        "--layout",
        choices=("stacked", "per-layer"),
        default="stacked",
        help="an hrm run SRC: its layers stacked (model.scan_layers, the default) or per layer",
    )
    args = parser.parse_args(argv)

    src, out = Path(args.src), Path(args.out)
    if (src / checkpoint.CHECKPOINT_DIR).is_dir() and (src / checkpoint.CONFIG_FILE).is_file():
        steps = relayout_run(src, out, scan_layers=args.layout == "stacked")
        print(
            f"wrote {out}: steps {', '.join(map(str, steps))} of {src} with {args.layout} layers; resume with "
            f"python -m hrm.train --output_dir {out} (and the run's data flags)"
        )
        return
    if not interop.reference_layout(src):
        raise UsageError(
            f"'{src}' is not a reference Mamba folder: it needs a config.json with model_type "
            f"'mamba' (transformers) or d_model and n_layer (state-spaces) next to its weights"
        )
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"'{out}' already exists and is not empty; pass a new OUT directory")
    config, params = interop.load_reference(src)
    out.mkdir(parents=True, exist_ok=True)
    if config.data.tokenizer:
        for name in (interop.TOKENIZER_FILE, "tokenizer_config.json"):
            if (src / name).is_file():
                shutil.copy(src / name, out / name)
        config.data.tokenizer = str((out / interop.TOKENIZER_FILE).resolve())
    config.save_json(out / checkpoint.CONFIG_FILE)
    checkpoint.quiet_orbax()
    mgr = checkpoint.Checkpoints(out, config=config)
    mgr.save(0, {"step": 0, "params": params}, final=True)
    mgr.close()
    m = config.model
    print(
        f"wrote {out}: mamba d_model {m.d_model}, {m.n_layers} layers, vocab {m.vocab_size}, tokenizer "
        f"{config.data.tokenizer or 'none (no tokenizer.json in SRC)'}; fine-tune with "
        f"python -m hrm.train --init_from {out} --data_dir DIR --output_dir NEW_RUN"
    )


def cli() -> None:
    """The console script (pyproject.toml [project.scripts])."""
    run_main(main)


if __name__ == "__main__":
    cli()

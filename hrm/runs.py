"""python -m hrm.runs [DIR ...] [--verify] [--json]: list the runs at or under each DIR (default runs/) with
their config name, family and checkpoints (step, eval loss, latest/best/final)."""

from __future__ import annotations

import json
from pathlib import Path

from hrm.cli import ArgumentParser, UsageError, run_main
from hrm.training import checkpoint, runinfo


def main(argv: list[str]) -> None:
    parser = ArgumentParser(prog="python -m hrm.runs", description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="*", default=["runs"], help="run directories or folders holding them")
    parser.add_argument(
        "--verify", action="store_true", help="check every checkpoint's files against its checksums (reads them all)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per run")
    args = parser.parse_args(argv)

    checkpoint.quiet_orbax()

    missing = [d for d in args.dirs if not Path(d).is_dir()]
    if missing:
        raise UsageError(f"not a directory: {', '.join(missing)}; pass run directories or folders holding them")
    runs = runinfo.find_runs(args.dirs)
    if not runs:
        raise UsageError(f"no hrm.train run (config.json + checkpoints/) in {', '.join(args.dirs)}")
    for run_dir in runs:
        config = checkpoint.read_run_config(run_dir)
        rows = runinfo.checkpoints(run_dir, verify=args.verify)
        if args.json:
            print(
                json.dumps(
                    {"run": str(run_dir), "name": config.name, "family": config.model.family, "checkpoints": rows}
                )
            )
            continue
        print(f"{run_dir}  config {config.name}  family {config.model.family}")
        for row in rows:
            loss = f"{row['eval_loss']:.4f}" if row["eval_loss"] is not None else "-"
            status = (
                ""
                if not args.verify
                else f"  DAMAGED: {row['damage']}"
                if row["damage"] is not None
                else "  ok"
                if row["verified"]
                else "  unverified (no manifest)"
            )
            names = f"  ({', '.join(row['names'])})" if row["names"] else ""
            print(f"  step {row['step']:>8}  eval_loss {loss:>8}{names}{status}")


def cli() -> None:
    """The console script (pyproject.toml [project.scripts])."""
    run_main(main)


if __name__ == "__main__":
    cli()

"""Print a Markdown table of every config in configs/: family, shape, our parameter count, the documents' size.

    python scripts/model_table.py [configs/*.py ...]

Shapes only (``nnx.eval_shape``): nothing is allocated, so the 1B-scale configs take a second each.
"""

import sys
from pathlib import Path

from hrm.config import config_files, load_config_file, resolve_config
from hrm.info import documented, human
from hrm.models.accounting import effective_depth, flops_per_token, parameter_table


def row(path: Path) -> str:
    config = resolve_config(load_config_file(str(path)))
    cfg = config.model
    counts = parameter_table(cfg)
    total = sum(counts.values())
    stated, source = documented(str(path))
    ratio = f"{total / stated:.2f}x" if stated else "–"
    depth, _ = effective_depth(cfg)
    return (
        f"| `{path.stem}` | {cfg.family} | {cfg.d_model} | {cfg.n_layers} | {depth} | {total:,} | "
        f"{human(stated) if stated else 'not stated'} | {ratio} | "
        f"{human(flops_per_token(cfg, counts, config.data.seq_len))} |"
    )


def main(paths: list[str]) -> None:
    files = [Path(p) for p in paths] or config_files()
    print(
        "| config | family | d_model | layers | effective depth | parameters (ours) | documents | ours / documents "
        "| forward FLOPs/token |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for path in files:
        print(row(path), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])

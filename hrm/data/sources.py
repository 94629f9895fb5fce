"""Where training text comes from. Each source yields ``Document``s and counts what it skips.

Sources (the flags README.md "Training" documents):
- ``data_dir``: every .txt/.py/.md/.json file below a folder (JSON: the text of its string values);
- ``data_path``: dialogue JSONL, one ``{"context": [turns], "response": str, "source": str}`` a line;
- ``dataset``: a local .jsonl/.json/.parquet/.csv file, a ``datasets.save_to_disk`` folder, or a
  Hugging Face hub name (needs the ``datasets`` package and a network), with ``text_column`` columns;
  or ``synthetic:NAME``, a generated task (``hrm/data/synthetic.py``, sized by ``data.synthetic``);
- none of these: the embedded default corpus, the running interpreter's stdlib ``.py`` files.

Bad input never stops the run silently or with a traceback: binary files, invalid UTF-8 and
malformed lines are skipped and counted (``Skipped``); a missing path or column is a ``DataError``.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import functools
import json
import os
import socket
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from hrm.chat_template import dialogue_prompt
from hrm.data import synthetic
from hrm.data.documents import SYNTHETIC_PREFIX, DataError, Document

TEXT_SUFFIXES = (".txt", ".py", ".md", ".json")
TABLE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
COLUMN_SEPARATOR = "\n\n"


class Skipped:
    """Counts of skipped inputs by reason, with the first few places for each."""

    def __init__(self):
        self.counts = collections.Counter()
        self.examples = collections.defaultdict(list)

    def add(self, reason: str, where: str) -> None:
        self.counts[reason] += 1
        if len(self.examples[reason]) < 5:
            self.examples[reason].append(where)

    def summary(self) -> str:
        if not self.counts:
            return "skipped 0"
        return "skipped " + "; ".join(
            f"{n} {reason} (e.g. {', '.join(self.examples[reason])})" for reason, n in sorted(self.counts.items())
        )


@functools.cache
def stdlib_files() -> tuple[Path, ...]:
    """The interpreter's stdlib ``.py`` files (installed packages excluded), in a stable order. The walk skips
    the excluded folders instead of listing them (site-packages, inside the stdlib's folder, can hold far more
    files than the stdlib), and runs once per process: the interpreter's own files do not change under it."""
    root = Path(sysconfig.get_paths()["stdlib"])
    excluded = {"site-packages", "dist-packages", "__pycache__"}
    files = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [d for d in subfolders if d not in excluded]
        files += [Path(folder, n) for n in names if n.endswith(".py")]
    return tuple(sorted(files))


def directory_files(data_dir: str | Path) -> list[Path]:
    root = Path(data_dir)
    if not root.exists():
        raise DataError(f"data directory '{root}' does not exist; pass an existing --data_dir")
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)


def read_text(path: Path, skipped: Skipped) -> str | None:
    """The file's text, or None (counted) for an unreadable file (permissions), binary content or invalid UTF-8."""
    try:
        raw = Path(path).read_bytes()
    except OSError:
        skipped.add("unreadable files", path.name)
        return None
    if b"\x00" in raw:
        skipped.add("binary files", path.name)
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        skipped.add("files with invalid UTF-8", path.name)
        return None


def json_strings(value) -> Iterator[str]:
    """Every string inside a JSON value, depth first."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from json_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from json_strings(item)


def file_documents(paths: list[Path], skipped: Skipped) -> Iterator[Document]:
    for path in paths:
        text = read_text(path, skipped)
        if text is not None and path.suffix.lower() == ".json":
            try:
                text = "\n".join(json_strings(json.loads(text)))
            except json.JSONDecodeError as error:
                skipped.add("malformed JSON files", f"{path.name}:{error.lineno}")
                continue
        if text and text.strip():
            yield Document(text, plain=True)
        elif text is not None:
            skipped.add("empty documents", path.name)


def jsonl_records(path: Path, skipped: Skipped) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each well-formed JSON-object line; others are counted."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                skipped.add("malformed JSONL lines", f"{path.name}:{number}")
                continue
            if not isinstance(record, dict):
                skipped.add("malformed JSONL lines", f"{path.name}:{number}")
                continue
            yield number, record


def dialogue_documents(path: str, skipped: Skipped) -> Iterator[Document]:
    """Dialogue JSONL: the context turns (one per line) are the prompt, the response the completion."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"--data_path '{path}' is a folder; pass a dialogue JSONL file, or the folder as --data_dir")
    if not path.is_file():
        raise DataError(f"dialogue file '{path}' does not exist; pass an existing --data_path")
    check_readable(path, "--data_path")
    for number, record in jsonl_records(path, skipped):
        context, response = record.get("context"), record.get("response")
        if isinstance(context, str):
            context = [context]
        if (
            not isinstance(response, str)
            or not isinstance(context, list)
            or not all(isinstance(turn, str) for turn in context)
        ):
            skipped.add("dialogue lines without a context list and a response string", f"{path.name}:{number}")
            continue
        prompt = dialogue_prompt(context)
        yield Document(prompt + response, prompt_chars=len(prompt))


def check_readable(path: Path, flag: str) -> None:
    """A ``DataError`` naming the flag for a file this process may not read (permissions, a broken disk)."""
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as error:
        raise DataError(
            f"cannot read {flag} file '{path}' ({error.strerror or error}); check its permissions"
        ) from None


def _table_rows(name: str, split: str, skipped: Skipped) -> tuple[Iterator[dict], list[str]]:
    """Rows (dicts) and column names of a local table file, a save_to_disk folder or a hub dataset."""
    path = Path(name)
    suffix = path.suffix.lower()
    if path.is_file():
        check_readable(path, "--dataset")
    if path.is_file() and suffix in (".jsonl", ".json"):
        if suffix == ".json":
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                raise DataError(f"'{path}' is not valid JSON ({error}); use a list of objects or JSONL") from None
            if isinstance(data, dict):
                data = data.get(split, data.get("data", [data]))
            rows = [r for r in data if isinstance(r, dict)] if isinstance(data, list) else []
        else:
            rows = [record for _, record in jsonl_records(path, skipped)]
        columns = list(dict.fromkeys(k for r in rows[:1000] for k in r))
        return iter(rows), columns
    if path.is_file() and suffix == ".csv":
        with open(path, newline="", encoding="utf-8", errors="replace") as f:
            rows = list(csv.DictReader(f))
        return iter(rows), list(rows[0]) if rows else []
    if path.is_file() and suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(f"reading '{path}' needs pyarrow: pip install pyarrow") from None
        try:
            table = pq.read_table(path)
        except Exception as error:
            raise DataError(f"'{path}' is not a readable Parquet file ({type(error).__name__})") from None
        return iter(table.to_pylist()), table.column_names
    if path.is_file():
        raise DataError(f"--dataset file '{path}' has an unsupported type; use {', '.join(TABLE_SUFFIXES)}")
    return _hf_rows(name, split)


def _hf_rows(name: str, split: str):
    try:
        import datasets
    except ImportError:
        looks_local = Path(name).exists() or name.startswith((".", "/"))
        raise DataError(
            f"--dataset '{name}' "
            + ("does not exist" if not looks_local else "is a folder")
            + "; local files must be .jsonl/.json/.parquet/.csv, and Hugging Face datasets need "
            "pip install datasets"
        ) from None
    datasets.disable_progress_bars()  # the start-up lines say what was read
    if Path(name).is_dir() and is_saved_dataset(Path(name)):
        loaded = datasets.load_from_disk(name)
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise DataError(f"split '{split}' not in '{name}'; available: {', '.join(loaded)}")
            loaded = loaded[split]
        elif split != (loaded.split or DEFAULT_SPLIT):
            raise DataError(
                f"'{name}' is one saved Dataset ({'split ' + str(loaded.split) if loaded.split else 'no splits'}), "
                f"not split '{split}'; leave out --dataset_split, or save a DatasetDict with that split"
            )
    else:  # a folder of data files (hub layout: data/train-*.parquet, ...) or a hub name
        if not Path(name).is_dir():
            offline_hub(name)
        try:
            loaded = datasets.load_dataset(name, split=split)
        except Exception as error:
            raise DataError(
                f"could not load {'the data files in' if Path(name).is_dir() else 'Hugging Face dataset'} '{name}' "
                f"split '{split}' ({type(error).__name__}: {str(error).splitlines()[0][:160] if str(error) else ''})"
                + ("" if Path(name).is_dir() else "; offline, pass a local file or a save_to_disk folder")
            ) from None
    return iter(loaded), list(loaded.column_names)


DEFAULT_SPLIT = "train"  # data.dataset_split's default: what a saved Dataset without a split name is
HUB_HOST = ("huggingface.co", 443)


def is_saved_dataset(folder: Path) -> bool:
    """A ``datasets.save_to_disk`` folder (a Dataset's state.json or a DatasetDict's dataset_dict.json), not a
    folder of data files that ``load_dataset`` reads by their names."""
    return (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()


def offline_hub(name: str) -> None:
    """Without a network, put the hub libraries in offline mode (a cached dataset still loads, anything else
    fails at once instead of retrying each request)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", ""):
        return
    try:
        socket.create_connection(HUB_HOST, timeout=3).close()
    except OSError:
        import datasets  # optional (the hf extra); _hf_rows imported it already
        import huggingface_hub

        os.environ["HF_HUB_OFFLINE"] = "1"
        huggingface_hub.constants.HF_HUB_OFFLINE = True
        datasets.config.HF_HUB_OFFLINE = True


def column_documents(name: str, split: str, text_column: str, skipped: Skipped) -> Iterator[Document]:
    """Rows as documents: the chosen columns joined with a blank line; the last one is the completion."""
    if not Path(name).exists() and (name.startswith((".", "/")) or Path(name).suffix.lower() in TABLE_SUFFIXES):
        raise DataError(f"--dataset path '{name}' does not exist")
    rows, available = _table_rows(name, split, skipped)
    wanted = [c.strip() for c in text_column.split(",") if c.strip()]
    missing = [c for c in wanted if c not in available]
    if missing or not wanted:
        raise DataError(
            f"column(s) {', '.join(missing) or repr(text_column)} not in '{name}'; available columns: "
            f"{', '.join(map(str, available)) or 'none'} (choose with --text_column)"
        )
    for number, row in enumerate(rows, 1):
        values = [as_text(row.get(c)) for c in wanted]
        if not all(isinstance(v, str) for v in values):
            skipped.add("rows with a missing or non-text column", f"row {number}")
            continue
        if not "".join(values).strip():
            skipped.add("empty documents", f"row {number}")
            continue
        prompt = "".join(v + COLUMN_SEPARATOR for v in values[:-1])
        yield Document(prompt + values[-1], prompt_chars=len(prompt), plain=len(wanted) == 1)


def as_text(value):
    """A column's value as text: strings as they are, numbers (an answer column of integers) written out;
    anything else (None, lists, booleans) stays as it is and the row is skipped."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return value


def source_descriptions(cfg) -> list[tuple[str, str]]:
    """The (kind, location) sources a data config names, or the default stdlib corpus."""
    sources = [
        (kind, location)
        for kind, location in (("data_dir", cfg.data_dir), ("data_path", cfg.data_path), ("dataset", cfg.dataset))
        if location
    ]
    return sources or [("stdlib", sysconfig.get_paths()["stdlib"])]


def iter_documents(cfg, skipped: Skipped) -> Iterator[Document]:
    """All documents of every source the data config names, source by source (mixed later by shuffling)."""
    for kind, location in source_descriptions(cfg):
        if kind == "stdlib":
            yield from file_documents(stdlib_files(), skipped)
        elif kind == "data_dir":
            files = directory_files(location)
            if not files:
                raise DataError(f"no {'/'.join(TEXT_SUFFIXES)} files under '{location}'; point --data_dir at text")
            yield from file_documents(files, skipped)
        elif kind == "data_path":
            yield from dialogue_documents(location, skipped)
        elif location.startswith(SYNTHETIC_PREFIX):
            yield from synthetic.documents(location, cfg.synthetic)
        else:
            yield from column_documents(location, cfg.dataset_split, cfg.text_column, skipped)


def source_fingerprint(cfg) -> list:
    """What identifies the sources' content for the token cache: paths with sizes and mtimes."""
    parts = []
    for kind, location in source_descriptions(cfg):
        path = Path(location)
        files = (
            stdlib_files()
            if kind == "stdlib"
            else directory_files(path)
            if kind == "data_dir"
            else (
                sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path] if path.exists() else []
            )
        )
        stats = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
        parts.append([kind, location, stats, cfg.dataset_split, cfg.text_column])
        if location.startswith(SYNTHETIC_PREFIX):
            parts[-1].append(dataclasses.asdict(cfg.synthetic))
    return parts

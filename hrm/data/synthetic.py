"""Synthetic reasoning tasks as text: seeded, deterministic (prompt, answer) examples.

Every example is a prompt and the answer a model must generate after it. As a training source
(``--dataset synthetic:NAME``) each example is one document whose prompt is context, so with
``data.completion_only`` the loss falls on the answer (and its EOS) only; ``hrm.eval --task synthetic:NAME``
scores the greedy continuation of fresh prompts by exact match. The texts are plain ASCII, so any tokenizer
reads them (one token per character with the ``byte`` tokenizer).

Tasks (``data.synthetic.length`` / ``targets`` / ``vocab`` size them; 0 takes the default in ``TASKS``):
- ``selective_copying`` (Gu & Dao 2023, "Mamba", §4.1 and App. E.1): ``length`` positions holding ``targets``
  data tokens from a ``vocab``-letter alphabet at random positions, the rest noise (``.``); after ``|``,
  the data tokens in order. Random spacing is what defeats time-invariant models (Fig. 2).
- ``induction_heads`` (Mamba §4.1; Olsson et al. 2022): ``length`` random letters from ``vocab``, somewhere
  a trigger ``@`` followed by a letter; the prompt ends with ``@`` again, the answer is the letter that
  followed the first trigger.
- ``mqar``, multi-query associative recall (Arora et al. 2023, "Zoology", §3): ``length`` key-value pairs
  (distinct lowercase keys, uppercase values), ``|``, ``targets`` queried keys, ``=``; the answer is their
  values in query order.
- ``addition``: two numbers of 1 to ``length`` digits, ``a+b=``; the answer is the sum.
- ``arithmetic``: ``length`` operations (``+ - *`` with digits 1-9) applied left to right; the answer
  works each step and ends with the result GSM8K-style, ``3+4=7,7*2=14 #### 14`` (scored on the result).

Longer ``length`` at evaluation than in training tests extrapolation. Training documents and evaluation
prompts come from disjoint random streams (``TRAIN_STREAM``/``TEST_STREAM``); in small task spaces
(1-digit addition) the same example can still occur in both.
"""

from __future__ import annotations

import dataclasses
import re
import string
from collections.abc import Callable

import numpy as np

from hrm.data.documents import SYNTHETIC_PREFIX as PREFIX
from hrm.data.documents import DataError, Document

TRAIN_STREAM, TEST_STREAM = 0, 1
FINAL_ANSWER = re.compile(r"####\s*(-?[\d,]*\.?\d+)")


@dataclasses.dataclass(frozen=True)
class Example:
    prompt: str
    answer: str


@dataclasses.dataclass(frozen=True)
class Task:
    make: Callable[[np.random.Generator, int, int, int], Example]  # (rng, length, targets, vocab)
    length: int  # default size (see the module docstring)
    targets: int = 0  # default number of targets (tasks that have them)
    vocab: int = 0  # default alphabet (tasks that have one)
    max_vocab: int = 26
    final_answer: bool = False  # score the "#### N" result, not the whole answer


class SyntheticError(DataError):
    """Impossible task settings; the message names the setting."""


def _letters(rng, vocab: int, n: int) -> list[str]:
    return list(rng.choice(list(string.ascii_lowercase[:vocab]), size=n))


def selective_copying(rng, length: int, targets: int, vocab: int) -> Example:
    positions = np.sort(rng.choice(length, size=targets, replace=False))
    data = _letters(rng, vocab, targets)
    sequence = ["."] * length
    for position, token in zip(positions, data):
        sequence[position] = token
    return Example("".join(sequence) + "|", "".join(data))


def induction_heads(rng, length: int, targets: int, vocab: int) -> Example:
    tokens = _letters(rng, vocab, length - 3)  # + trigger, its letter, the final trigger
    where = int(rng.integers(0, len(tokens) + 1))
    answer = str(_letters(rng, vocab, 1)[0])
    return Example("".join(tokens[:where]) + "@" + answer + "".join(tokens[where:]) + "@", answer)


def mqar(rng, length: int, targets: int, vocab: int) -> Example:
    keys = rng.choice(list(string.ascii_lowercase), size=length, replace=False)
    values = rng.choice(list(string.ascii_uppercase), size=length)
    queries = rng.choice(length, size=targets, replace=False)
    pairs = "".join(k + v for k, v in zip(keys, values))
    return Example(pairs + "|" + "".join(keys[queries]) + "=", "".join(values[queries]))


def _number(rng, max_digits: int) -> int:
    digits = int(rng.integers(1, max_digits + 1))
    return int(rng.integers(0 if digits == 1 else 10 ** (digits - 1), 10**digits))


def addition(rng, length: int, targets: int, vocab: int) -> Example:
    a, b = _number(rng, length), _number(rng, length)
    return Example(f"{a}+{b}=", str(a + b))


OPERATIONS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def arithmetic(rng, length: int, targets: int, vocab: int) -> Example:
    value = int(rng.integers(1, 10))
    prompt, steps = str(value), []
    for _ in range(length):
        op, operand = str(rng.choice(list(OPERATIONS))), int(rng.integers(1, 10))
        result = OPERATIONS[op](value, operand)
        prompt += f"{op}{operand}"
        steps.append(f"{value}{op}{operand}={result}")
        value = result
    return Example(prompt + "=", ",".join(steps) + f" #### {value}")


TASKS = {
    "selective_copying": Task(selective_copying, length=64, targets=8, vocab=8),
    "induction_heads": Task(induction_heads, length=64, vocab=16),
    "mqar": Task(mqar, length=8, targets=4),
    "addition": Task(addition, length=3),
    "arithmetic": Task(arithmetic, length=3, final_answer=True),
}


def task_name(spec: str) -> str:
    """``NAME`` of ``synthetic:NAME`` (or of a bare name), checked."""
    name = spec[len(PREFIX) :] if spec.startswith(PREFIX) else spec
    if name not in TASKS:
        raise SyntheticError(f"unknown synthetic task '{name}'; choose one of {', '.join(PREFIX + t for t in TASKS)}")
    return name


def sizes(name: str, cfg) -> tuple[int, int, int]:
    """(length, targets, vocab) of task ``name`` under ``data.synthetic`` settings ``cfg`` (0: default)."""
    task = TASKS[name]
    length, targets, vocab = cfg.length or task.length, cfg.targets or task.targets, cfg.vocab or task.vocab
    key = "data.synthetic"
    if task.vocab and not 2 <= vocab <= task.max_vocab:
        raise SyntheticError(f"{key}.vocab must be in 2..{task.max_vocab} for {name}, got {vocab}")
    minimum = {"selective_copying": targets, "induction_heads": 4, "mqar": max(targets, 1)}.get(name, 1)
    if name == "mqar" and length > len(string.ascii_lowercase):
        raise SyntheticError(f"{key}.length (key-value pairs) must be at most 26 for mqar, got {length}")
    if length < minimum:
        raise SyntheticError(f"{key}.length must be at least {minimum} for {name}, got {length}")
    if task.targets and targets < 1:
        raise SyntheticError(f"{key}.targets must be positive for {name}, got {targets}")
    return length, targets, vocab


def examples(name: str, cfg, n: int, stream: int = TRAIN_STREAM) -> list[Example]:
    """``n`` examples of task ``name``: example ``i`` depends only on (``cfg.seed``, ``stream``, ``i``) and the
    task's sizes, so more examples extend a list without changing it."""
    length, targets, vocab = sizes(name, cfg)
    make = TASKS[name].make
    return [make(np.random.default_rng([cfg.seed, stream, i]), length, targets, vocab) for i in range(n)]


def final_answer(text: str) -> str | None:
    """The number after ``####`` (GSM8K's answer format), commas removed; None when there is none."""
    match = FINAL_ANSWER.search(text)
    return match.group(1).replace(",", "") if match else None


def same_number(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return False
    try:
        return float(a) == float(b)
    except ValueError:
        return a == b


def is_correct(name: str, generated: str, answer: str) -> bool:
    """Exact match of a generated continuation (leading/trailing whitespace ignored) with the answer; for
    tasks scored on their result (``arithmetic``), of the ``#### N`` numbers."""
    if TASKS[name].final_answer:
        return same_number(final_answer(generated), final_answer(answer))
    return generated.strip() == answer.strip()


def documents(spec: str, cfg) -> list:
    """``cfg.examples`` training documents of ``synthetic:NAME``: the prompt is context, the answer the
    completion (``data.completion_only`` puts the loss on it alone)."""
    if cfg.examples < 1:
        raise SyntheticError(f"data.synthetic.examples must be positive, got {cfg.examples}")
    return [
        Document(e.prompt + e.answer, prompt_chars=len(e.prompt)) for e in examples(task_name(spec), cfg, cfg.examples)
    ]

"""python -m hrm.eval --checkpoint DIR [--perplexity] [--task synthetic:NAME ...] [--gsm8k FILE.jsonl] [--json]
[--examples N] [--step N] [--name NAME] [--documents auto|held_out|all] [data flags, --config.data.key=value ...]

Evaluates a run (or a reference Mamba folder, ``hrm.load``):
- ``--perplexity``: the loss over every target of a dataset (the run's data flags unless others are given),
  per token (nats, perplexity) and per byte (bits per UTF-8 byte of the target text). ``--documents auto``
  takes the run's held-out documents (``data.eval_fraction``) when the data is the run's own, else every
  document of the given data (e.g. ``--dataset test.jsonl`` or ``--dataset_split test``).
- ``--task synthetic:NAME``: exact match of the greedy continuation of fresh prompts of a generator in
  ``hrm/data/synthetic.py``; ``--config.data.synthetic.length=...`` evaluates other (longer) sizes than the run
  trained on.
- ``--gsm8k FILE``: GSM8K-format JSONL (``question``, ``answer`` ending in ``#### N``); the prompt is the question
  followed by a blank line (as ``--dataset FILE --text_column question,answer`` trains), the greedy
  continuation's ``#### N`` must equal the answer's.
A table goes to stdout (``--json``: one JSON line instead); the results are written to ``DIR/eval/<name>.json``.
"""

from __future__ import annotations

import copy
import json
import math
import os
from functools import partial
from pathlib import Path

import jax
import numpy as np

import hrm
from hrm.cli import ArgumentParser, UsageError, run_main
from hrm.config import DATA_FLAGS, apply_override, parse_overrides
from hrm.data import document_batches, split_documents, synthetic, tokenized_corpus
from hrm.data.sources import COLUMN_SEPARATOR, DataError, Skipped, jsonl_records, source_descriptions
from hrm.data.synthetic import final_answer, same_number, task_name
from hrm.training.evaluation import held_out_loss
from hrm.training.state import eval_sums

EVAL_DIR = "eval"


def token_byte_lengths(tokenizer, vocab_size: int) -> np.ndarray:
    """UTF-8 bytes of each token id's text; EOS/PAD (and ids past the tokenizer) count 1, a document end."""
    encoding = tokenizer.encoding
    lengths = np.ones(vocab_size, np.int64)
    special = {tokenizer.eos_id, tokenizer.pad_id}
    for i in range(min(vocab_size, tokenizer.vocab_size)):
        if i in special:
            continue
        try:
            lengths[i] = len(encoding.decode_single_token_bytes(i))
        except AttributeError:  # a tokenizer.json (hrm.tokenizer.TokenizersEncoding)
            lengths[i] = len(tokenizer.decode([i]).encode())
        except KeyError:  # an id tiktoken does not use
            pass
    return lengths


def perplexity(model, cfg_data, documents: str = "auto", batch_size: int = 8, max_batches: int = 0, log=print) -> dict:
    """Loss per token and bits per byte over every target of ``documents`` (``held_out``: the
    ``data.eval_fraction`` split the run never trained on; ``all``; ``auto``: held out when ``cfg_data``'s
    sources are the run's, else all) of ``cfg_data``, at most ``max_batches`` batches (0: all)."""
    if documents not in ("auto", "held_out", "all"):
        raise UsageError(f"--documents must be auto, held_out or all, got {documents!r}")
    if documents == "auto":
        own = source_descriptions(cfg_data) == source_descriptions(model.config.data)
        documents = "held_out" if own and cfg_data.eval_fraction > 0 else "all"
    corpus = tokenized_corpus(cfg_data, model.tokenizer, log)
    indices = (
        split_documents(len(corpus), cfg_data.eval_fraction)[1] if documents == "held_out" else np.arange(len(corpus))
    )
    if len(indices) == 0:
        raise UsageError("no held-out documents (data.eval_fraction is 0); pass --documents all")
    batches = []
    for batch in document_batches(cfg_data, corpus, indices, batch_size):
        batches.append(batch)
        if len(batches) == max_batches:
            break
    sums = jax.jit(partial(eval_sums, model.graphdef))
    loss = held_out_loss(lambda b: sums(model.params, b), batches)
    targets = sum(int(np.count_nonzero(b["mask"])) for b in batches)
    byte_lengths = token_byte_lengths(model.tokenizer, model.config.model.vocab_size)
    n_bytes = sum(int(byte_lengths[b["targets"][b["mask"]]].sum()) for b in batches)
    sources = "; ".join(f"{kind} {location}" for kind, location in source_descriptions(cfg_data))
    return {
        "data": sources,
        "split": cfg_data.dataset_split,
        "documents": documents,
        "n_documents": int(len(indices)),
        "batches": len(batches),
        "targets": targets,
        "bytes": n_bytes,
        "loss_per_token": loss,
        "perplexity": math.exp(min(loss, 700)),
        "bits_per_byte": loss * targets / max(1, n_bytes) / math.log(2),
    }


def greedy_continuations(model, prompts: list[str], max_new_tokens: int, batch_size: int = 32) -> list[str]:
    """Greedy continuations (to EOS or ``max_new_tokens``) of ``prompts``, ``batch_size`` decoded at a time."""
    outputs = []
    for start in range(0, len(prompts), batch_size):
        outputs += model.generate(prompts[start : start + batch_size], max_new_tokens=max_new_tokens, temperature=0)
    return outputs


def char_match(generated: str, answer: str) -> float:
    """The share of the answer's characters the generation has at the same position (partial credit)."""
    generated, answer = generated.strip(), answer.strip()
    return sum(g == a for g, a in zip(generated, answer)) / max(1, len(answer))


def scored(name: str, prompts: list[str], answers: list[str], generated: list[str], correct, **info) -> dict:
    hits = [bool(correct(g, a)) for g, a in zip(generated, answers)]
    return {
        "task": name,
        **info,
        "examples": len(hits),
        "correct": sum(hits),
        "exact_match": sum(hits) / max(1, len(hits)),
        "char_match": sum(map(char_match, generated, answers)) / max(1, len(hits)),
        "samples": [
            {"prompt": p, "answer": a, "generated": g} for p, a, g in list(zip(prompts, answers, generated))[:3]
        ],
    }


def task_accuracy(model, spec: str, synthetic_cfg, n_examples: int, batch_size: int = 32) -> dict:
    """Exact match of greedy generation on ``n_examples`` fresh (test-stream) examples of ``synthetic:NAME``."""
    name = synthetic.task_name(spec)
    examples = synthetic.examples(name, synthetic_cfg, n_examples, stream=synthetic.TEST_STREAM)
    prompts, answers = [e.prompt for e in examples], [e.answer for e in examples]
    max_new = max(len(model.tokenizer.encode(a)) for a in answers) + 1  # + EOS
    generated = greedy_continuations(model, prompts, max_new, batch_size)
    length, targets, vocab = synthetic.sizes(name, synthetic_cfg)
    return scored(
        synthetic.PREFIX + name,
        prompts,
        answers,
        generated,
        lambda g, a: synthetic.is_correct(name, g, a),
        length=length,
        targets=targets,
        vocab=vocab,
        seed=synthetic_cfg.seed,
    )


def gsm8k_examples(path: str | Path, limit: int = 0) -> list[tuple[str, str]]:
    """(question, answer) pairs of a GSM8K-format JSONL file whose answer has a ``#### N`` result."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--gsm8k file '{path}' does not exist; pass a JSONL file with question and answer")
    skipped, pairs = Skipped(), []
    for number, record in jsonl_records(path, skipped):
        question, answer = record.get("question"), record.get("answer")
        if not isinstance(question, str) or not isinstance(answer, str) or final_answer(answer) is None:
            skipped.add("lines without a question and an answer ending in '#### N'", f"{path.name}:{number}")
            continue
        pairs.append((question, answer))
        if len(pairs) == limit:
            break
    if not pairs:
        raise DataError(
            f"no GSM8K examples in '{path}' ({skipped.summary()}); each line needs \"question\" and "
            f"\"answer\" ending in '#### N'"
        )
    return pairs


def gsm8k_accuracy(
    model, path: str | Path, n_examples: int = 0, max_new_tokens: int = 256, batch_size: int = 32
) -> dict:
    pairs = gsm8k_examples(path, n_examples)
    prompts, answers = [q + COLUMN_SEPARATOR for q, _ in pairs], [a for _, a in pairs]
    generated = greedy_continuations(model, prompts, max_new_tokens, batch_size)
    return scored(
        "gsm8k", prompts, answers, generated, lambda g, a: same_number(final_answer(g), final_answer(a)), file=str(path)
    )


def evaluate(
    model,
    cfg_data,
    *,
    perplexity_on: bool = False,
    tasks: tuple[str, ...] = (),
    gsm8k: str | None = None,
    examples: int = 200,
    documents: str = "auto",
    batch_size: int = 8,
    max_batches: int = 0,
    max_new_tokens: int = 256,
    log=print,
) -> dict:
    """Every requested evaluation of a loaded model, by result name (``perplexity``, ``synthetic:NAME``,
    ``gsm8k``)."""
    results = {}
    if perplexity_on:
        results["perplexity"] = perplexity(model, cfg_data, documents, batch_size, max_batches, log)
    for spec in tasks:
        results[spec] = task_accuracy(model, spec, cfg_data.synthetic, examples)
    if gsm8k:
        results["gsm8k"] = gsm8k_accuracy(model, gsm8k, examples, max_new_tokens)
    return results


def table(report: dict) -> str:
    lines = [f"eval of {report['checkpoint']} (step {report['step']})"]
    for name, result in report["results"].items():
        if name == "perplexity":
            lines.append(
                f"  {'perplexity':<28} loss/token {result['loss_per_token']:.4f}  perplexity "
                f"{result['perplexity']:.3f}  bits/byte {result['bits_per_byte']:.4f}  "
                f"({result['targets']:,} targets, {result['n_documents']:,} {result['documents']} "
                f"documents of {result['data']})"
            )
        else:
            sizes = "".join(f" {k} {result[k]}" for k in ("length", "targets", "vocab") if result.get(k))
            lines.append(
                f"  {name:<28} exact match {result['exact_match']:.3f}  char match "
                f"{result['char_match']:.3f}  ({result['correct']}/"
                f"{result['examples']}{';' + sizes if sizes else ''})"
            )
    return "\n".join(lines)


def write_report(run_dir: Path, name: str, report: dict) -> Path:
    folder = Path(run_dir) / EVAL_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def eval_data_config(config, argv_data: list[tuple[str, str]]):
    """The run's data config with data flags and ``--config.data.*`` overrides applied (a copy)."""
    config = copy.deepcopy(config)
    for key, value in argv_data:
        if not key.startswith("data.") or key == "data.tokenizer":
            raise UsageError(
                f"'--config.{key}' does not apply to evaluation; the model and its tokenizer are the "
                f"checkpoint's, only --config.data.* (not tokenizer) may change"
            )
        apply_override(config, key, value)
    return config.data


def main(argv: list[str]) -> None:
    parser = ArgumentParser(prog="python -m hrm.eval", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a run directory (hrm.train) or a reference Mamba folder")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    parser.add_argument("--perplexity", action="store_true", help="loss per token and bits per byte on the data")
    parser.add_argument("--task", action="append", default=[], help="synthetic:NAME (repeatable)")
    parser.add_argument("--gsm8k", help="a GSM8K-format JSONL file (question, answer ending in '#### N')")
    parser.add_argument("--examples", type=int, default=200, help="examples per task (GSM8K: 0 = the whole file)")
    parser.add_argument("--max_new_tokens", type=int, default=256, help="GSM8K generation limit")
    parser.add_argument("--documents", default="auto", help="perplexity on auto, held_out or all documents")
    parser.add_argument("--batch_size", type=int, default=8, help="rows per perplexity batch")
    parser.add_argument("--max_batches", type=int, default=0, help="perplexity batches at most (0: all)")
    parser.add_argument("--name", help="results file DIR/eval/<name>.json (default: the evaluations' names)")
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of the table")
    for flag, help_text in DATA_FLAGS.items():
        if flag != "tokenizer":
            parser.add_argument(f"--{flag}", help=help_text)
    args, extra = parser.parse_known_args(argv)
    if not (args.perplexity or args.task or args.gsm8k):
        raise UsageError("nothing to evaluate; pass --perplexity, --task synthetic:NAME or --gsm8k FILE")
    if args.examples < 0 or (args.task and args.examples == 0):
        raise UsageError(f"--examples must be positive (0: the whole GSM8K file), got {args.examples}")
    for name, value in (("--batch_size", args.batch_size), ("--max_new_tokens", args.max_new_tokens)):
        if value < 1:
            raise UsageError(f"{name} must be positive, got {value}")

    tasks = [f"synthetic:{task_name(t)}" for t in args.task]
    overrides = [(f"data.{f}", getattr(args, f)) for f in DATA_FLAGS if getattr(args, f, None) is not None]

    model = hrm.load(args.checkpoint, step=args.step)
    cfg_data = eval_data_config(model.config, overrides + parse_overrides(extra))
    log = (lambda *_: None) if args.json else print
    results = evaluate(
        model,
        cfg_data,
        perplexity_on=args.perplexity,
        tasks=tuple(tasks),
        gsm8k=args.gsm8k,
        examples=args.examples,
        documents=args.documents,
        batch_size=args.batch_size,
        max_batches=args.max_batches,
        max_new_tokens=args.max_new_tokens,
        log=log,
    )
    name = args.name or "_".join(key.replace("synthetic:", "") for key in results)
    report = {"checkpoint": str(args.checkpoint), "step": model.step, "name": name, "results": results}
    print(json.dumps(report) if args.json else table(report))
    try:
        path = write_report(Path(args.checkpoint), name, report)
    except OSError as error:  # a read-only run directory: the results are printed above, not lost
        raise UsageError(
            f"cannot write the results to '{Path(args.checkpoint) / EVAL_DIR}' ({error.strerror or error}); "
            f"they are printed above (--json prints them as JSON)"
        ) from None
    if not args.json:
        print(f"written to {path}")


def cli() -> None:
    """The console script (pyproject.toml [project.scripts])."""
    run_main(main)


if __name__ == "__main__":
    cli()

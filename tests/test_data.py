"""Data: tokenizers, every source, bad input, the token cache, packing, split and resume."""

import base64
import json

import numpy as np
import pytest

from hrm import tokenizer as tokenizer_module
from hrm.config import DataConfig
from hrm.data import (
    DataError,
    check_data_fingerprint,
    data_fingerprint,
    document_pieces,
    eval_batches,
    packed_batches,
    packing_efficiency,
    packing_summary,
    piece_dataset,
    split_batch,
    split_documents,
    tokenized_corpus,
    training_batches,
)
from hrm.tokenizer import TokenizerError, get_tokenizer, padded_vocab_size
from tests.helpers import ROOT, TINY, fresh_rng, small_run_args

UNICODE = ["naïve café ☕ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 🌍", "<|endoftext|> in text", "\x00\x01 tabs\t\n", "日本語のテキスト", ""]


def corpus_for(tmp_path, **data):
    cfg = DataConfig(cache_dir=str(tmp_path / "cache"), num_threads=2, seq_len=16, **data)
    messages = []
    corpus = tokenized_corpus(cfg, get_tokenizer(cfg.tokenizer), messages.append)
    return cfg, corpus, messages[-1]


def texts(corpus, tok):
    return sorted(tok.decode(corpus.document(i)["tokens"][:-1]) for i in range(len(corpus)))


# --- tokenizers -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["byte", "cl100k_base"])
def test_tokenizers_round_trip_unicode(name):
    tok = get_tokenizer(name)
    rng = fresh_rng()
    random_text = "".join(chr(c) for c in rng.integers(32, 0x10FFFF, 300) if not 0xD800 <= c <= 0xDFFF)
    for text in UNICODE + [random_text]:
        assert tok.decode(tok.encode(text)) == text
    assert tok.eos_id != tok.pad_id and max(tok.eos_id, tok.pad_id) < tok.vocab_size
    assert padded_vocab_size(tok) % 8 == 0 and padded_vocab_size(tok) >= tok.vocab_size


def test_byte_tokens_are_utf8_bytes():
    tok = get_tokenizer("byte")
    data = bytes(fresh_rng().integers(0, 256, 64, dtype=np.uint8))
    text = data.decode("utf-8", errors="replace")
    assert tok.encode(text) == list(text.encode("utf-8"))


def test_downloaded_tokenizer_offline_fails_with_one_line(monkeypatch):
    def offline(name):
        raise ConnectionError("no network")

    monkeypatch.setattr(tokenizer_module.tiktoken, "get_encoding", offline)
    get_tokenizer.cache_clear()
    try:
        with pytest.raises(TokenizerError, match="offline, use one of: byte, cl100k_base"):
            get_tokenizer("gpt2")
    finally:
        get_tokenizer.cache_clear()


def test_tiktoken_file_tokenizer(tmp_path):
    ranks = [bytes([b]) for b in range(256)] + [b"he", b"ll", b"hell", b"hello"]
    path = tmp_path / "mini.tiktoken"
    path.write_text("".join(f"{base64.b64encode(t).decode()} {i}\n" for i, t in enumerate(ranks)))
    tok = get_tokenizer(str(path))
    assert tok.encode("hello") == [259]
    assert tok.decode(tok.encode("hello wörld 🌍")) == "hello wörld 🌍"
    assert tok.vocab_size == 262
    with pytest.raises(TokenizerError, match="does not exist"):
        get_tokenizer(str(tmp_path / "missing.tiktoken"))
    with pytest.raises(TokenizerError, match="unknown tokenizer"):
        get_tokenizer("nonsense")


# --- sources and bad input --------------------------------------------------------------------


def test_data_dir_reads_text_files_and_skips_bad_ones(tmp_path):
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("alpha text")
    (root / "sub" / "b.py").write_text("print('beta')")
    (root / "c.md").write_text("# gamma")
    (root / "d.json").write_text(json.dumps({"title": "delta", "body": ["epsilon", {"x": "zeta"}], "n": 3}))
    (root / "bin.txt").write_bytes(b"\x89PNG\x00\x00binary")
    (root / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (root / "broken.json").write_text("{not json")
    (root / "ignored.csv").write_text("a,b\n1,2\n")
    cfg, corpus, summary = corpus_for(tmp_path, data_dir=str(root))
    tok = get_tokenizer("byte")
    assert texts(corpus, tok) == sorted(["alpha text", "print('beta')", "# gamma", "delta\nepsilon\nzeta"])
    assert "1 binary files (e.g. bin.txt)" in summary
    assert "1 files with invalid UTF-8 (e.g. latin1.txt)" in summary
    assert "1 malformed JSON files (e.g. broken.json:1)" in summary
    assert "4 documents" in summary


def test_dialogue_jsonl_with_malformed_lines_and_completion_only(tmp_path):
    path = tmp_path / "chat.jsonl"
    lines = [
        json.dumps({"context": ["Hi", "How are you?"], "response": "Fine.", "source": "x"}),
        "{broken",
        json.dumps({"context": ["Q"], "response": 3}),
        "",
        json.dumps({"context": [], "response": "Alone."}),
        "[1, 2]",
    ]
    path.write_text("\n".join(lines) + "\n")
    cfg, corpus, summary = corpus_for(tmp_path, data_path=str(path), completion_only=True)
    tok = get_tokenizer("byte")
    assert texts(corpus, tok) == ["Alone.", "Hi\nHow are you?\nFine."]
    assert "2 malformed JSONL lines (e.g. chat.jsonl:2, chat.jsonl:6)" in summary
    assert "1 dialogue lines without a context list and a response string (e.g. chat.jsonl:3)" in summary
    for i in range(len(corpus)):
        doc = corpus.document(i)
        learned = tok.decode(doc["tokens"][doc["loss_mask"] == 1])
        assert learned in ("Fine.<|endoftext|>", "Alone.<|endoftext|>")


@pytest.mark.parametrize("kind", ["jsonl", "json", "csv", "parquet"])
def test_dataset_files_join_columns(tmp_path, kind):
    rows = [{"question": f"q{i}", "answer": f"a{i}", "other": i} for i in range(5)]
    path = tmp_path / f"data.{kind}"
    if kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif kind == "json":
        path.write_text(json.dumps(rows))
    elif kind == "csv":
        path.write_text("question,answer,other\n" + "".join(f"q{i},a{i},{i}\n" for i in range(5)))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    cfg, corpus, _ = corpus_for(tmp_path, dataset=str(path), text_column="question,answer")
    assert texts(corpus, get_tokenizer("byte")) == [f"q{i}\n\na{i}" for i in range(5)]


def test_hugging_face_save_to_disk_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "hf"
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": ["one", "two"]}),
            "test": datasets.Dataset.from_dict({"text": ["three"]}),
        }
    ).save_to_disk(str(folder))
    _, corpus, _ = corpus_for(tmp_path, dataset=str(folder), dataset_split="test")
    assert texts(corpus, get_tokenizer("byte")) == ["three"]
    with pytest.raises(DataError, match="split 'dev' not in .*available: train, test"):
        corpus_for(tmp_path, dataset=str(folder), dataset_split="dev")


def test_bad_inputs_give_clear_errors(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"prompt": "p", "completion": "c"}) + "\n")
    with pytest.raises(DataError, match="column.* text not in .*available columns: prompt, completion"):
        corpus_for(tmp_path, dataset=str(path))
    with pytest.raises(DataError, match="does not exist"):
        corpus_for(tmp_path, dataset=str(tmp_path / "missing.jsonl"))
    with pytest.raises(DataError, match="does not exist"):
        corpus_for(tmp_path, data_dir=str(tmp_path / "nowhere"))
    empty = tmp_path / "junk"
    empty.mkdir()
    (empty / "x.txt").write_bytes(b"\x00\x01\x02")
    with pytest.raises(DataError, match="no usable documents.*1 binary files"):
        corpus_for(tmp_path, data_dir=str(empty))


def test_cli_reports_bad_data_in_one_line(tmp_path, run_cli):
    from hrm.train import main

    bad = tmp_path / "rows.jsonl"
    bad.write_text('{"a": "x"}\n')
    code, _, err = run_cli(
        main,
        "--config",
        TINY,
        "--output_dir",
        tmp_path / "run",
        "--dataset",
        bad,
        "--text_column",
        "body",
    )
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [
        f"error: column(s) body not in '{bad}'; available columns: a (choose with --text_column)"
    ]


def test_sources_mix(tmp_path):
    root = tmp_path / "docs"
    root.mkdir()
    (root / "a.txt").write_text("from the folder")
    table = tmp_path / "t.jsonl"
    table.write_text(json.dumps({"text": "from the table"}) + "\n")
    _, corpus, summary = corpus_for(tmp_path, data_dir=str(root), dataset=str(table))
    assert texts(corpus, get_tokenizer("byte")) == ["from the folder", "from the table"]
    assert "data_dir" in summary and "dataset" in summary


# --- cache, packing, split, resume ------------------------------------------------------------


def test_token_cache_is_reused_until_the_data_changes(tmp_path):
    root = tmp_path / "docs"
    root.mkdir()
    (root / "a.txt").write_text("first version")
    assert corpus_for(tmp_path, data_dir=str(root))[2].endswith("built: " + str(next((tmp_path / "cache").iterdir())))
    assert "token cache reused" in corpus_for(tmp_path, data_dir=str(root))[2]
    (root / "a.txt").write_text("second, longer version")
    _, corpus, message = corpus_for(tmp_path, data_dir=str(root))
    assert "token cache built" in message
    assert texts(corpus, get_tokenizer("byte")) == ["second, longer version"]


def many_documents(tmp_path, n=40):
    root = tmp_path / "many"
    root.mkdir(exist_ok=True)
    for i in range(n):
        (root / f"{i:03}.txt").write_text(f"document {i} " + "word " * (i % 7))
    return root


def long_and_short_documents(tmp_path):
    root = many_documents(tmp_path)
    (root / "long.txt").write_text("".join(f"{i:04}\n" for i in range(600)))  # any 10 bytes say where they are
    return corpus_for(tmp_path, data_dir=str(root), eval_fraction=0.0)


def test_packed_rows_never_target_across_a_segment_boundary(tmp_path):
    cfg, corpus, _ = long_and_short_documents(tmp_path)
    batch = split_batch(next(iter(training_batches(cfg, corpus, 64, seed=0))))
    assert batch["inputs"].shape == (64, 16)
    assert not np.any(batch["mask"] & (batch["segment_ids"] == 0))  # padding is never trained
    for segments, mask in zip(batch["segment_ids"], batch["mask"]):
        for s in np.flatnonzero(np.diff(segments)) + 1:  # no target is predicted from another piece
            assert not mask[s - 1]
    np.testing.assert_array_equal(batch["targets"][:, :-1], batch["inputs"][:, 1:])


def test_an_epoch_of_pieces_targets_every_token_once(tmp_path):
    cfg, corpus, _ = long_and_short_documents(tmp_path)
    targeted = np.zeros(len(corpus.tokens), int)
    for start, end, first_target in document_pieces(corpus, np.arange(len(corpus)), cfg.seq_len):
        assert start < first_target < end and end - start <= cfg.seq_len + 1
        assert end - start == cfg.seq_len + 1 or start in corpus.offsets  # a short piece is a whole document
        targeted[first_target:end] += 1  # the tokens before first_target are context only
    expected = np.ones(len(corpus.tokens), int)
    expected[corpus.offsets[:-1]] = 0  # a document's first token has no context to predict it from
    np.testing.assert_array_equal(targeted, expected)


def test_each_documents_target_count_is_its_loss_mask_sum(tmp_path):
    """A corpus without prompts takes its counts from the offsets (meta ``masked_tokens`` 0), one with prompts
    from the mask; both are the mask's sums, and an old cache (no ``masked_tokens``) still counts."""
    plain = long_and_short_documents(tmp_path)[1]
    prompted = qa_corpus(tmp_path, [("why " * 9, "ok"), ("a question: ", "an answer")], seq_len=16)[1]
    assert plain.meta["masked_tokens"] == 0 and prompted.meta["masked_tokens"] > 0
    for corpus in (plain, prompted):
        sums = [int(corpus.document(i)["loss_mask"].sum()) for i in range(len(corpus))]
        assert corpus.trained.tolist() == sums
        del corpus.meta["masked_tokens"], corpus.__dict__["trained"]
        assert corpus.trained.tolist() == sums


def test_shuffled_pieces_spread_a_long_document_over_the_epoch(tmp_path):
    cfg, corpus, _ = long_and_short_documents(tmp_path)
    long_text = (tmp_path / "many" / "long.txt").read_bytes()

    def where(row, segments):  # offset in long.txt that row[0] stands for, -1 if elsewhere
        start = max(np.flatnonzero(np.diff(segments, prepend=-1)), key=lambda i: np.sum(segments == segments[i]))
        found = long_text.find(bytes(min(int(t), 255) for t in row[start : start + 10]))
        return found - start if found >= 0 and np.sum(segments == segments[start]) >= 10 else -1

    def continued_rows(batches):  # adjacent rows where the second continues the first inside long.txt
        places = [where(row, seg) for b in batches for row, seg in zip(b["tokens"], b["tokens_segment_ids"])]
        return sum(a >= 0 and b == a + cfg.seq_len for a, b in zip(places, places[1:]))

    shuffled = iter(training_batches(cfg, corpus, 8, seed=0))
    batches = [next(shuffled) for _ in range(20)]
    in_long = [where(row, seg) >= 0 for b in batches for row, seg in zip(b["tokens"], b["tokens_segment_ids"])]
    assert sum(in_long) > 50  # most rows read long.txt (188 of the 228 pieces) ...
    assert continued_rows(batches) < 10  # ... but rarely a row that continues the row before


def test_split_is_deterministic_and_disjoint(tmp_path):
    cfg, corpus, _ = corpus_for(tmp_path, data_dir=str(many_documents(tmp_path, 300)), eval_fraction=0.05)
    train_a, eval_a = split_documents(len(corpus), 0.05)
    train_b, eval_b = split_documents(len(corpus), 0.05)
    np.testing.assert_array_equal(eval_a, eval_b)
    assert len(eval_a) == 15 and not set(train_a) & set(eval_a) and len(train_a) + len(eval_a) == 300
    first = eval_batches(cfg, corpus, 2, 3)
    again = eval_batches(cfg, corpus, 2, 3)
    assert all(np.array_equal(a["inputs"], b["inputs"]) for a, b in zip(first, again))
    assert len(split_documents(1, 0.5)[1]) == 0  # a single document is never held out


def test_iterator_state_resumes_at_the_exact_next_batch(tmp_path):
    from hrm.training.checkpoint import ExactIteratorState

    cfg, corpus, _ = long_and_short_documents(tmp_path)
    for consumed in (1, 2, 3, 21, 22, 43):  # inside and after a group of 64 packed rows, through JSON
        iterator = iter(training_batches(cfg, corpus, 3, seed=7))
        for _ in range(consumed):
            next(iterator)
        state = ExactIteratorState(iterator).get_state()
        expected = [next(iterator)["tokens"] for _ in range(4)]
        restored = iter(training_batches(cfg, corpus, 3, seed=7))
        ExactIteratorState(restored).set_state(state)
        for want in expected:
            np.testing.assert_array_equal(next(restored)["tokens"], want)
    other_seed = iter(training_batches(cfg, corpus, 3, seed=8))
    assert not np.array_equal(
        next(other_seed)["tokens"], next(iter(training_batches(cfg, corpus, 3, seed=7)))["tokens"]
    )


# --- whole documents, prompts kept with their answers, honest eval ------------------------------


def text_corpus(tmp_path, documents, seq_len, **data):
    """A byte-level corpus of ``documents`` (one file each, in this order): document i is its text and EOS."""
    root = tmp_path / "texts"
    root.mkdir()
    for i, text in enumerate(documents):
        (root / f"{i:03}.txt").write_text(text)
    cfg = DataConfig(
        cache_dir=str(tmp_path / "cache"), num_threads=1, seq_len=seq_len, eval_fraction=0.0, data_dir=str(root), **data
    )
    return cfg, tokenized_corpus(cfg, get_tokenizer("byte"), lambda _: None)


def row_segments(batch):
    """(row, segment tokens, trained target flags) of every segment of a split batch, with the row's last target."""
    for row in range(len(batch["inputs"])):
        segments = np.append(batch["segment_ids"][row], 0)
        tokens = np.append(batch["inputs"][row], batch["targets"][row, -1])
        mask = np.append(False, batch["mask"][row])  # mask[t]: token t is a trained target
        last = batch["segment_ids"][row, -1]
        if last and batch["mask"][row, -1]:
            segments[-1] = last  # the row's last target joins its segment
        for s in np.unique(segments[segments > 0]):
            where = segments == s
            yield row, tokens[where], mask[where]


# lengths 5, 9 and 5 at seq_len 8 (rows of 9 tokens): cutting at row boundaries would split the second one
CUT_DOCUMENTS = ["abcd", "efghijkl", "mnop", "qr", "stuvwx", "ABCDEFGH", "IJK"]


def test_a_document_that_fits_a_row_is_never_split(tmp_path):
    cfg, corpus = text_corpus(tmp_path, CUT_DOCUMENTS, seq_len=8)
    documents = {tuple(corpus.document(i)["tokens"]) for i in range(len(corpus))}
    iterator = iter(training_batches(cfg, corpus, 4, seed=0))
    for _ in range(6):
        for _, tokens, trained in row_segments(split_batch(next(iterator))):
            assert tuple(tokens) in documents  # whole, in one row, its own segment
            assert trained[1:].all() and not trained[0]  # every target present
    one_epoch = packed_batches(
        piece_dataset(corpus, np.arange(len(corpus)), cfg.seq_len, seed=0, epochs=1), cfg.seq_len, 1, 1, 2
    )
    seen = [tuple(tokens) for batch in one_epoch for _, tokens, _ in row_segments(split_batch(batch))]
    assert sorted(seen) == sorted(documents)  # each in exactly one row


def locate(tokens, documents):
    """(document, offset) where ``tokens`` occur in one of ``documents`` (byte tokens; EOS never inside)."""
    key = bytes(np.minimum(tokens, 255).astype(np.uint8))
    for doc in documents:
        offset = bytes(np.minimum(doc, 255).astype(np.uint8)).find(key)
        if offset >= 0:
            return doc, offset
    raise AssertionError(f"{key} is in no document")


def tiny_family_forward(path):
    """A jitted (tokens, segment_ids) → logits of a configs/<path> model, narrowed to test size."""
    import dataclasses

    import jax
    from flax import nnx

    from hrm.config import load_config_file, resolve_config
    from hrm.models import build_model

    config = load_config_file(ROOT / "configs" / path)
    config.model = dataclasses.replace(
        config.model,
        d_model=32,
        d_state=8,
        n_layers=2,
        vocab_size=0,
        **({"layer_pattern": "AM"} if config.model.family == "hybrid_pattern" else {}),
    )
    graphdef, params = nnx.split(build_model(resolve_config(config).model, seed=0))
    forward = jax.jit(lambda p, tokens, segment_ids: nnx.merge(graphdef, p)(tokens, segment_ids=segment_ids)[0])
    return lambda tokens, segment_ids=None: np.asarray(forward(params, np.asarray(tokens), segment_ids))


@pytest.mark.parametrize("path", ["tiny.py", "tiny_hybrid.py", "tiny_recursive.py", "tiny_pattern.py"])
def test_packed_rows_give_each_document_the_logits_it_gets_alone(tmp_path, path):
    """Every family, on lengths that a cut at the row boundary would split: a row's segment is a document's
    start and its logits are that document's logits alone."""
    cfg, corpus = text_corpus(tmp_path, CUT_DOCUMENTS, seq_len=8)
    forward = tiny_family_forward(path)
    documents = [corpus.document(i)["tokens"] for i in range(len(corpus))]
    alone = forward(np.stack([np.pad(d, (0, cfg.seq_len + 1 - len(d))) for d in documents]))  # causal: padding after
    batch = split_batch(next(iter(training_batches(cfg, corpus, 6, seed=0))))
    packed = forward(batch["inputs"], batch["segment_ids"])
    checked = 0
    for row, (inputs, segment_ids) in enumerate(zip(batch["inputs"], batch["segment_ids"])):
        for s in np.unique(segment_ids[segment_ids > 0]):
            where = np.flatnonzero(segment_ids == s)
            doc, offset = locate(inputs[where], documents)
            i = next(i for i, d in enumerate(documents) if d is doc)
            np.testing.assert_allclose(packed[row, where], alone[i, offset : offset + len(where)], rtol=1e-4, atol=1e-4)
            checked += 1
    assert checked >= len(documents)


def qa_corpus(tmp_path, rows, seq_len):
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in rows))
    cfg = DataConfig(
        cache_dir=str(tmp_path / "cache"),
        num_threads=1,
        seq_len=seq_len,
        eval_fraction=0.0,
        dataset=str(path),
        text_column="question,answer",
        completion_only=True,
    )
    return cfg, tokenized_corpus(cfg, get_tokenizer("byte"), lambda _: None)


def test_completion_only_keeps_the_end_of_the_prompt_with_its_answer(tmp_path):
    """A prompt longer than a row: the answer's row holds the prompt's end (left truncation), and no row
    trains an answer token without the prompt before it, nor carries only prompt."""
    rows = [(f"question {i}: " + "why " * (5 + 4 * i), f"ok {i}") for i in range(6)]  # prompts 17..42 tokens
    cfg, corpus = qa_corpus(tmp_path, rows, seq_len=16)
    row_len = cfg.seq_len + 1
    documents = [corpus.document(i) for i in range(len(corpus))]
    expected = {tuple(d["tokens"][-row_len:]) for d in documents}  # the prompt's end, the answer, EOS
    iterator = iter(training_batches(cfg, corpus, 4, seed=0))
    seen = set()
    for _ in range(16):
        for _, tokens, trained in row_segments(split_batch(next(iterator))):
            assert trained.any(), "a row segment holds only prompt tokens"
            assert tuple(tokens) in expected, bytes(tokens.astype(np.uint8))
            doc = next(d for d in documents if tuple(d["tokens"][-row_len:]) == tuple(tokens))
            np.testing.assert_array_equal(trained, doc["loss_mask"][-row_len:] == 1)
            seen.add(tuple(tokens))
    assert seen == expected


def test_a_long_answer_is_split_with_every_token_trained_once(tmp_path):
    cfg, corpus = qa_corpus(
        tmp_path, [("a long question " * 3, "answer: " + " ".join(map(str, range(20))))], seq_len=16
    )
    doc = corpus.document(0)
    answer_start = int(np.argmax(doc["loss_mask"]))
    trained = np.zeros(len(doc["tokens"]), int)
    one_epoch = packed_batches(piece_dataset(corpus, np.arange(1), cfg.seq_len, seed=0, epochs=1), cfg.seq_len, 1, 1, 2)
    first = []
    for batch in one_epoch:
        for _, tokens, mask in row_segments(split_batch(batch)):
            _, offset = locate(tokens, [doc["tokens"]])
            assert len(tokens) == cfg.seq_len + 1
            trained[offset + np.flatnonzero(mask)] += 1
            first.append(offset + np.flatnonzero(mask)[0])
    np.testing.assert_array_equal(trained, doc["loss_mask"])  # each answer token once, no prompt
    # the first answer piece starts with the prompt's end, as much of it as fits
    assert min(first) == answer_start


def test_eval_batches_sample_every_source(tmp_path):
    """Held-out documents come from every source, and the eval batches from a fixed shuffle of them."""
    root = tmp_path / "folder"
    root.mkdir()
    for i in range(100):
        (root / f"{i:03}.txt").write_text(f"folder text {i}")
    table = tmp_path / "table.jsonl"
    table.write_text("".join(json.dumps({"text": f"TABLE ROW {i}"}) + "\n" for i in range(100)))
    cfg = DataConfig(
        cache_dir=str(tmp_path / "cache"),
        num_threads=1,
        seq_len=32,
        eval_fraction=0.2,
        data_dir=str(root),
        dataset=str(table),
    )
    corpus = tokenized_corpus(cfg, get_tokenizer("byte"), lambda _: None)
    batches = eval_batches(cfg, corpus, 2, 2)
    text = b"".join(bytes(b["inputs"][b["segment_ids"] > 0].astype(np.uint8)) for b in batches)
    assert b"folder text" in text and b"TABLE ROW" in text
    again = eval_batches(cfg, corpus, 2, 2)
    assert all(np.array_equal(a["inputs"], b["inputs"]) for a, b in zip(batches, again))


def test_eval_loss_is_a_mean_over_tokens():
    from hrm.training.evaluation import held_out_loss

    batches = [{"mask": np.ones((1, 6), bool)}, {"mask": np.array([[True, False, False, False, False, False]])}]
    sums = iter([(6 * 1.0, 6.0), (4.0, 1.0)])  # 6 tokens at 1.0, 1 token at 4.0
    assert held_out_loss(lambda batch: next(sums), batches) == pytest.approx((6 * 1.0 + 4.0) / 7)


def test_each_held_out_target_counts_once_per_evaluation(tmp_path):
    """Asking for more held-out rows than the held-out pieces fill gives each piece once, then stops (no repeats
    weighing some documents twice); the last batch is padded with empty, fully masked rows."""
    root = tmp_path / "unique"
    root.mkdir()
    for i in range(60):
        (root / f"{i:03}.txt").write_text(f"doc{i:03}")  # one piece each, no two alike
    cfg, corpus, _ = corpus_for(tmp_path, data_dir=str(root), eval_fraction=0.1)
    batches = eval_batches(cfg, corpus, 2, 50)
    pieces = [
        bytes(row[seg == s].astype(np.uint8))
        for b in batches
        for row, seg in zip(b["inputs"], b["segment_ids"])
        for s in set(seg[seg > 0].tolist())
    ]
    assert len(batches) < 50 and len(pieces) == 6 and len(set(pieces)) == 6
    assert all(b["inputs"].shape == batches[0]["inputs"].shape for b in batches)


@pytest.mark.parametrize("source", ["stdlib", "short examples"])
def test_packing_fills_at_least_90_percent_of_the_rows(tmp_path, source):
    """The default corpus and examples of a few hundred tokens, at seq_len 2048."""
    if source == "stdlib":
        cfg = DataConfig(seq_len=2048, num_threads=1)
    else:
        rng = np.random.default_rng(0)
        path = tmp_path / "examples.jsonl"
        path.write_text("".join(json.dumps({"text": "x" * int(n)}) + "\n" for n in rng.integers(100, 600, 2000)))
        cfg = DataConfig(seq_len=2048, num_threads=1, dataset=str(path), cache_dir=str(tmp_path / "cache"))
    corpus = tokenized_corpus(cfg, get_tokenizer("byte"), lambda _: None)
    iterator = iter(training_batches(cfg, corpus, 8, seed=0))
    assert np.mean([packing_efficiency(split_batch(next(iterator))) for _ in range(16)]) >= 0.9
    summary = packing_summary(cfg, corpus, 8, seed=0)
    assert float(summary[0].split("packing efficiency ")[1].split("%")[0]) >= 90


def test_summary_counts_long_documents_and_warns_naming_seq_len(tmp_path):
    rows = [("short question", "yes")] * 18 + [("a much longer question " * 3, "no")] * 2
    cfg, corpus = qa_corpus(tmp_path, rows, seq_len=32)
    lines = packing_summary(cfg, corpus, 4, seed=0)
    assert (
        "20 documents, rows of 33 tokens (data.seq_len 32 + 1): 18 fit a row and stay whole, 2 are longer" in lines[0]
    )
    assert "2 prompts truncated on the left to fit their answer" in lines[0]
    assert lines[1].startswith("warning: 10% of the training documents are longer than a row")
    assert "raise data.seq_len (now 32)" in lines[1]
    (tmp_path / "fits").mkdir()
    cfg, corpus = qa_corpus(tmp_path / "fits", rows[:18], seq_len=32)
    assert len(packing_summary(cfg, corpus, 4, seed=0)) == 1


@pytest.mark.slow
def test_resuming_on_changed_data_is_refused_unless_allowed(tmp_path, run_cli):
    from hrm.train import main, parse_command_line
    from hrm.training.loop import train

    root = many_documents(tmp_path)
    args = [*small_run_args(save_every=100), "--config.train.eval_batches=0", "--data_dir", root]
    args = list(map(str, [*args, "--config.data.cache_dir", tmp_path / "cache", "--output_dir", tmp_path / "run"]))
    train(parse_command_line(args)[0], tmp_path / "run", log=lambda *_: None)
    (root / "new.txt").write_text("a document added after the run started")
    code, _, err = run_cli(main, *args)
    assert code == 2 and "Traceback" not in err, err
    [line] = err.strip().splitlines()
    assert line.startswith(f"error: the data of the run in '{tmp_path / 'run'}' changed (documents 40 -> 41;")
    assert line.endswith("pass --allow_data_change to resume on it anyway, or a new --output_dir")
    assert parse_command_line(args + ["--allow_data_change"])[1].allow_data_change


def test_allow_data_change_resumes_on_the_new_data_and_records_it(tmp_path):
    root = many_documents(tmp_path)
    cfg = DataConfig(seq_len=32, num_threads=1, data_dir=str(root), cache_dir=str(tmp_path / "cache"))
    before = data_fingerprint(cfg, tokenized_corpus(cfg, get_tokenizer("byte"), lambda _: None))
    check_data_fingerprint(tmp_path, before, resuming=False, allow_change=False)
    (root / "000.txt").write_text("the same number of documents, one of them edited")
    after = data_fingerprint(cfg, tokenized_corpus(cfg, get_tokenizer("byte"), lambda _: None))
    with pytest.raises(DataError, match=r"changed \(tokens 1,?\d+ -> \d+; document sizes \w+ -> \w+\)"):
        check_data_fingerprint(tmp_path, after, resuming=True, allow_change=False)
    check_data_fingerprint(tmp_path, before, resuming=True, allow_change=False)  # unchanged: resumes
    messages = []
    check_data_fingerprint(tmp_path, after, resuming=True, allow_change=True, log=messages.append)
    assert messages and messages[0].endswith("the exact resume of the data order is lost")
    check_data_fingerprint(tmp_path, after, resuming=True, allow_change=False)  # now the run's data


# --- issue 27/26: unreadable files, a damaged cache, completion_only without prompts, datasets layouts ---------


@pytest.mark.parametrize("flag,name", [("data_path", "chats.jsonl"), ("dataset", "rows.jsonl"), ("dataset", "t.csv")])
def test_an_unreadable_data_file_is_one_line(tmp_path, monkeypatch, flag, name):
    from hrm.data import sources

    path = tmp_path / name
    path.write_text('{"context": ["hi"], "response": "yo", "text": "t"}\n' if name.endswith("l") else "text\nt\n")
    real_open = open

    def denied(file, *args, **kwargs):  # as root every file is readable: fail the read as it fails for a user
        if str(file) == str(path):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(sources, "open", denied, raising=False)
    with pytest.raises(DataError, match=rf"^cannot read --{flag} file '{path}' \(Permission denied\); check its"):
        corpus_for(tmp_path, **{flag: str(path)})


def test_a_truncated_token_cache_is_rebuilt_with_one_line(tmp_path):
    root = tmp_path / "docs"
    root.mkdir()
    (root / "a.txt").write_text("some text " * 50)
    _, corpus, _ = corpus_for(tmp_path, data_dir=str(root))
    expected = np.asarray(corpus.tokens).copy()
    (cache,) = (tmp_path / "cache").iterdir()
    tokens = cache / "tokens.npy"
    size = tokens.stat().st_size
    tokens.write_bytes(tokens.read_bytes()[: size // 2])  # a copy cut short, a full disk
    messages = []
    corpus = tokenized_corpus(
        DataConfig(cache_dir=str(tmp_path / "cache"), num_threads=2, seq_len=16, data_dir=str(root)),
        get_tokenizer("byte"),
        messages.append,
    )
    assert messages[0] == (
        f"token cache {cache} is damaged (tokens.npy has {size // 2:,} bytes, {size:,} were written); rebuilding it"
    )
    assert messages[1].endswith(f"token cache rebuilt: {cache}") and len(messages) == 2
    np.testing.assert_array_equal(corpus.tokens, expected)


def test_completion_only_without_any_prompt_is_refused_and_a_partial_one_warned(tmp_path):
    root = tmp_path / "docs"
    root.mkdir()
    (root / "a.txt").write_text("plain text has no prompt")
    with pytest.raises(DataError, match=r"data.completion_only .* no document of data_dir .* has a prompt"):
        corpus_for(tmp_path, data_dir=str(root), completion_only=True)
    one_column = tmp_path / "rows.jsonl"
    one_column.write_text(json.dumps({"text": "one column"}) + "\n")
    with pytest.raises(DataError, match="every token would be trained"):
        corpus_for(tmp_path, dataset=str(one_column), completion_only=True)
    chats = tmp_path / "chats.jsonl"
    chats.write_text(json.dumps({"context": ["hi"], "response": "hello"}) + "\n")
    _, corpus, warning = corpus_for(tmp_path, data_dir=str(root), data_path=str(chats), completion_only=True)
    assert warning == (
        "warning: data.completion_only: 1 of 2 documents have no prompt (plain text or one column), so every "
        "one of their tokens is trained"
    )


def test_a_hub_layout_folder_of_parquet_shards_loads_with_its_splits(tmp_path):
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "hub" / "data"
    folder.mkdir(parents=True)
    rows = lambda start: datasets.Dataset.from_dict(
        {"question": [f"q{i}" for i in range(start, start + 3)], "answer": list(range(start, start + 3))}
    )
    rows(0).to_parquet(str(folder / "train-00000-of-00002.parquet"))
    rows(3).to_parquet(str(folder / "train-00001-of-00002.parquet"))
    rows(10).to_parquet(str(folder / "validation-00000-of-00001.parquet"))
    _, corpus, _ = corpus_for(tmp_path, dataset=str(tmp_path / "hub"), text_column="question,answer")
    assert texts(corpus, get_tokenizer("byte")) == [f"q{i}\n\n{i}" for i in range(6)]  # integers as text
    _, corpus, _ = corpus_for(
        tmp_path, dataset=str(tmp_path / "hub"), dataset_split="validation", text_column="question,answer"
    )
    assert texts(corpus, get_tokenizer("byte")) == [f"q{i}\n\n{i}" for i in range(10, 13)]
    with pytest.raises(DataError, match=r"split 'test' \(ValueError: Unknown split \"test\""):
        corpus_for(tmp_path, dataset=str(tmp_path / "hub"), dataset_split="test", text_column="question,answer")


def test_a_split_of_a_plain_saved_dataset_is_refused(tmp_path):
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "plain"
    datasets.Dataset.from_dict({"text": ["one", "two"]}).save_to_disk(str(folder))
    assert texts(corpus_for(tmp_path, dataset=str(folder))[1], get_tokenizer("byte")) == ["one", "two"]
    with pytest.raises(DataError, match=r"'.*plain' is one saved Dataset \(no splits\), not split 'validation'"):
        corpus_for(tmp_path, dataset=str(folder), dataset_split="validation")


def test_an_offline_hub_name_fails_at_once_in_one_line(tmp_path, capfd, monkeypatch):
    datasets = pytest.importorskip("datasets")
    import huggingface_hub

    from hrm.data import sources

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # restored afterwards, with the libraries' flags
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(sources, "HUB_HOST", ("hub.invalid", 443), raising=False)  # no network here anyway
    with pytest.raises(DataError, match=r"could not load Hugging Face dataset 'nobody/no_such_dataset' split"):
        corpus_for(tmp_path, dataset="nobody/no_such_dataset")
    assert capfd.readouterr().err.count("\n") <= 1  # not a retry line per request

"""Data: tokenizers, every source, bad input, the token cache, packing, split and resume."""

import base64
import json

import numpy as np
import pytest

from hrm import tokenizer as tokenizer_module
from hrm.config import DataConfig
from hrm.data import (DataError, document_pieces, eval_batches, packed_batches, piece_dataset, split_batch,
                      split_documents, tokenized_corpus, training_batches)
from hrm.tokenizer import TokenizerError, get_tokenizer, padded_vocab_size
from tests.helpers import run_module

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
    rng = np.random.default_rng()
    random_text = "".join(chr(c) for c in rng.integers(32, 0x10FFFF, 300) if not 0xD800 <= c <= 0xDFFF)
    for text in UNICODE + [random_text]:
        assert tok.decode(tok.encode(text)) == text
    assert tok.eos_id != tok.pad_id and max(tok.eos_id, tok.pad_id) < tok.vocab_size
    assert padded_vocab_size(tok) % 8 == 0 and padded_vocab_size(tok) >= tok.vocab_size


def test_byte_tokens_are_utf8_bytes():
    tok = get_tokenizer("byte")
    data = bytes(np.random.default_rng().integers(0, 256, 64, dtype=np.uint8))
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
    lines = [json.dumps({"context": ["Hi", "How are you?"], "response": "Fine.", "source": "x"}),
             "{broken", json.dumps({"context": ["Q"], "response": 3}), "",
             json.dumps({"context": [], "response": "Alone."}), "[1, 2]"]
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
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["one", "two"]}),
                          "test": datasets.Dataset.from_dict({"text": ["three"]})}).save_to_disk(str(folder))
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


def test_cli_reports_bad_data_in_one_line(tmp_path):
    bad = tmp_path / "rows.jsonl"
    bad.write_text('{"a": "x"}\n')
    result = run_module("hrm.train", "--config", "configs/tiny.py", "--output_dir", tmp_path / "run",
                        "--dataset", bad, "--text_column", "body", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: column(s) body not in '{bad}'; available columns: a (choose with --text_column)"]


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
    (root / "long.txt").write_text("".join(f"{i:04}\n" for i in range(600)))   # any 10 bytes say where they are
    return corpus_for(tmp_path, data_dir=str(root), eval_fraction=0.0)


def test_packed_rows_never_target_across_a_segment_boundary(tmp_path):
    cfg, corpus, _ = long_and_short_documents(tmp_path)
    batch = split_batch(next(iter(training_batches(cfg, corpus, 64, seed=0))))
    assert batch["inputs"].shape == (64, 16) and np.all(batch["segment_ids"] > 0)
    for row, segments, mask in zip(batch["inputs"], batch["segment_ids"], batch["mask"]):
        for s in np.flatnonzero(np.diff(segments)) + 1:   # no target is predicted from another piece
            assert not mask[s - 1]
    np.testing.assert_array_equal(batch["targets"][:, :-1], batch["inputs"][:, 1:])


def test_an_epoch_of_pieces_targets_every_token_once(tmp_path):
    cfg, corpus, _ = long_and_short_documents(tmp_path)
    targeted = np.zeros(len(corpus.tokens), int)
    for start, end in document_pieces(corpus, np.arange(len(corpus)), cfg.seq_len):
        assert 2 <= end - start <= cfg.seq_len + 1
        targeted[start + 1:end] += 1             # a piece targets all but its first token
    expected = np.ones(len(corpus.tokens), int)
    expected[corpus.offsets[:-1]] = 0            # a document's first token has no context to predict it from
    np.testing.assert_array_equal(targeted, expected)


def test_shuffled_pieces_spread_a_long_document_over_the_epoch(tmp_path):
    cfg, corpus, _ = long_and_short_documents(tmp_path)
    long_text = (tmp_path / "many" / "long.txt").read_bytes()

    def where(row, segments):     # offset in long.txt that row[0] stands for, -1 if elsewhere
        start = max(np.flatnonzero(np.diff(segments, prepend=-1)), key=lambda i: np.sum(segments == segments[i]))
        found = long_text.find(bytes(min(int(t), 255) for t in row[start:start + 10]))
        return found - start if found >= 0 and np.sum(segments == segments[start]) >= 10 else -1

    def continued_rows(batches):  # adjacent rows where the second continues the first inside long.txt
        places = [where(row, seg) for b in batches for row, seg in zip(b["tokens"], b["tokens_segment_ids"])]
        return sum(a >= 0 and b == a + cfg.seq_len for a, b in zip(places, places[1:]))

    shuffled = iter(training_batches(cfg, corpus, 8, seed=0))
    in_order = iter(packed_batches(piece_dataset(corpus, np.arange(len(corpus)), cfg.seq_len, None), cfg.seq_len,
                                   8, 1, 2))
    assert continued_rows([next(in_order) for _ in range(20)]) > 50   # unshuffled: long.txt row after row
    assert continued_rows([next(shuffled) for _ in range(20)]) < 10


def test_split_is_deterministic_and_disjoint(tmp_path):
    cfg, corpus, _ = corpus_for(tmp_path, data_dir=str(many_documents(tmp_path, 300)), eval_fraction=0.05)
    train_a, eval_a = split_documents(len(corpus), 0.05)
    train_b, eval_b = split_documents(len(corpus), 0.05)
    np.testing.assert_array_equal(eval_a, eval_b)
    assert len(eval_a) == 15 and not set(train_a) & set(eval_a) and len(train_a) + len(eval_a) == 300
    first = eval_batches(cfg, corpus, 2, 3)
    again = eval_batches(cfg, corpus, 2, 3)
    assert all(np.array_equal(a["inputs"], b["inputs"]) for a, b in zip(first, again))
    assert len(split_documents(1, 0.5)[1]) == 0        # a single document is never held out


def test_iterator_state_resumes_at_the_exact_next_batch(tmp_path):
    from hrm.training.checkpoint import ExactIteratorState
    cfg, corpus, _ = long_and_short_documents(tmp_path)
    for consumed in range(1, 9):    # mid-piece and at piece boundaries, through the checkpoint's JSON form
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
    assert not np.array_equal(next(other_seed)["tokens"], next(iter(training_batches(cfg, corpus, 3, seed=7)))["tokens"])

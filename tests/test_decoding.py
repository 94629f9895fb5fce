"""hrm/decoding.py: streamed text with stop strings and partial characters."""

from hrm.decoding import TextStream
from hrm.tokenizer import get_tokenizer

TOKENIZER = get_tokenizer("byte")


def feed(stream, *pieces):
    return [stream.add(TOKENIZER.encode(p) if isinstance(p, str) else p) for p in pieces]


def test_a_stop_string_split_across_tokens_is_held_back_and_cut():
    stream = TextStream(TOKENIZER, ["END"], TOKENIZER.eos_id)
    assert feed(stream, "hello ", "wor", "ld E", "N", "D more") == ["hello ", "wor", "ld ", "", ""]
    assert stream.finish_reason == "stop" and stream.text == "hello world "


def test_running_out_of_tokens_flushes_a_partial_stop_string():
    stream = TextStream(TOKENIZER, ["END"], TOKENIZER.eos_id)
    assert feed(stream, "ab E", "N") == ["ab ", ""]
    assert stream.flush() == "EN" and stream.finish_reason is None and stream.text == "ab EN"


def test_a_character_split_across_byte_tokens_is_emitted_whole_and_eos_ends_the_text():
    stream = TextStream(TOKENIZER, eos_id=TOKENIZER.eos_id)
    utf8 = "中".encode()
    assert feed(stream, [utf8[0]], [utf8[1]], [utf8[2], TOKENIZER.eos_id, 65]) == ["", "", "中"]
    assert stream.finish_reason == "stop" and stream.flush() == ""


class CountingTokenizer:
    """The byte tokenizer, counting the tokens it decodes."""

    def __init__(self):
        self.decoded = 0

    def decode(self, ids):
        self.decoded += len(ids)
        return TOKENIZER.decode(ids)


def test_detokenisation_is_incremental_and_equals_decoding_the_whole_output():
    text = "héllo wörld ✓ " * 60 + "END tail"
    ids = TOKENIZER.encode(text)
    tokenizer = CountingTokenizer()
    stream = TextStream(tokenizer, ["END"], TOKENIZER.eos_id)
    out = "".join(stream.add([t]) for t in ids) + stream.flush()
    assert out == text[: text.index("END")] and stream.finish_reason == "stop"
    assert tokenizer.decoded < 20 * len(ids), "each token decodes a few tokens, not the whole output again"
    stream = TextStream(TOKENIZER, ["✓ h"])
    pieces = [stream.add(ids[i : i + 3]) for i in range(0, len(ids), 3)]
    assert "".join(pieces) == text[: text.index("✓ h")]

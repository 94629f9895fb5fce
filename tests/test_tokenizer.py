from hrm.tokenizer import get_tokenizer, padded_vocab_size
from tests.helpers import fresh_rng


def test_byte_tokenizer_round_trips_any_text():
    tok = get_tokenizer("byte")
    rng = fresh_rng()
    samples = ["", "plain ascii", "naïve café ☕ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 🌍", "<|endoftext|> is text here", "\x00\x01\t\n"]
    samples.append("".join(chr(c) for c in rng.integers(32, 0x10FFFF, 200) if not 0xD800 <= c <= 0xDFFF))
    for text in samples:
        ids = tok.encode(text)
        assert ids == list(text.encode("utf-8")), "byte tokens are the UTF-8 bytes"
        assert tok.decode(ids) == text


def test_specials_and_vocab():
    tok = get_tokenizer("byte")
    assert (tok.eos_id, tok.pad_id, tok.vocab_size) == (256, 257, 258)
    assert tok.decode([104, 105, tok.eos_id]).startswith("hi")
    assert padded_vocab_size(tok) == 384 and padded_vocab_size(tok, 8) == 264

"""CharTokenizer / ByteTokenizer: round trips, JSON, errors."""
from __future__ import annotations

import json

import numpy as np
import pytest

from fastlm.tokenizers import (ByteTokenizer, CharTokenizer, Tokenizer, load_tokenizer,
                               tokenizer_from_json)

SHAKES = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
UNICODE = "h\u00e9llo w\u00f6rld \u2014 \u65e5\u672c\u8a9e \U0001F600 \u0000 tab\there"


# ------------------------------------------------------------------ CharTokenizer

def test_char_from_text_matches_nanogpt():
    tok = CharTokenizer.from_text(SHAKES)
    chars = sorted(set(SHAKES))
    assert tok.chars == chars
    assert tok.vocab_size == len(chars)
    stoi = {c: i for i, c in enumerate(chars)}
    ids = tok.encode(SHAKES)
    assert ids.dtype == np.int32 and ids.ndim == 1 and ids.shape == (len(SHAKES),)
    assert ids.tolist() == [stoi[c] for c in SHAKES]
    assert tok.decode(ids) == SHAKES
    assert tok.decode(ids.tolist()) == SHAKES
    assert tok.decode(ids.astype(np.uint16)) == SHAKES
    assert tok.decode([]) == ""
    assert tok.encode("").shape == (0,) and tok.encode("").dtype == np.int32


def test_char_unicode_round_trip_and_explicit_order():
    tok = CharTokenizer.from_text(UNICODE)
    assert tok.decode(tok.encode(UNICODE)) == UNICODE
    tok2 = CharTokenizer(["b", "a", "\U0001F600"])  # order as given
    assert tok2.encode("ab\U0001F600").tolist() == [1, 0, 2]
    assert tok2.decode(np.array([2, 0, 1])) == "\U0001F600ba"


def test_char_unknown_character():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match=r"'z' at position 3"):
        tok.encode("abcz")
    with pytest.raises(ValueError, match=r"position 1"):
        tok.encode("a\U0001F600")  # code point beyond the lookup table


def test_char_decode_out_of_range():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match=r"id 3 at position 1"):
        tok.decode([0, 3])
    with pytest.raises(ValueError, match=r"id -1 at position 0"):
        tok.decode(np.array([-1, 0]))
    with pytest.raises(ValueError, match=r"id 18446744073709551615"):
        tok.decode(np.array([2**64 - 1], dtype=np.uint64))
    with pytest.raises(ValueError, match=r"id 1267650600228229401496703205376"):
        tok.decode([0, 2**100])
    with pytest.raises(ValueError, match="1-D"):
        tok.decode(np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(TypeError, match="integer"):
        tok.decode(np.array([0.0, 1.0]))
    with pytest.raises(TypeError):
        tok.decode("abc")
    with pytest.raises(TypeError):
        tok.decode([True, False])


def test_char_constructor_errors():
    with pytest.raises(ValueError, match="empty"):
        CharTokenizer([])
    with pytest.raises(ValueError, match="duplicates"):
        CharTokenizer(["a", "b", "a"])
    with pytest.raises(ValueError, match="one character"):
        CharTokenizer(["ab"])
    with pytest.raises(TypeError, match=r"chars\[1\]"):
        CharTokenizer(["a", 1])
    with pytest.raises(TypeError, match="from_text"):
        CharTokenizer("abc")
    with pytest.raises(ValueError, match="empty"):
        CharTokenizer.from_text("")
    with pytest.raises(TypeError):
        CharTokenizer.from_text(b"abc")
    with pytest.raises(TypeError):
        CharTokenizer.from_text("abc").encode(b"abc")


def test_char_eq_repr_hash():
    a = CharTokenizer.from_text("hello")
    b = CharTokenizer(["e", "h", "l", "o"])
    assert a == b and hash(a) == hash(b)
    assert a != CharTokenizer(["h", "e", "l", "o"])
    assert a != ByteTokenizer()
    r = repr(a)
    assert "CharTokenizer" in r and "vocab_size=4" in r
    assert "..." in repr(CharTokenizer.from_text(SHAKES + "0123456789QWERTYUIOPZXCVBNM"))


# ------------------------------------------------------------------ ByteTokenizer

def test_byte_round_trip_unicode():
    tok = ByteTokenizer()
    assert tok.vocab_size == 256
    ids = tok.encode(UNICODE)
    assert ids.dtype == np.int32 and ids.ndim == 1
    assert ids.tolist() == list(UNICODE.encode("utf-8"))
    assert tok.decode(ids) == UNICODE
    assert tok.decode(ids.tolist()) == UNICODE
    assert tok.decode(range(65, 68)) == "ABC"
    assert tok.encode("").shape == (0,)


def test_byte_decode_invalid_utf8_replaces():
    tok = ByteTokenizer()
    assert tok.decode([0x61, 0xFF, 0x62]) == "a\ufffdb"
    assert tok.decode(tok.encode("\u65e5")[:2]) == "\ufffd"


def test_byte_errors():
    tok = ByteTokenizer()
    with pytest.raises(ValueError, match=r"id 256 at position 2"):
        tok.decode([1, 2, 256])
    with pytest.raises(ValueError, match=r"id -3"):
        tok.decode(np.array([-3], dtype=np.int8))
    with pytest.raises(ValueError, match="position 1"):
        tok.encode("a\ud800b")  # lone surrogate has no UTF-8 form
    with pytest.raises(TypeError):
        tok.encode(None)
    assert ByteTokenizer() == ByteTokenizer() and repr(tok) == "ByteTokenizer()"


# --------------------------------------------------------------------------- JSON

@pytest.mark.parametrize("tok", [CharTokenizer.from_text(SHAKES + UNICODE), ByteTokenizer()],
                         ids=["char", "byte"])
def test_json_round_trip(tok, tmp_path):
    s = tok.to_json()
    d = json.loads(s)
    assert d["type"] in ("char", "byte")
    back = tokenizer_from_json(s)
    assert type(back) is type(tok) and back == tok
    assert isinstance(back, Tokenizer)
    assert tokenizer_from_json(s.encode("utf-8")) == tok
    p = tmp_path / "tok.json"
    tok.save(p)
    loaded = load_tokenizer(p)
    assert loaded == tok
    assert loaded.decode(loaded.encode(UNICODE)) == UNICODE
    # overwriting is atomic and leaves no temp files
    tok.save(str(p))
    assert sorted(x.name for x in tmp_path.iterdir()) == ["tok.json"]


@pytest.mark.parametrize("text, match", [
    ('{"type": "char", "chars": ["a"', "corrupt"),
    ('{"type": "bpe"}', "unknown tokenizer type 'bpe'"),
    ('{"chars": ["a"]}', "'type'"),
    ("[1, 2]", "object"),
    ('{"type": "char"}', "chars"),
    ('{"type": "char", "chars": ["a", "a"]}', "duplicates"),
    ('{"type": "char", "chars": ["a", 5]}', "str"),
    ('{"type": "byte", "version": 99}', "version"),
])
def test_json_errors(text, match):
    with pytest.raises(ValueError, match=match):
        tokenizer_from_json(text)


def test_json_file_errors(tmp_path):
    with pytest.raises(TypeError):
        tokenizer_from_json(None)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_tokenizer(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"\x00\xffnot json")
    with pytest.raises(ValueError, match="bad.json"):
        load_tokenizer(bad)

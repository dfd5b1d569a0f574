"""Corpus tokenization into token files: streamed ids equal whole-file ids,
bounded blocks, dtypes, raw nanoGPT files, errors."""
from __future__ import annotations

import os

import numpy as np
import pytest

from fastlm import corpus
from fastlm.corpus import encode_text, prepare_dataset, tokenize_files, token_dtype
from fastlm.data import TokenWriter, list_text_files, open_tokens, write_tokens
from fastlm.tokenizers import ByteTokenizer, CharTokenizer
from fastlm import BPETokenizer

PROSE = ("It was the best of times, it was the worst of times,\r\nit was the age of wisdom; "
         "\u65e5\u672c\u8a9e\u306e\u6587 \U0001F600 don't   stop\n\n\t  indented\n") * 40


@pytest.fixture(scope="module")
def tok():
    pytest.importorskip("tokenizers")  # the tests without a BPE run without it
    return BPETokenizer.train(PROSE, 330)


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks and pieces of a few hundred characters, so short files cross many."""
    monkeypatch.setattr(corpus, "_BLOCK", 301)
    monkeypatch.setattr(corpus, "_PIECE", 37)
    monkeypatch.setattr(corpus, "_SEARCH", 200)


def _files(tmp_path, texts):
    d = tmp_path / "docs"
    d.mkdir()
    for i, t in enumerate(texts):
        (d / f"{i:02d}.txt").write_bytes(t.encode("utf-8"))
    return d


AWKWARD_DOCS = [
    PROSE,
    "",
    "no_spaces_at_all_" * 300,                 # no cut: a block is cut at a character boundary
    "\n" * 500 + "x",                          # whitespace runs across blocks
    " a" * 700,                                # one-letter words
    "\U0001F600" * 400,                        # four-byte characters across reads
    "end without newline <|endoftext|> inside",
]


def test_streamed_ids_equal_whole_file_ids(tok, tmp_path, small_blocks):
    d = _files(tmp_path, [t for t in AWKWARD_DOCS if "no_spaces" not in t])
    out = tmp_path / "all.bin"
    n = tokenize_files([d], out, tok, progress=False)
    want = np.concatenate([tok.encode(p.read_bytes().decode("utf-8")) for p in sorted(d.iterdir())])
    got = open_tokens(out)
    assert got.dtype == np.uint16 and n == len(want)
    np.testing.assert_array_equal(got, want)


def test_text_without_cuts_still_round_trips(tok, tmp_path, small_blocks):
    text = "no_spaces_at_all_" * 300
    p = tmp_path / "one.txt"
    p.write_text(text, encoding="utf-8")
    tokenize_files([p], tmp_path / "o.bin", tok, progress=False)
    assert tok.decode(open_tokens(tmp_path / "o.bin")) == text


def test_encode_text_equals_encode(tok, small_blocks):
    for text in AWKWARD_DOCS:
        np.testing.assert_array_equal(encode_text(tok, text), tok.encode(text))
    big = PROSE * 20
    np.testing.assert_array_equal(encode_text(tok, big), tok.encode(big))


def test_char_and_byte_tokenizers_and_uint32(tmp_path, small_blocks):
    d = _files(tmp_path, [PROSE, "twas"])
    for t in (CharTokenizer.from_text(PROSE), ByteTokenizer()):
        tokenize_files([d], tmp_path / "c.bin", t, progress=False)
        assert t.decode(open_tokens(tmp_path / "c.bin")) == PROSE + "twas"
    # A vocabulary past 65536 ids writes uint32.
    wide = CharTokenizer([chr(c) for c in range(0x20, 0x20 + 72_000) if not 0xD800 <= c <= 0xDFFF])
    assert token_dtype(wide.vocab_size) == np.uint32 and token_dtype(65536) == np.uint16
    text = "wide \U00011000 vocabulary " * 50
    (tmp_path / "wide.txt").write_text(text, encoding="utf-8")
    tokenize_files([tmp_path / "wide.txt"], tmp_path / "w.bin", wide, progress=False)
    ids = open_tokens(tmp_path / "w.bin")
    assert ids.dtype == np.uint32 and ids.max() >= 65536 and wide.decode(ids) == text


def test_char_errors_name_the_file_and_position(tmp_path, small_blocks):
    d = _files(tmp_path, [PROSE, "twas twas" * 100 + " zebra"])
    with pytest.raises(ValueError, match=r"01\.txt.*'z' at position"):
        tokenize_files([d], tmp_path / "c.bin", CharTokenizer.from_text(PROSE), progress=False)
    assert not (tmp_path / "c.bin").exists()
    with pytest.raises(ValueError, match=r"'z' at position 3\b"):
        encode_text(CharTokenizer.from_text("abc"), "abcz")


def test_append_eos(tok, tmp_path):
    d = _files(tmp_path, ["one two", "three"])
    tokenize_files([d], tmp_path / "e.bin", tok, append_eos=True, progress=False)
    want = [*tok.encode("one two"), tok.eos_token_id, *tok.encode("three"), tok.eos_token_id]
    assert open_tokens(tmp_path / "e.bin").tolist() == want
    with pytest.raises(ValueError, match="no end-of-text token"):
        tokenize_files([d], tmp_path / "x.bin", ByteTokenizer(), append_eos=True, progress=False)


def test_invalid_utf8_names_the_file_and_leaves_nothing(tok, tmp_path, small_blocks):
    d = _files(tmp_path, [PROSE])
    (d / "zz_bad.txt").write_bytes(b"fine text " * 100 + b"\xff\xfe broken")
    out = tmp_path / "bad.bin"
    with pytest.raises(ValueError, match=r"zz_bad\.txt.*not valid UTF-8.*byte offset 1000"):
        tokenize_files([d], out, tok, progress=False)
    assert not out.exists()
    assert sorted(os.listdir(tmp_path)) == ["docs"]


def test_list_text_files(tmp_path):
    d = _files(tmp_path, ["a", "b"])
    (d / ".hidden").write_text("x")
    (d / "sub").mkdir()
    (d / "sub" / "c.txt").write_text("c")
    assert [os.path.relpath(p, d) for p in list_text_files([d])] == ["00.txt", "01.txt", os.path.join("sub", "c.txt")]
    with pytest.raises(FileNotFoundError, match="nope"):
        list_text_files([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no files"):
        list_text_files([tmp_path / "empty"])


def test_prepare_dataset(tok, tmp_path):
    d = _files(tmp_path, [PROSE, PROSE[::-1]])
    info = prepare_dataset([d], tmp_path / "data", tok, val_fraction=0.25, progress=False)
    assert sorted(os.listdir(tmp_path / "data")) == ["tokenizer.json", "train.bin", "val.bin"]
    whole = np.concatenate([tok.encode(PROSE), tok.encode(PROSE[::-1])])
    train, val = open_tokens(tmp_path / "data" / "train.bin"), open_tokens(tmp_path / "data" / "val.bin")
    assert info == {"train": len(train), "val": len(val), "dtype": "uint16"}
    assert len(train) == int(len(whole) * 0.75)
    np.testing.assert_array_equal(np.concatenate([train, val]), whole)
    with pytest.raises(ValueError, match="val_fraction"):
        prepare_dataset([d], tmp_path / "data", tok, val_fraction=1.0, progress=False)


def test_progress_bar_runs(tok, tmp_path, capsys):
    d = _files(tmp_path, [PROSE])
    tokenize_files([d], tmp_path / "p.bin", tok, progress=True)
    assert "tokenizing p.bin" in capsys.readouterr().err


# ------------------------------------------------------------- token files

def test_raw_nanogpt_files(tmp_path):
    ids = np.arange(1000, dtype=np.uint16)[::-1].copy()
    (tmp_path / "train.bin").write_bytes(ids.tobytes())
    got = open_tokens(tmp_path / "train.bin", dtype="uint16")
    assert isinstance(got, np.memmap) and got.dtype == np.uint16
    np.testing.assert_array_equal(got, ids)
    np.testing.assert_array_equal(open_tokens(tmp_path / "train.bin", dtype=np.uint32), ids.view("<u4"))
    with pytest.raises(ValueError, match="bad magic.*dtype='uint16'"):
        open_tokens(tmp_path / "train.bin")
    (tmp_path / "odd.bin").write_bytes(b"\x01\x02\x03")
    with pytest.raises(ValueError, match=r"odd\.bin.*3 bytes.*uint16"):
        open_tokens(tmp_path / "odd.bin", dtype="uint16")
    (tmp_path / "empty.bin").write_bytes(b"")
    assert open_tokens(tmp_path / "empty.bin", dtype="uint16").shape == (0,)
    with pytest.raises(ValueError, match="dtype must be uint16 or uint32"):
        open_tokens(tmp_path / "train.bin", dtype="int8")
    # A fastlm file opens with a dtype too, when it matches the header.
    write_tokens(tmp_path / "f.bin", [1, 2, 3])
    assert open_tokens(tmp_path / "f.bin", dtype="uint16").tolist() == [1, 2, 3]
    with pytest.raises(ValueError, match=r"f\.bin.*uint16 ids, not the dtype=uint32"):
        open_tokens(tmp_path / "f.bin", dtype="uint32")


def test_token_writer(tmp_path):
    p = tmp_path / "w.bin"
    with TokenWriter(p, "uint16") as w:
        w.write(np.array([1, 2, 3]))
        w.write([])
        w.write([65535])
        assert w.count == 4 and not p.exists()
    assert open_tokens(p).tolist() == [1, 2, 3, 65535]
    with pytest.raises(ValueError, match="id 65536 at position 6 does not fit uint16"):
        with TokenWriter(p, "uint16") as w:
            w.write([0, 1, 2, 3, 4])
            w.write([7, 65536])
    assert open_tokens(p).tolist() == [1, 2, 3, 65535]  # the old file is kept
    with pytest.raises(ValueError, match="id -1"):
        with TokenWriter(p, "uint32") as w:
            w.write(np.array([-1]))
    with pytest.raises(TypeError, match="integer"):
        with TokenWriter(p, "uint32") as w:
            w.write(np.array([1.5]))
    with pytest.raises(ValueError, match="not open"):
        TokenWriter(p, "uint16").write([1])
    with pytest.raises(ValueError, match="dtype"):
        TokenWriter(p, "float32")
    assert sorted(os.listdir(tmp_path)) == ["w.bin"]


def test_fit_reads_a_prepared_dataset(tok, tmp_path):
    import fastlm
    d = _files(tmp_path, [PROSE])
    prepare_dataset([d], tmp_path / "data", tok, progress=False)
    model = fastlm.Transformer(tok.vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=16, tokenizer=tok)
    hist = model.fit(str(tmp_path / "data" / "train.bin"), val=str(tmp_path / "data" / "val.bin"),
                     steps=2, batch_size=2, eval_interval=2, progress=False)
    assert len(hist) == 2 and hist[-1]["val_loss"] is not None

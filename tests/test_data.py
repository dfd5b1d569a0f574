"""Corpora, token files and batches."""
from __future__ import annotations

import os
import struct

import numpy as np
import pytest

from fastlm.data import (default_corpus, get_batch, iter_eval_batches, open_tokens, read_text,
                         tokens_from_text, train_val_split, write_tokens)
from fastlm.tokenizers import ByteTokenizer, CharTokenizer

HEADER = 24


# --------------------------------------------------------------------------- text

def test_read_text(tmp_path):
    p = tmp_path / "in.txt"
    p.write_bytes("a\u00e9\r\nb\n".encode("utf-8"))
    assert read_text(p) == "a\u00e9\r\nb\n"
    assert read_text(str(p)) == "a\u00e9\r\nb\n"
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        read_text(tmp_path / "missing.txt")
    p.write_bytes(b"ok\xff")
    with pytest.raises(ValueError, match="UTF-8.*byte offset 2"):
        read_text(p)


def test_tokens_from_text():
    ids = tokens_from_text("hello", CharTokenizer.from_text("helo"))
    assert ids.dtype == np.int32 and ids.tolist() == [1, 0, 2, 2, 3]
    assert tokens_from_text("\u00e9", ByteTokenizer()).tolist() == [0xC3, 0xA9]
    with pytest.raises(TypeError, match="encode"):
        tokens_from_text("x", object())
    with pytest.raises(TypeError, match="text"):
        tokens_from_text(b"x", ByteTokenizer())


def test_train_val_split():
    data = np.arange(1000, dtype=np.int32)
    train, val = train_val_split(data)
    n = int(0.9 * len(data))  # nanoGPT
    assert np.array_equal(train, data[:n]) and np.array_equal(val, data[n:])
    assert len(train) == 900 and len(val) == 100
    assert np.shares_memory(train, data)  # views
    tr, va = train_val_split(data, 0.0)
    assert len(tr) == 1000 and len(va) == 0
    tr, va = train_val_split("abcdefghij", 0.3)
    assert tr == "abcdefg" and va == "hij"
    for bad in (1.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="val_fraction"):
            train_val_split(data, bad)
    with pytest.raises(TypeError, match="val_fraction"):
        train_val_split(data, "0.1")
    with pytest.raises(TypeError, match="val_fraction"):
        train_val_split(data, True)
    with pytest.raises(ValueError, match="1-D"):
        train_val_split(np.zeros((4, 4)), 0.5)


# -------------------------------------------------------------------- token files

@pytest.mark.parametrize("hi,dtype", [(65535, np.uint16), (65536, np.uint32), (2**32 - 1, np.uint32)])
def test_write_open_round_trip(tmp_path, hi, dtype):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, hi, size=10_001, dtype=np.int64)
    ids[123] = hi
    p = tmp_path / "t.bin"
    assert write_tokens(p, ids) == np.dtype(dtype)
    assert os.path.getsize(p) == HEADER + ids.size * np.dtype(dtype).itemsize
    with open(p, "rb") as f:
        assert f.read(8) == b"FASTLMTK"
    m = open_tokens(p)
    assert isinstance(m, np.memmap)
    assert m.dtype == np.dtype(dtype) and m.shape == ids.shape
    assert np.array_equal(m, ids)
    assert not m.flags.writeable
    with pytest.raises(ValueError):
        m[0] = 1
    del m


def test_write_tokens_inputs_and_explicit_dtype(tmp_path):
    p = tmp_path / "t.bin"
    assert write_tokens(p, [1, 2, 3]) == np.uint16
    assert open_tokens(p).tolist() == [1, 2, 3]
    assert write_tokens(p, np.array([1, 2], dtype=np.uint8), dtype="uint32") == np.uint32
    assert open_tokens(p).dtype == np.uint32 and open_tokens(p).tolist() == [1, 2]
    assert write_tokens(p, np.array([7], dtype=np.uint64), dtype=np.uint16) == np.uint16
    assert open_tokens(p).tolist() == [7]
    # empty
    write_tokens(p, [])
    e = open_tokens(p)
    assert e.shape == (0,) and e.dtype == np.uint16 and not e.flags.writeable
    # non-contiguous input
    write_tokens(p, np.arange(20)[::3])
    assert open_tokens(p).tolist() == list(range(0, 20, 3))


def test_write_tokens_errors_keep_old_file(tmp_path):
    p = tmp_path / "t.bin"
    write_tokens(p, [5, 6])
    before = p.read_bytes()
    with pytest.raises(ValueError, match=r"id -1 at position 1 is negative"):
        write_tokens(p, np.array([0, -1, 2]))
    with pytest.raises(ValueError, match=r"id 4294967296 at position 0"):
        write_tokens(p, np.array([2**32], dtype=np.int64))
    with pytest.raises(ValueError, match=r"2\*\*32"):
        write_tokens(p, [1, 2**70])
    with pytest.raises(ValueError, match="does not fit dtype uint16"):
        write_tokens(p, [70000], dtype="uint16")
    with pytest.raises(ValueError, match="dtype must be uint16 or uint32"):
        write_tokens(p, [1], dtype="int64")
    with pytest.raises(ValueError, match="dtype must be uint16 or uint32"):
        write_tokens(p, [1], dtype=3.5)
    with pytest.raises(TypeError, match="integer"):
        write_tokens(p, np.array([1.0, 2.0]))
    with pytest.raises(TypeError):
        write_tokens(p, "abc")
    with pytest.raises(ValueError, match="1-D"):
        write_tokens(p, np.zeros((2, 2), dtype=np.int64))
    assert p.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["t.bin"]


def test_open_tokens_while_the_file_is_replaced(tmp_path, monkeypatch):
    # A writer renames a new token file (another dtype and length) into place
    # right after the header was read: the map must still be the file whose
    # header it read, never the new bytes under the old header.
    from fastlm import data
    path = tmp_path / "t.bin"
    write_tokens(path, np.arange(6), dtype=np.uint16)
    write_tokens(tmp_path / "new.bin", np.arange(4464, 4470), dtype=np.uint32)
    real_open = open

    class ReplacedAfterHeader:
        def __init__(self, f):
            self.f = f

        def read(self, n):
            out = self.f.read(n)
            os.replace(tmp_path / "new.bin", path)
            return out

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(data, "open", lambda *a, **k: ReplacedAfterHeader(real_open(*a, **k)), raising=False)
    tokens = open_tokens(path)
    monkeypatch.undo()
    np.testing.assert_array_equal(tokens, np.arange(6))
    np.testing.assert_array_equal(open_tokens(path), np.arange(4464, 4470))


def test_open_tokens_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        open_tokens(tmp_path / "missing.bin")
    good = tmp_path / "good.bin"
    write_tokens(good, np.arange(100))
    data = good.read_bytes()

    def put(name, blob):
        q = tmp_path / name
        q.write_bytes(blob)
        return q

    q = put("trunc.bin", data[:-1])
    with pytest.raises(ValueError, match=r"trunc\.bin.*truncated"):
        open_tokens(q)
    q = put("trail.bin", data + b"\x00\x00")
    with pytest.raises(ValueError, match=r"trail\.bin.*trailing"):
        open_tokens(q)
    q = put("short.bin", data[:10])
    with pytest.raises(ValueError, match=r"short\.bin.*truncated"):
        open_tokens(q)
    q = put("magic.bin", b"NOTATOKN" + data[8:])
    with pytest.raises(ValueError, match=r"magic\.bin.*bad magic"):
        open_tokens(q)
    q = put("raw.bin", np.arange(10, dtype=np.uint16).tobytes())  # nanoGPT-style raw .bin
    with pytest.raises(ValueError, match="bad magic"):
        open_tokens(q)
    q = put("dtype.bin", data[:12] + struct.pack("<I", 9) + data[16:])
    with pytest.raises(ValueError, match=r"dtype\.bin.*unknown dtype code 9"):
        open_tokens(q)
    q = put("version.bin", data[:8] + struct.pack("<I", 2) + data[12:])
    with pytest.raises(ValueError, match=r"version\.bin.*version 2"):
        open_tokens(q)
    q = put("empty.bin", b"")
    with pytest.raises(ValueError, match="truncated"):
        open_tokens(q)


# ------------------------------------------------------------------------ batches

def test_get_batch_shapes_and_offsets():
    tokens = np.arange(1000, dtype=np.uint16)
    rng = np.random.default_rng(7)
    x, y = get_batch(tokens, 8, 32, rng)
    assert x.shape == y.shape == (8, 32)
    assert x.dtype == y.dtype == np.int64
    assert x.flags.c_contiguous and y.flags.c_contiguous
    assert np.array_equal(y[:, :-1], x[:, 1:])
    # tokens are arange, so each row is i..i+31 with y = x + 1
    assert np.array_equal(y, x + 1)
    assert np.array_equal(x - x[:, :1], np.broadcast_to(np.arange(32), (8, 32)))
    # same seed -> same batch; next draw differs
    x2, y2 = get_batch(tokens, 8, 32, np.random.default_rng(7))
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    x3, _ = get_batch(tokens, 8, 32, rng)
    assert not np.array_equal(x, x3)


def test_get_batch_offset_range_and_memmap(tmp_path):
    # n = block + 2: offsets can only be 0 or 1 (nanoGPT: randint(n - block))
    tokens = np.arange(10, dtype=np.int32)
    starts = set()
    rng = np.random.default_rng(0)
    for _ in range(50):
        x, y = get_batch(tokens, 4, 8, rng)
        starts.update(x[:, 0].tolist())
        assert np.all(y[:, -1] <= 9)
    assert starts == {0, 1}
    # exactly block + 1 tokens: the only offset is 0
    x, y = get_batch(np.arange(9), 3, 8, rng)
    assert np.all(x[:, 0] == 0) and np.all(y[:, -1] == 8)
    # memmapped token file
    p = tmp_path / "t.bin"
    write_tokens(p, np.arange(70000) % 70000)
    m = open_tokens(p)
    x, y = get_batch(m, 2, 16, np.random.default_rng(1))
    assert x.dtype == np.int64 and np.array_equal(y, x + 1)


def test_get_batch_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"need at least block_size \+ 1 = 9 tokens, got 8"):
        get_batch(np.arange(8), 2, 8, rng)
    with pytest.raises(ValueError, match="batch_size"):
        get_batch(np.arange(100), 0, 8, rng)
    with pytest.raises(ValueError, match="block_size"):
        get_batch(np.arange(100), 2, -1, rng)
    with pytest.raises(TypeError, match="block_size"):
        get_batch(np.arange(100), 2, 8.0, rng)
    with pytest.raises(TypeError, match="rng"):
        get_batch(np.arange(100), 2, 8, 42)
    with pytest.raises(TypeError, match="integer"):
        get_batch(np.arange(100.0), 2, 8, rng)
    with pytest.raises(ValueError, match="1-D"):
        get_batch(np.zeros((10, 10), dtype=np.int32), 2, 4, rng)


def test_iter_eval_batches():
    n, block, bs = 103, 10, 4
    tokens = np.arange(n, dtype=np.uint32)
    batches = list(iter_eval_batches(tokens, bs, block))
    # (103 - 1) // 10 = 10 windows -> batches of 4, 4, 2
    assert [x.shape for x, _ in batches] == [(4, 10), (4, 10), (2, 10)]
    xs = np.concatenate([x for x, _ in batches])
    ys = np.concatenate([y for _, y in batches])
    assert xs.dtype == ys.dtype == np.int64
    assert np.array_equal(xs.ravel(), np.arange(100))  # consecutive, non-overlapping
    assert np.array_equal(ys, xs + 1)
    # deterministic, and max_batches limits
    again = list(iter_eval_batches(tokens, bs, block))
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(batches, again))
    assert len(list(iter_eval_batches(tokens, bs, block, max_batches=2))) == 2
    assert len(list(iter_eval_batches(tokens, bs, block, max_batches=99))) == 3
    # exactly block + 1 tokens -> one window
    (x, y), = list(iter_eval_batches(np.arange(11), 4, 10))
    assert x.tolist() == [list(range(10))] and y.tolist() == [list(range(1, 11))]


def test_iter_eval_batches_errors_are_eager():
    with pytest.raises(ValueError, match="need at least"):
        iter_eval_batches(np.arange(5), 2, 5)  # raises at the call, before iteration
    with pytest.raises(ValueError, match="max_batches"):
        iter_eval_batches(np.arange(50), 2, 5, max_batches=0)
    with pytest.raises(TypeError, match="batch_size"):
        iter_eval_batches(np.arange(50), None, 5)


# ------------------------------------------------------------------------- corpus

def test_default_corpus():
    a = default_corpus()
    assert isinstance(a, str)
    size = len(a.encode("utf-8"))
    assert 1_000_000 < size <= 4_000_000
    assert "def " in a and "import " in a
    assert default_corpus() == a  # deterministic
    small = default_corpus(max_bytes=1000)
    assert len(small.encode("utf-8")) <= 1000 and a.startswith(small)
    # a char tokenizer over it round-trips
    tok = CharTokenizer.from_text(a)
    assert tok.decode(tok.encode(a[:10000])) == a[:10000]
    with pytest.raises(ValueError, match="max_bytes"):
        default_corpus(0)
    with pytest.raises(TypeError, match="max_bytes"):
        default_corpus(1.5)

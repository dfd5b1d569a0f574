"""Checkpoints from others: files that are not regular files, oversized files and
headers that do not fit their file end in a ValueError naming the file, at once
and with bounded memory; and saving many times keeps the save registry small."""
from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import fastlm
from fastlm import _io as fio
from fastlm import checkpoint as ck
from fastlm.cli import main
from fastlm.tokenizers import CharTokenizer

pytestmark = pytest.mark.skipif(os.name != "posix", reason="FIFOs and /dev/zero are POSIX")

FILES = [ck.CONFIG_FILE, ck.MODEL_FILE, ck.TOKENIZER_FILE, ck.OPTIMIZER_FILE, ck.TRAINER_STATE_FILE]


def full_checkpoint(path):
    w = np.arange(12, dtype=np.float32).reshape(4, 3)
    ck.save_checkpoint(path, config={"model_type": "toy"}, tensors={"w": w},
                       optimizer={"step": 3, "exp_avg": {"w": w}, "exp_avg_sq": {"w": w}},
                       trainer_state={"step": 3, "history": []}, tokenizer=CharTokenizer(list("abc")))
    assert sorted(os.listdir(path)) == sorted(FILES)


def load_in_thread(path, timeout=30):
    """load_checkpoint's outcome; a load still blocked after ``timeout`` fails
    the test (the thread is a daemon, and its FIFO is opened for writing
    afterwards to release it)."""
    out = {}

    def run():
        try:
            out["value"] = ck.load_checkpoint(path)
        except BaseException as e:  # noqa: BLE001 - reported to the test
            out["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    return t.is_alive(), out


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("kind", ["fifo", "dev_zero", "directory"])
def test_a_file_that_is_not_a_regular_file_is_refused(tmp_path, name, kind):
    ckpt = tmp_path / "ckpt"
    full_checkpoint(ckpt)
    target = ckpt / name
    target.unlink()
    if kind == "fifo":
        fifo = tmp_path / "fifo"
        os.mkfifo(fifo)
        target.symlink_to(fifo)  # a link to it, as a hostile checkpoint would hold
    elif kind == "dev_zero":
        target.symlink_to("/dev/zero")
    else:
        target.mkdir()
    blocked, out = load_in_thread(ckpt)
    if blocked:  # release the reader before failing
        with open(tmp_path / "fifo", "wb"):
            pass
    assert not blocked, f"load blocked on a {kind} as {name}"
    err = out.get("error")
    assert isinstance(err, ValueError), out
    assert repr(str(target)) in str(err) and "not a regular file" in str(err)
    want = {"fifo": "a FIFO", "dev_zero": "a character device", "directory": "a directory"}[kind]
    assert want in str(err)


@pytest.mark.parametrize("name", [ck.CONFIG_FILE, ck.TOKENIZER_FILE, ck.TRAINER_STATE_FILE])
def test_an_oversized_json_file_is_refused_before_it_is_read(tmp_path, name):
    ckpt = tmp_path / "ckpt"
    full_checkpoint(ckpt)
    limit = ck._JSON_LIMITS[name]
    with open(ckpt / name, "r+b") as f:
        f.truncate(limit + 1)  # sparse: no disk, and nothing read
    with pytest.raises(ValueError, match=f"larger than the {limit} bytes such a file may hold"):
        ck.load_checkpoint(ckpt)


def test_json_limits_leave_room_for_real_files(tmp_path):
    """A long run's trainer state and a large tokenizer are well within the bounds."""
    assert ck._JSON_LIMITS[ck.CONFIG_FILE] >= 1 << 20
    assert ck._JSON_LIMITS[ck.TOKENIZER_FILE] >= 32 << 20
    history = [{"step": i, "loss": 1.0 / (i + 1), "lr": 1e-3, "grad_norm": 0.5, "tokens_per_sec": 1e5,
                "val_loss": None} for i in range(100_000)]
    ckpt = tmp_path / "ckpt"
    ck.save_checkpoint(ckpt, config={"model_type": "toy"}, tensors={"w": np.zeros(2, np.float32)},
                       trainer_state={"step": 100_000, "history": history})
    assert os.path.getsize(ckpt / ck.TRAINER_STATE_FILE) * 10 < ck._JSON_LIMITS[ck.TRAINER_STATE_FILE]
    assert len(ck.load_checkpoint(ckpt).trainer_state["history"]) == 100_000


@pytest.mark.parametrize("header", [1 << 62, 10 ** 6, 2 ** 64 - 1])
def test_a_safetensors_header_larger_than_its_file_is_refused(tmp_path, header):
    ckpt = tmp_path / "ckpt"
    full_checkpoint(ckpt)
    path = ckpt / ck.MODEL_FILE
    data = bytearray(path.read_bytes())
    data[:8] = header.to_bytes(8, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"corrupt or truncated \(a \d+-byte file cannot hold a header of"):
        ck.load_checkpoint(ckpt)


def test_a_short_safetensors_file_is_refused(tmp_path):
    ckpt = tmp_path / "ckpt"
    full_checkpoint(ckpt)
    (ckpt / ck.MODEL_FILE).write_bytes(b"\x01\x02")
    with pytest.raises(ValueError, match="model.safetensors' is corrupt or truncated"):
        ck.load_checkpoint(ckpt)


def test_read_bounded_and_open_regular(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"x" * 10)
    assert fio.read_bounded(str(p), 10) == b"x" * 10
    with pytest.raises(ValueError, match=r"file '.*f' is larger than the 9 bytes"):
        fio.read_bounded(str(p), 9)
    with pytest.raises(FileNotFoundError):
        fio.read_bounded(str(tmp_path / "missing"), 10)
    with pytest.raises(ValueError, match="is a character device, not a regular file"):
        fio.open_regular("/dev/zero", "input")


def test_save_registry_stays_bounded(tmp_path):
    before = len(fio._MINE)
    for i in range(30):
        ck.save_checkpoint(tmp_path / "ckpt", config={"model_type": "toy", "i": i},
                           tensors={"w": np.full(3, i, np.float32)})
    assert len(fio._MINE) == before
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]
    with pytest.raises(TypeError):  # a failed save forgets its name too
        ck.save_checkpoint(tmp_path / "ckpt", config={"model_type": object()}, tensors={})
    assert len(fio._MINE) == before
    assert ck.load_checkpoint(tmp_path / "ckpt").config["i"] == 29


def test_sample_on_a_regular_file_says_so(tmp_path, capsys):
    f = tmp_path / "model.bin"
    f.write_bytes(b"not a checkpoint")
    assert main(["sample", str(f), "--prompt", "a"]) == 2
    err = capsys.readouterr().err
    assert f"{str(f)!r} is not a directory" in err and "not found" not in err
    assert main(["sample", str(tmp_path / "missing"), "--prompt", "a"]) == 2
    assert "not found" in capsys.readouterr().err

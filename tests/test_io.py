"""Atomic writes: the target holds the old or the new content, never a mix;
checkpoint directories survive killed saves and overlapping loads."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest

from fastlm import _io as fio
from fastlm import checkpoint as ck
from fastlm._io import atomic_open, atomic_replace_dir, atomic_write


def _leftovers(directory, keep):
    return sorted(set(os.listdir(directory)) - set(keep))


def test_atomic_write_bytes_and_str(tmp_path):
    p = tmp_path / "a.bin"
    atomic_write(p, b"\x00\x01\x02")
    assert p.read_bytes() == b"\x00\x01\x02"
    atomic_write(str(p), "h\u00e9llo\r\n")  # str paths too; UTF-8, newlines untouched
    assert p.read_bytes() == "h\u00e9llo\r\n".encode("utf-8")
    assert _leftovers(tmp_path, ["a.bin"]) == []


def test_atomic_write_rejects_other_types(tmp_path):
    p = tmp_path / "a"
    p.write_bytes(b"old")
    with pytest.raises(TypeError, match="data"):
        atomic_write(p, 123)
    assert p.read_bytes() == b"old"


def test_atomic_open_error_keeps_old_file(tmp_path):
    p = tmp_path / "ckpt.bin"
    p.write_bytes(b"old content")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_open(p) as f:
            f.write(b"new partial")
            f.flush()
            raise RuntimeError("boom")
    assert p.read_bytes() == b"old content"
    assert _leftovers(tmp_path, ["ckpt.bin"]) == []  # temp file removed


def test_atomic_open_error_creates_nothing(tmp_path):
    p = tmp_path / "new.bin"
    with pytest.raises(KeyError):
        with atomic_open(p) as f:
            f.write(b"x")
            raise KeyError("x")
    assert os.listdir(tmp_path) == []


def test_atomic_open_text_mode_and_replace(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("old")
    with atomic_open(p, "w") as f:
        # not visible before the with block ends
        f.write("new \u2713\n")
        assert p.read_text() == "old"
    assert p.read_text(encoding="utf-8") == "new \u2713\n"


def test_atomic_open_keeps_permissions(tmp_path):
    p = tmp_path / "perm"
    p.write_bytes(b"x")
    os.chmod(p, 0o640)
    atomic_write(p, b"y")
    assert os.stat(p).st_mode & 0o777 == 0o640


def test_atomic_open_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        with atomic_open(tmp_path / "x", "ab"):
            pass
    with pytest.raises(ValueError, match="mode"):
        with atomic_open(tmp_path / "x", "rb"):
            pass
    with pytest.raises(FileNotFoundError, match="directory"):
        atomic_write(tmp_path / "missing" / "x", b"1")
    with pytest.raises(IsADirectoryError):
        atomic_write(tmp_path, b"1")
    with pytest.raises(TypeError, match="path"):
        atomic_write(3.5, b"1")
    assert os.listdir(tmp_path) == []


def test_atomic_replace_dir_new_and_existing(tmp_path):
    final = tmp_path / "ckpt"
    tmp = tmp_path / ".ckpt.tmp"
    tmp.mkdir()
    (tmp / "model.bin").write_bytes(b"v1")
    atomic_replace_dir(tmp, final)
    assert (final / "model.bin").read_bytes() == b"v1"
    assert not tmp.exists()

    tmp.mkdir()
    (tmp / "model.bin").write_bytes(b"v2")
    (tmp / "sub").mkdir()
    (tmp / "sub" / "opt.bin").write_bytes(b"o2")
    atomic_replace_dir(str(tmp), str(final))
    assert (final / "model.bin").read_bytes() == b"v2"
    assert (final / "sub" / "opt.bin").read_bytes() == b"o2"
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]  # old copy deleted


def test_atomic_replace_dir_errors(tmp_path):
    final = tmp_path / "ckpt"
    final.mkdir()
    (final / "model.bin").write_bytes(b"old")
    with pytest.raises(FileNotFoundError, match="tmp_dir"):
        atomic_replace_dir(tmp_path / "nope", final)
    f = tmp_path / "file"
    f.write_bytes(b"")
    with pytest.raises(NotADirectoryError, match="tmp_dir"):
        atomic_replace_dir(f, final)
    src = tmp_path / "src"
    src.mkdir()
    with pytest.raises(NotADirectoryError, match="final_dir"):
        atomic_replace_dir(src, f)
    with pytest.raises(ValueError, match="same"):
        atomic_replace_dir(final, final)
    with pytest.raises(ValueError, match="inside"):
        atomic_replace_dir(final, final / "sub")
    assert (final / "model.bin").read_bytes() == b"old"


def _old_and_new(tmp_path):
    """A directory "ckpt" holding model.bin b"old", and a replacement "new" holding b"new"."""
    final = tmp_path / "ckpt"
    final.mkdir()
    (final / "model.bin").write_bytes(b"old")
    tmp = tmp_path / "new"
    tmp.mkdir()
    (tmp / "model.bin").write_bytes(b"new")
    return final, tmp


def test_atomic_replace_dir_failed_rename_restores_old(tmp_path, monkeypatch):
    final, tmp = _old_and_new(tmp_path)
    real_rename = os.rename

    def flaky(a, b):
        if os.fspath(a) == str(tmp):
            raise OSError("simulated failure")
        return real_rename(a, b)

    monkeypatch.setattr(os, "rename", flaky)
    monkeypatch.setattr(fio, "_exchange", lambda a, b: False)  # the two-rename fallback
    with pytest.raises(OSError, match="simulated"):
        atomic_replace_dir(tmp, final)
    monkeypatch.undo()
    assert (final / "model.bin").read_bytes() == b"old"
    assert (tmp / "model.bin").read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path)) == ["ckpt", "new"]


def _dead_pid():
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_atomic_replace_dir_swaps_in_one_step_where_it_can(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    exchanges = fio._exchange(str(tmp_path / "a"), str(tmp_path / "b"))  # this file system can?
    os.rmdir(tmp_path / "a"), os.rmdir(tmp_path / "b")
    final, tmp = _old_and_new(tmp_path)
    renames = []
    real_rename = os.rename
    monkeypatch.setattr(os, "rename", lambda a, b: renames.append((a, b)) or real_rename(a, b))
    atomic_replace_dir(tmp, final)
    assert (final / "model.bin").read_bytes() == b"new" and sorted(os.listdir(tmp_path)) == ["ckpt"]
    if exchanges:
        assert renames == []  # renameat2's exchange: no moment without a checkpoint


def test_tidy_siblings_restores_and_removes_what_a_killed_save_left(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative path works too
    host, dead, live = fio._HOST, _dead_pid(), os.getppid()
    mine = os.path.basename(fio.sibling_dir(str(tmp_path / "ckpt"), "tmp"))
    keep = [f".ckpt.tmp-{host}-{live}-0c",  # a live process's
            ".ckpt.tmp-otherhost-1-0d",  # another machine's: its pids mean nothing here
            f".other.tmp-{host}-1-0e", mine,  # another directory's; one this process is writing
            f".ckpt.tmp-{host}-99999999999-0f"]  # no pid at all
    gone = [f".ckpt.tmp-{host}-{dead}-0b",
            f".ckpt.tmp-{host}-{os.getpid()}-0a"]  # our pid, not our name: a restarted container's
    for name in keep + gone + [f".ckpt.old-{host}-{dead}-0a"]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.bin").write_bytes(b"old" if ".old-" in name else b"x")
    fio.tidy_siblings("ckpt")
    assert (tmp_path / "ckpt" / "model.bin").read_bytes() == b"old"  # killed between the fallback's renames
    assert sorted(os.listdir(tmp_path)) == sorted(keep + ["ckpt"])


def _tiny_checkpoint(path, value, **kw):
    ck.save_checkpoint(path, config={"model_type": "toy", "value": value},
                       tensors={"w": np.full((4, 3), value, np.float32)},
                       trainer_state={"step": value}, **kw)


def test_load_restores_a_checkpoint_left_between_renames(tmp_path):
    _tiny_checkpoint(tmp_path / "ckpt", 1)
    os.rename(tmp_path / "ckpt", tmp_path / f".ckpt.old-{fio._HOST}-{_dead_pid()}-0a")
    got = ck.load_checkpoint(tmp_path / "ckpt")
    assert got.config["value"] == 1 and sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_load_overlapping_a_save_reads_one_checkpoint_whole(tmp_path, monkeypatch):
    path = tmp_path / "ckpt"
    _tiny_checkpoint(path, 1)
    real = ck._read_safetensors
    saves = iter([2, 3])

    def save_meanwhile(p, required=True):  # another process replaces the directory mid-read
        out = real(p, required)
        value = next(saves, None)
        if value is not None:
            _tiny_checkpoint(path, value)
        return out

    monkeypatch.setattr(ck, "_read_safetensors", save_meanwhile)
    got = ck.load_checkpoint(path)
    assert got.config["value"] == got.trainer_state["step"] == 3
    np.testing.assert_array_equal(got.tensors["w"], 3)


def test_save_through_a_symlink_keeps_the_link(tmp_path):
    (tmp_path / "real").mkdir()
    os.symlink("real", tmp_path / "latest")
    _tiny_checkpoint(tmp_path / "latest", 1)
    _tiny_checkpoint(tmp_path / "latest", 2)
    assert os.path.islink(tmp_path / "latest")
    assert ck.load_checkpoint(tmp_path / "real").config["value"] == 2
    assert sorted(os.listdir(tmp_path)) == ["latest", "real"]
    (tmp_path / "file.txt").write_text("a")
    os.symlink("file.txt", tmp_path / "link.txt")
    atomic_write(tmp_path / "link.txt", "b")
    assert os.path.islink(tmp_path / "link.txt") and (tmp_path / "file.txt").read_text() == "b"


def test_save_carries_symlinks_and_replaces_a_read_only_directory(tmp_path):
    path = tmp_path / "ckpt"
    _tiny_checkpoint(path, 1)
    os.symlink("does-not-exist", path / "latest.log")  # carried over as a link, never followed
    os.chmod(path, 0o555)
    _tiny_checkpoint(path, 2)
    _tiny_checkpoint(path, 3)
    assert os.readlink(path / "latest.log") == "does-not-exist"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o555
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]  # the replaced read-only copies are gone
    assert ck.load_checkpoint(path).config["value"] == 3
    os.chmod(path, 0o755)


def test_save_keeps_the_directory_and_file_permissions(tmp_path):
    path = tmp_path / "ckpt"
    _tiny_checkpoint(path, 1)
    os.chmod(path / ck.CONFIG_FILE, 0o600)
    os.chmod(path, 0o700)
    _tiny_checkpoint(path, 2)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(path / ck.CONFIG_FILE).st_mode) == 0o600
    assert ck.load_checkpoint(path).config["value"] == 2


@pytest.mark.parametrize("version, match", [("1", "must be an integer"), (True, "must be an integer"),
                                            (99, "unsupported format_version 99")])
def test_read_config_format_version(tmp_path, version, match):
    _tiny_checkpoint(tmp_path / "ckpt", 1)
    cfg = tmp_path / "ckpt" / ck.CONFIG_FILE
    cfg.write_text(f'{{"model_type": "toy", "format_version": {json.dumps(version)}}}')
    with pytest.raises(ValueError, match=match):
        ck.read_config(tmp_path / "ckpt")

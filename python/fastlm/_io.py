"""Crash-safe file writing, and bounded reading of files from others.

A reader (or a resumed run after a crash or ``kill -9``) must see either the
old complete file or the new complete file, never a half-written one. Every
writer here therefore writes into a temporary file *in the same directory* as
the target, flushes and ``fsync``s it, and ``os.replace``s it over the target
(an atomic rename on POSIX and Windows when both lie on one file system), then
``fsync``s the directory so the rename itself survives a power loss.

* :func:`atomic_write` -- write a whole ``bytes``/``str`` payload.
* :func:`atomic_open` -- a context manager giving a file object to write into.
* :func:`atomic_replace_dir` -- move a fully written directory (a checkpoint)
  into place; :func:`sibling_dir` names the hidden directories beside it
  (:func:`forget_sibling` once done with one), :func:`tidy_siblings`
  restores or removes those a killed process left.
* :func:`open_regular`, :func:`read_bounded` -- read a file that may come
  from someone else: only a regular file, only up to a size limit.

A symlink is written through: its target is replaced, the link stays.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import shutil
import socket
import stat
import sys
import tempfile
import uuid
from typing import IO, Iterator, Optional, Union

__all__ = ["atomic_write", "atomic_open", "atomic_replace_dir", "sibling_dir", "forget_sibling",
           "tidy_siblings", "open_regular", "read_bounded"]

PathLike = Union[str, "os.PathLike[str]"]

_WRITE_MODES = {"wb": "wb", "bw": "wb", "w": "w", "wt": "w", "tw": "w"}


def _current_umask() -> int:
    # os.umask can only be read by setting it; do it once, at import.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _check_path(path: PathLike, name: str = "path") -> str:
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    try:
        p = os.fspath(path)
    except TypeError:
        raise TypeError(f"{name} must be a str or os.PathLike, got {type(path).__name__}") from None
    if not isinstance(p, str):
        p = os.fsdecode(p)
    if p == "":
        raise ValueError(f"{name} must not be empty")
    return p


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a regular file"


def open_regular(path: str, what: str = "file") -> int:
    """A file descriptor for reading ``path`` (links followed), which must be
    a regular file: ``ValueError`` naming it otherwise (a link to
    ``/dev/zero`` would never end, a FIFO would block forever). The open
    itself does not block on a FIFO (``O_NONBLOCK``, cleared once the file is
    known to be regular). The caller closes the descriptor."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{what} {path!r} is {_file_kind(st.st_mode)}, not a regular file; refusing to read it")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_bounded(path: str, limit: int, what: str = "file") -> bytes:
    """The content of the regular file ``path`` (see :func:`open_regular`),
    at most ``limit`` bytes: ``ValueError`` naming the file when it is
    larger (or grows past the limit while read)."""
    with os.fdopen(open_regular(path, what), "rb") as f:
        size = os.fstat(f.fileno()).st_size
        data = f.read(limit + 1) if size <= limit else b""
        if size > limit or len(data) > limit:
            raise ValueError(f"{what} {path!r} is larger than the {limit} bytes such a file may hold "
                             f"({max(size, len(data))} bytes)")
    return data


def _fsync_path(path: str) -> None:
    """fsync a file, or a directory so renames inside it are durable (best
    effort: not every platform or file system lets it be opened or synced)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "wb", *, encoding: str = "utf-8") -> Iterator[IO]:
    """Open ``path`` for writing so that it is replaced atomically on success.

    Usage::

        with atomic_open("ckpt/model.bin") as f:
            f.write(header)
            f.write(payload)

    The ``with`` body writes to a temporary file next to ``path`` (same
    directory, hence same file system). When the body finishes without an
    exception the file is flushed, ``fsync``ed, closed and ``os.replace``d onto
    ``path``, and the directory is ``fsync``ed. When the body raises, the
    temporary file is removed and ``path`` -- if it existed -- is left exactly
    as it was; the exception propagates.

    mode: ``"wb"`` (binary, the default) or ``"w"`` (text, with ``encoding``,
    newlines written as given). Appending or reading modes are rejected with
    ``ValueError``. The new file gets the permissions of the file it replaces,
    or the usual ``0o666 & ~umask`` for a new file.
    The parent directory must exist (``FileNotFoundError`` otherwise).
    """
    path = _check_path(path)
    if os.path.islink(path):  # written through: the target is replaced, the link stays
        path = os.path.realpath(path)
    if not isinstance(mode, str):
        raise TypeError(f"mode must be a str, got {type(mode).__name__}")
    if mode not in _WRITE_MODES:
        raise ValueError(f"mode must be 'wb' or 'w' (atomic_open only writes whole files), got {mode!r}")
    mode = _WRITE_MODES[mode]
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"atomic_open: directory {directory!r} of path {path!r} does not exist")
    if os.path.isdir(path):
        raise IsADirectoryError(f"atomic_open: path {path!r} is a directory")

    try:
        perm = os.stat(path).st_mode & 0o7777
    except OSError:
        perm = 0o666 & ~_UMASK

    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        try:
            os.chmod(tmp, perm)
        except OSError:
            pass
        if mode == "wb":
            f = os.fdopen(fd, "wb")
        else:
            f = os.fdopen(fd, "w", encoding=encoding, newline="")
        fd = -1  # now owned by f
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = ""
        _fsync_path(directory)
    finally:
        if fd != -1:
            os.close(fd)
        if tmp:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def atomic_write(path: PathLike, data: Union[bytes, bytearray, memoryview, str], *,
                 encoding: str = "utf-8") -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_open`).

    data: ``bytes``-like, written as is, or ``str``, encoded with ``encoding``
    (UTF-8 by default; newlines are not translated). Any other type raises
    ``TypeError`` before anything is touched. After a crash ``path`` holds
    either its previous content or all of ``data``.
    """
    if isinstance(data, str):
        payload = data.encode(encoding)
    elif isinstance(data, (bytes, bytearray, memoryview)):
        payload = bytes(data)
    else:
        raise TypeError(f"data must be bytes or str, got {type(data).__name__}")
    with atomic_open(path, "wb") as f:
        f.write(payload)


def _fsync_tree(root: str) -> None:
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p) and os.path.isfile(p):
                _fsync_path(p)
        _fsync_path(dirpath)


# This machine, as sibling names record it: a directory left by a process of
# another machine sharing the file system is never taken for one of ours.
_HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"
# The sibling names this process made and has not finished with: a name
# leaves the set once its directory is renamed away or removed
# (forget_sibling), so the set holds only the saves in flight.
_MINE: set = set()


def sibling_dir(final_dir: str, kind: str) -> str:
    """A fresh hidden name beside ``final_dir`` for a directory of this process:
    ``.<name>.<kind>-<host>-<pid>-<random>``, kind ``"tmp"`` (being written) or
    ``"old"`` (the replaced copy, deleted once the new one is in place)."""
    parent, name = os.path.split(final_dir)
    entry = f".{name}.{kind}-{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    _MINE.add(entry)
    return os.path.join(parent, entry)


def forget_sibling(path: str) -> None:
    """Drop the name of a :func:`sibling_dir` this process is done with (its
    directory renamed away or removed). Should removing it have failed, the
    directory now counts as left by a dead process, and the next
    :func:`tidy_siblings` deletes it."""
    _MINE.discard(os.path.basename(path))


def _left_by_a_dead_process(entry: str, pid: int) -> bool:
    """Whether the process that named ``entry`` (on this machine) is gone. Our
    own pid counts as gone for a name this process did not make (a restarted
    container reuses pids); off POSIX nothing is judged gone."""
    if os.name != "posix":
        return False
    if pid == os.getpid():
        return entry not in _MINE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (OSError, OverflowError):  # alive under another owner, or no pid at all
        return False
    return False


def tidy_siblings(final_dir: str) -> None:
    """Clean up after a process of this machine killed while replacing
    ``final_dir``: restore the newest ``old`` copy when ``final_dir`` is missing
    (the kill fell between the two renames of the fallback swap), and delete
    the ``tmp`` and ``old`` directories of processes no longer running. Best
    effort: what cannot be listed, renamed or removed is left as it is."""
    parent, name = os.path.split(os.path.abspath(final_dir))
    pattern = re.compile(r"\." + re.escape(name) + r"\.(tmp|old)-" + _HOST + r"-(\d{1,10})-[0-9a-f]+")
    try:
        entries = os.listdir(parent)
    except OSError:
        return
    dead = []
    for entry in entries:
        m = pattern.fullmatch(entry)
        if m and _left_by_a_dead_process(entry, int(m.group(2))):
            dead.append((m.group(1), os.path.join(parent, entry)))
    if not os.path.lexists(final_dir):
        olds = sorted((p for kind, p in dead if kind == "old"), key=os.path.getmtime)
        if olds:
            try:
                os.rename(olds[-1], final_dir)
                dead.remove(("old", olds[-1]))
            except OSError:
                pass
    for _, p in dead:
        _remove_tree(p)


def _remove_tree(path: str) -> None:
    """Delete a replaced or abandoned copy, even one whose mode (copied from a
    read-only checkpoint) lacks owner write; best effort."""
    try:
        os.chmod(path, stat.S_IMODE(os.lstat(path).st_mode) | stat.S_IRWXU)
    except OSError:
        pass
    shutil.rmtree(path, ignore_errors=True)


def _exchange(a: str, b: str) -> bool:
    """Swap the directory entries ``a`` and ``b`` in one atomic step (Linux's
    renameat2 with RENAME_EXCHANGE); False where the C library or the file
    system cannot, so the caller falls back to two renames."""
    fn = getattr(_LIBC, "renameat2", None)
    if fn is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), a, None, b)


def _load_libc() -> Optional[ctypes.CDLL]:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except (OSError, TypeError):
        return None


_LIBC = _load_libc()


def atomic_replace_dir(tmp_dir: PathLike, final_dir: PathLike, *, fsync: bool = True) -> None:
    """Move the fully written directory ``tmp_dir`` to ``final_dir``, replacing
    any existing ``final_dir``.

    Intended for checkpoints: write every file into a fresh sibling directory
    (e.g. ``out/.ckpt.tmp-1234``), then call this. Steps:

    1. with ``fsync=True`` (default), ``fsync`` every file in ``tmp_dir`` and
       the directory itself, so its content is durable before it becomes
       visible;
    2. if ``final_dir`` exists, exchange the two in one atomic step (Linux), so
       that ``tmp_dir`` now holds the old copy; where the system cannot, rename
       ``final_dir`` aside to a hidden sibling (:func:`sibling_dir`, kind
       ``old``), then ``tmp_dir`` to ``final_dir`` (if this fails the old
       directory is renamed back and the error propagates, so nothing is lost);
    3. ``fsync`` the parent directory, then delete the old copy.

    A crash leaves either the old or the new complete directory under
    ``final_dir``, except, on the fallback, in the short window between its two
    renames, where ``final_dir`` is missing and the old copy sits complete
    under its ``old`` name; :func:`tidy_siblings` restores it, and removes a
    leftover old copy or unfinished ``tmp_dir`` of a killed process.

    ``tmp_dir`` and ``final_dir`` must be on the same file system (best: the
    same parent directory), otherwise the rename fails with ``OSError``.
    Raises ``FileNotFoundError`` if ``tmp_dir`` does not exist,
    ``NotADirectoryError`` if ``tmp_dir`` or an existing ``final_dir`` is not
    a directory, ``ValueError`` if both name the same directory or one lies
    inside the other.
    """
    src = os.path.abspath(_check_path(tmp_dir, "tmp_dir"))
    dst = os.path.abspath(_check_path(final_dir, "final_dir"))
    if os.path.islink(dst):
        dst = os.path.realpath(dst)
    if not os.path.exists(src):
        raise FileNotFoundError(f"atomic_replace_dir: tmp_dir {src!r} does not exist")
    if not os.path.isdir(src):
        raise NotADirectoryError(f"atomic_replace_dir: tmp_dir {src!r} is not a directory")
    if os.path.lexists(dst) and not os.path.isdir(dst):
        raise NotADirectoryError(f"atomic_replace_dir: final_dir {dst!r} exists and is not a directory")
    if src == dst:
        raise ValueError(f"atomic_replace_dir: tmp_dir and final_dir are the same directory {src!r}")
    if (dst + os.sep).startswith(src + os.sep) or (src + os.sep).startswith(dst + os.sep):
        raise ValueError(f"atomic_replace_dir: one of tmp_dir {src!r} and final_dir {dst!r} lies inside the other")
    parent = os.path.dirname(dst)
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"atomic_replace_dir: parent directory {parent!r} of final_dir does not exist")

    if fsync:
        _fsync_tree(src)

    old = ""
    if os.path.lexists(dst) and _exchange(src, dst):
        old = src  # the old copy, now under tmp_dir's name
    else:
        if os.path.lexists(dst):
            old = sibling_dir(dst, "old")
            os.rename(dst, old)
        try:
            os.rename(src, dst)
        except BaseException:
            if old:
                os.rename(old, dst)
            raise
    _fsync_path(parent)
    if os.path.dirname(src) != parent:
        _fsync_path(os.path.dirname(src))
    if old:
        _remove_tree(old)
        forget_sibling(old)

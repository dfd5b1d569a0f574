"""Corpora, token files and batches.

The nanoGPT flow::

    text = read_text("input.txt")                 # or default_corpus()
    tok = CharTokenizer.from_text(text)
    ids = tokens_from_text(text, tok)             # 1-D int32
    train, val = train_val_split(ids, 0.1)        # first 90% / last 10%
    write_tokens("train.bin", train)              # header + uint16/uint32 ids
    data = open_tokens("train.bin")               # read-only memmap
    x, y = get_batch(data, 12, 64, rng)           # (12, 64) int64 each

Token file format (little-endian, 24-byte header, then the ids)::

    offset 0   8 bytes   magic  b"FASTLMTK"
    offset 8   uint32    format version (1)
    offset 12  uint32    dtype code: 1 = uint16, 2 = uint32
    offset 16  uint64    count (number of ids)
    offset 24  count * itemsize bytes of ids

nanoGPT's ``train.bin``/``val.bin`` (raw uint16 ids, no header) open with
``open_tokens(path, dtype="uint16")``. Corpora of any size are written a
chunk at a time with :class:`TokenWriter` (:mod:`fastlm.corpus` tokenizes
files into one).
"""
from __future__ import annotations

import os
import struct
import sysconfig
from types import TracebackType
from typing import IO, Any, ContextManager, Iterator, Optional, Sequence, Tuple, TypeVar, Union

import numpy as np

from ._checks import check_int as _check_int
from ._io import atomic_open

__all__ = [
    "read_text",
    "train_val_split",
    "write_tokens",
    "open_tokens",
    "TokenWriter",
    "get_batch",
    "iter_eval_batches",
    "default_corpus",
    "list_text_files",
    "tokens_from_text",
]

PathLike = Union[str, "os.PathLike[str]"]
T = TypeVar("T")

TOKEN_FILE_MAGIC = b"FASTLMTK"
TOKEN_FILE_VERSION = 1
_HEADER = struct.Struct("<8sIIQ")
TOKEN_FILE_HEADER_SIZE = _HEADER.size  # 24
_DTYPE_CODES = {1: np.dtype("<u2"), 2: np.dtype("<u4")}
_CODE_OF = {np.dtype("<u2"): 1, np.dtype("<u4"): 2}
_WRITE_CHUNK = 1 << 22  # ids per write, bounds the temporary copy


def _fspath(path: Any, name: str = "path") -> str:
    try:
        p = os.fspath(path)
    except TypeError:
        raise TypeError(f"{name} must be a str or os.PathLike, got {type(path).__name__}") from None
    return os.fsdecode(p)


def _ids_int64(window: np.ndarray, who: str) -> np.ndarray:
    """A window of token ids as int64; uint64 ids past int64's range (which a
    cast would wrap to negative ids) raise ValueError."""
    if window.dtype == np.uint64 and window.size and int(window.max()) > np.iinfo(np.int64).max:
        raise ValueError(f"{who}: token id {int(window.max())} does not fit int64")
    return window.astype(np.int64)


def _check_tokens_1d(tokens: Any, name: str) -> np.ndarray:
    """1-D integer ndarray view of tokens (memmaps stay memmaps, no copy); the
    errors name them ``name`` (e.g. "get_batch: tokens")."""
    if isinstance(tokens, np.ndarray):
        arr = tokens
    elif isinstance(tokens, (str, bytes, bytearray)):
        raise TypeError(f"{name} must be a 1-D integer array, got {type(tokens).__name__}")
    else:
        arr = np.asarray(tokens)
        if arr.size == 0 and arr.ndim == 1:
            arr = arr.astype(np.int64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D token ids, got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array, got dtype {arr.dtype}")
    return arr


# --------------------------------------------------------------------------- text

def read_text(path: PathLike) -> str:
    """The file at ``path`` decoded as UTF-8 (strict; newlines kept as in the file).

    Raises ``FileNotFoundError`` naming ``path`` if it does not exist and
    ``ValueError`` naming ``path`` and the byte offset if it is not valid UTF-8.
    """
    p = _fspath(path)
    if not os.path.exists(p):
        raise FileNotFoundError(f"read_text: no such file {p!r}")
    with open(p, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"read_text: {p!r} is not valid UTF-8 (byte offset {e.start}: {e.reason})") from None


def tokens_from_text(text: str, tokenizer: Any) -> np.ndarray:
    """``tokenizer.encode(text)``: a 1-D ``int32`` array of ids.

    ``tokenizer`` is any object with an ``encode(str) -> ndarray`` method
    (:class:`~fastlm.tokenizers.CharTokenizer`, :class:`~fastlm.tokenizers.ByteTokenizer`).
    """
    if not isinstance(text, str):
        raise TypeError(f"tokens_from_text: text must be a str, got {type(text).__name__}")
    if not callable(getattr(tokenizer, "encode", None)):
        raise TypeError(f"tokens_from_text: tokenizer must have an encode method, got {type(tokenizer).__name__}")
    ids = np.asarray(tokenizer.encode(text))
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise TypeError(f"tokens_from_text: tokenizer.encode returned {ids.dtype} array of shape {ids.shape}, "
                        "expected a 1-D integer array")
    return ids.astype(np.int32, copy=False)


def train_val_split(tokens: Sequence[T], val_fraction: float = 0.1) -> Tuple[Sequence[T], Sequence[T]]:
    """Split into ``(train, val)``: the first ``int(n * (1 - val_fraction))``
    items and the rest, as nanoGPT (``n = int(0.9 * len(data))``).

    tokens: a 1-D array (the results are views, no copy) or any sliceable
    sequence (str, list). val_fraction: a float in ``[0, 1)``; 0 gives an empty
    ``val``. Raises ``TypeError`` for a non-number and ``ValueError`` for a
    fraction outside ``[0, 1)`` or a multi-dimensional array.
    """
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float, np.integer, np.floating)):
        raise TypeError(f"val_fraction must be a float, got {type(val_fraction).__name__}")
    f = float(val_fraction)
    if not (0.0 <= f < 1.0):  # also rejects NaN
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if isinstance(tokens, np.ndarray) and tokens.ndim != 1:
        raise ValueError(f"train_val_split: tokens must be 1-D, got shape {tokens.shape}")
    try:
        n = len(tokens)
    except TypeError:
        raise TypeError(f"train_val_split: tokens must be an array or sequence, got {type(tokens).__name__}") from None
    n_train = int(n * (1.0 - f))
    n_train = min(max(n_train, 0), n)
    return tokens[:n_train], tokens[n_train:]


# -------------------------------------------------------------------- token files

def _resolve_dtype(dtype: Any, who: str = "write_tokens") -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise ValueError(f"{who}: dtype must be uint16 or uint32, got {dtype!r}") from None
    dt = dt.newbyteorder("<")
    if dt not in _CODE_OF:
        raise ValueError(f"{who}: dtype must be uint16 or uint32, got {dtype!r}")
    return dt


def write_tokens(path: PathLike, tokens: Any, dtype: Any = None) -> np.dtype:
    """Write ids to a token file (format in the module docstring), atomically.

    tokens: 1-D integer array or list of ints, each in ``[0, 2**32)``.
    dtype: ``None`` (default) picks ``uint16`` if every id is below 65536,
    else ``uint32``; or ``"uint16"`` / ``"uint32"`` (or the NumPy types).
    Returns the dtype written.

    Raises ``TypeError`` for non-integer tokens, ``ValueError`` for a
    non-1-D array, a negative id, an id ``>= 2**32`` or one that does not fit
    the requested dtype (naming the id and its position), or another dtype.
    """
    p = _fspath(path)
    arr = tokens if isinstance(tokens, np.ndarray) else None
    if arr is None:
        if isinstance(tokens, (str, bytes)):
            raise TypeError(f"write_tokens: tokens must be an integer array, got {type(tokens).__name__}")
        try:
            n = len(tokens)
        except TypeError:
            raise TypeError(f"write_tokens: tokens must be an integer array, got {type(tokens).__name__}") from None
        arr = np.zeros(0, dtype=np.int64) if n == 0 else np.asarray(tokens)
    if arr.ndim != 1:
        raise ValueError(f"write_tokens: tokens must be 1-D, got shape {arr.shape}")
    if arr.dtype == object:
        vals = arr.tolist()
        for i, v in enumerate(vals):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"write_tokens: tokens must be integers, got {type(v).__name__} at position {i}")
            if not 0 <= v < 2 ** 32:
                raise ValueError(f"write_tokens: id {v} at position {i} is out of range [0, 2**32)")
        arr = np.asarray(vals, dtype=np.uint64)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"write_tokens: tokens must be an integer array, got dtype {arr.dtype}")

    n = int(arr.shape[0])
    lo = int(arr.min()) if n else 0
    hi = int(arr.max()) if n else 0
    if lo < 0:
        i = int(np.argmax(arr < 0))
        raise ValueError(f"write_tokens: id {int(arr[i])} at position {i} is negative")
    if hi >= 2 ** 32:
        i = int(np.argmax(arr >= 2 ** 32))
        raise ValueError(f"write_tokens: id {int(arr[i])} at position {i} is >= 2**32 (too large for uint32)")
    if dtype is None:
        dt = np.dtype("<u2") if hi < 2 ** 16 else np.dtype("<u4")
    else:
        dt = _resolve_dtype(dtype)
        limit = 2 ** (8 * dt.itemsize)
        if hi >= limit:
            i = int(np.argmax(arr >= limit))
            raise ValueError(f"write_tokens: id {int(arr[i])} at position {i} does not fit dtype {dt.name} "
                             f"(max {limit - 1}); use dtype=None or 'uint32'")

    with TokenWriter(p, dt) as w:
        for start in range(0, n, _WRITE_CHUNK):
            w.write(arr[start:start + _WRITE_CHUNK])
    return w.dtype


def open_tokens(path: PathLike, dtype: Any = None) -> np.ndarray:
    """Open a token file written by :func:`write_tokens` without reading it
    into memory.

    dtype: ``None`` (a fastlm token file, with its header) or ``"uint16"`` /
    ``"uint32"`` to also read a raw file of ids without a header, as
    nanoGPT's ``prepare.py`` writes ``train.bin`` (uint16). A fastlm file
    opens either way; its header's dtype must then equal ``dtype``.

    Returns a read-only 1-D ``np.memmap`` of dtype ``uint16`` or ``uint32``
    (little-endian) and length = the header's count (an empty read-only
    ndarray when the count is 0, as an empty file region cannot be mapped).

    Raises ``FileNotFoundError`` naming ``path`` if it does not exist and
    ``ValueError`` naming ``path`` and the problem for a file shorter than the
    header, a bad magic (not a token file), an unsupported version, an unknown
    dtype code, or a size that does not match the count (truncated or
    trailing bytes).

    The map reads the file as it is when each token is touched: replace a
    token file (:func:`write_tokens` writes a new one and renames it into
    place, which is safe), never truncate it in place while a map is open,
    which the operating system answers with SIGBUS, ending the process.
    """
    p = _fspath(path)
    raw = None if dtype is None else _resolve_dtype(dtype, "open_tokens")
    if not os.path.exists(p):
        raise FileNotFoundError(f"open_tokens: no such file {p!r}")
    if os.path.isdir(p):
        raise IsADirectoryError(f"open_tokens: {p!r} is a directory")
    # Size, header and map all come from one open file: a writer that renames a
    # new file into place meanwhile cannot pair this header with that file.
    with open(p, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(TOKEN_FILE_HEADER_SIZE)
        if raw is not None and head[:len(TOKEN_FILE_MAGIC)] != TOKEN_FILE_MAGIC:
            return _map_raw(f, p, size, raw)
        if len(head) >= len(TOKEN_FILE_MAGIC) and head[:len(TOKEN_FILE_MAGIC)] != TOKEN_FILE_MAGIC:
            raise ValueError(f"open_tokens: {p!r} is not a fastlm token file "
                             f"(bad magic {head[:8]!r}, expected {TOKEN_FILE_MAGIC!r}; "
                             "a raw file of ids such as nanoGPT's train.bin opens with dtype='uint16')")
        if len(head) < TOKEN_FILE_HEADER_SIZE:
            raise ValueError(f"open_tokens: {p!r} is truncated: {size} bytes, "
                             f"shorter than the {TOKEN_FILE_HEADER_SIZE}-byte header")
        magic, version, code, count = _HEADER.unpack(head)
        if version != TOKEN_FILE_VERSION:
            raise ValueError(f"open_tokens: {p!r} has unsupported format version {version} "
                             f"(this fastlm reads version {TOKEN_FILE_VERSION})")
        if code not in _DTYPE_CODES:
            raise ValueError(f"open_tokens: {p!r} has unknown dtype code {code} "
                             f"(known: 1 = uint16, 2 = uint32)")
        dt = _DTYPE_CODES[code]
        if raw is not None and raw != dt:
            raise ValueError(f"open_tokens: {p!r} holds {dt.name} ids, not the dtype={raw.name} asked for")
        expected = TOKEN_FILE_HEADER_SIZE + count * dt.itemsize
        if size < expected:
            raise ValueError(f"open_tokens: {p!r} is truncated: header says {count} {dt.name} ids "
                             f"({expected} bytes in all) but the file is {size} bytes")
        if size > expected:
            raise ValueError(f"open_tokens: {p!r} has {size - expected} unexpected trailing bytes "
                             f"after {count} {dt.name} ids (file corrupt?)")
        return _map(f, dt, TOKEN_FILE_HEADER_SIZE, count)


def _map(f: IO[bytes], dt: np.dtype, offset: int, count: int) -> np.ndarray:
    if count == 0:  # an empty file region cannot be mapped
        empty = np.zeros(0, dtype=dt)
        empty.flags.writeable = False
        return empty
    return np.memmap(f, dtype=dt, mode="r", offset=offset, shape=(count,))


def _map_raw(f: IO[bytes], p: str, size: int, dt: np.dtype) -> np.ndarray:
    if size % dt.itemsize:
        raise ValueError(f"open_tokens: {p!r} has {size} bytes, not a whole number of {dt.name} ids "
                         "(truncated, or not a raw token file)")
    return _map(f, dt, 0, size // dt.itemsize)


class TokenWriter:
    """Write a token file a chunk at a time, in bounded memory, atomically.

    ::

        with TokenWriter("train.bin", "uint16") as w:
            for chunk in chunks:
                w.write(ids_of(chunk))     # 1-D integer arrays
        w.count                            # ids written

    dtype: ``"uint16"`` or ``"uint32"``. The file appears at ``path`` (with its
    header's count) only when the ``with`` block ends without an exception;
    otherwise an existing file is left as it was. :meth:`write` raises
    ``ValueError`` naming the id and its position in the file for an id that
    does not fit ``dtype`` (nothing of that chunk is written).
    """

    def __init__(self, path: PathLike, dtype: Any) -> None:
        self._path = _fspath(path)
        self._dt = _resolve_dtype(dtype, "TokenWriter")
        self._limit = 2 ** (8 * self._dt.itemsize)
        self._count = 0
        self._cm: Optional[ContextManager[IO[bytes]]] = None
        self._f: Optional[IO[bytes]] = None

    @property
    def count(self) -> int:
        """Number of ids written so far."""
        return self._count

    @property
    def dtype(self) -> np.dtype:
        """The dtype of the ids in the file."""
        return np.dtype(self._dt.name)

    def __enter__(self) -> "TokenWriter":
        self._cm = atomic_open(self._path, "wb")
        self._f = self._cm.__enter__()
        self._f.write(_HEADER.pack(TOKEN_FILE_MAGIC, TOKEN_FILE_VERSION, _CODE_OF[self._dt], 0))
        return self

    def write(self, ids: Any) -> None:
        """Append ids: a 1-D integer array or list of ints in ``[0, 2**bits)``."""
        if self._f is None:
            raise ValueError("TokenWriter.write: the writer is not open (use it in a with block)")
        arr = _check_tokens_1d(ids, "TokenWriter.write: ids")
        if arr.size:
            lo, hi = int(arr.min()), int(arr.max())
            if lo < 0 or hi >= self._limit:
                bad = lo if lo < 0 else hi
                i = int(np.argmax(arr == bad))
                raise ValueError(f"TokenWriter.write: id {bad} at position {self._count + i} does not fit "
                                 f"{self._dt.name} (range [0, {self._limit}))")
            self._f.write(np.ascontiguousarray(arr, dtype=self._dt).tobytes())
            self._count += int(arr.size)

    def __exit__(self, exc_type: Optional[type], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> Optional[bool]:
        f, cm = self._f, self._cm
        self._f = self._cm = None
        assert f is not None and cm is not None
        if exc_type is None:
            f.seek(0)
            f.write(_HEADER.pack(TOKEN_FILE_MAGIC, TOKEN_FILE_VERSION, _CODE_OF[self._dt], self._count))
            f.seek(0, os.SEEK_END)
        return cm.__exit__(exc_type, exc, tb)


# ------------------------------------------------------------------------ batches

def get_batch(tokens: Any, batch_size: int, block_size: int,
              rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """A random training batch, as nanoGPT's ``get_batch``.

    tokens: 1-D integer array (e.g. from :func:`open_tokens`), length
    ``n >= block_size + 1``. Draws ``batch_size`` offsets ``i`` uniformly from
    ``[0, n - block_size - 1]`` with ``rng`` and returns ``(x, y)``, both
    C-contiguous ``int64`` of shape ``(batch_size, block_size)``, with
    ``x[b] = tokens[i_b : i_b + block_size]`` and
    ``y[b] = tokens[i_b + 1 : i_b + 1 + block_size]`` (the next-token targets).
    The same ``rng`` state gives the same batch.

    Raises ``TypeError`` for a non-Generator ``rng`` or non-integer tokens or
    sizes, ``ValueError`` for sizes < 1 or too few tokens (saying how many are
    needed).
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"get_batch: rng must be a numpy.random.Generator (np.random.default_rng(seed)), "
                        f"got {type(rng).__name__}")
    batch_size = _check_int(batch_size, "batch_size", 1)
    block_size = _check_int(block_size, "block_size", 1)
    arr = _check_tokens_1d(tokens, "get_batch: tokens")
    n = int(arr.shape[0])
    if n < block_size + 1:
        raise ValueError(f"get_batch: need at least block_size + 1 = {block_size + 1} tokens, got {n}")
    ix = rng.integers(0, n - block_size, size=batch_size)
    win = _ids_int64(arr[ix[:, None] + np.arange(block_size + 1)], "get_batch")
    return np.ascontiguousarray(win[:, :-1]), np.ascontiguousarray(win[:, 1:])


def iter_eval_batches(tokens: Any, batch_size: int, block_size: int,
                      max_batches: Optional[int] = None) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """Deterministic evaluation batches over consecutive, non-overlapping windows.

    Window ``k`` starts at ``k * block_size``: ``x = tokens[s : s + block_size]``,
    ``y = tokens[s + 1 : s + 1 + block_size]``, for every ``k`` with
    ``s + block_size + 1 <= n``, i.e. ``(n - 1) // block_size`` windows that
    predict every token but the first, except at most ``block_size - 1``
    tokens at the end (too few for another full window). Windows are grouped in
    order into batches of ``batch_size``; the last batch may have fewer rows.
    Yields ``(x, y)``, both ``int64`` of shape ``(rows, block_size)``, at most
    ``max_batches`` of them (``None``: all).

    Arguments are checked at the call, not at the first ``next``: ``TypeError``
    / ``ValueError`` as :func:`get_batch`, and ``ValueError`` if fewer than
    ``block_size + 1`` tokens are given or ``max_batches < 1``.
    """
    batch_size = _check_int(batch_size, "batch_size", 1)
    block_size = _check_int(block_size, "block_size", 1)
    if max_batches is not None:
        max_batches = _check_int(max_batches, "max_batches", 1)
    arr = _check_tokens_1d(tokens, "iter_eval_batches: tokens")
    n = int(arr.shape[0])
    if n < block_size + 1:
        raise ValueError(f"iter_eval_batches: need at least block_size + 1 = {block_size + 1} tokens, got {n}")
    n_windows = (n - 1) // block_size
    n_batches = -(-n_windows // batch_size)
    if max_batches is not None:
        n_batches = min(n_batches, max_batches)
    return _eval_batches(arr, batch_size, block_size, n_windows, n_batches)


def _eval_batches(arr: np.ndarray, batch_size: int, block_size: int, n_windows: int,
                  n_batches: int) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    for b in range(n_batches):
        w0 = b * batch_size
        rows = min(batch_size, n_windows - w0)
        start = w0 * block_size
        # rows windows of block_size tokens each, plus one token of lookahead.
        flat = _ids_int64(np.asarray(arr[start:start + rows * block_size + 1]), "iter_eval_batches")
        x = flat[:-1].reshape(rows, block_size).copy()
        y = flat[1:].reshape(rows, block_size).copy()
        yield x, y


# ------------------------------------------------------------------------- corpus

def list_text_files(paths: Sequence[Any]) -> List[str]:
    """The files named by ``paths`` (files, or directories walked recursively
    in sorted order, hidden entries skipped), in order. Raises
    ``FileNotFoundError`` naming a path that does not exist and ``ValueError``
    when there are no files."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: List[str] = []
    for item in paths:
        p = _fspath(item, "corpus path")
        if os.path.isdir(p):
            for root, dirs, files in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                out.extend(os.path.join(root, f) for f in sorted(files) if not f.startswith("."))
        elif os.path.isfile(p):
            out.append(p)
        else:
            raise FileNotFoundError(f"corpus: no such file or directory {p!r}")
    if not out:
        raise ValueError(f"corpus: no files in {[os.fspath(x) for x in paths]!r}")
    return out


_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})


def _stdlib_py_files(root: str) -> Iterator[str]:
    """Relative paths of the stdlib's .py files, sorted, skipping third-party
    and test directories."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        rel = os.path.relpath(dirpath, root)
        for name in filenames:
            if name.endswith(".py"):
                found.append(os.path.normpath(os.path.join(rel, name)).replace(os.sep, "/"))
    found.sort()
    return iter(found)


def default_corpus(max_bytes: Optional[int] = 4_000_000) -> str:
    """A real multi-megabyte text present on every machine: the source of the
    running Python's standard library.

    Reads the ``.py`` files under ``sysconfig.get_paths()["stdlib"]`` in sorted
    order of their relative paths, skipping ``site-packages``/``dist-packages``,
    ``test``/``tests`` directories and caches, decodes each as UTF-8 dropping
    undecodable bytes, and concatenates them until ``max_bytes`` UTF-8 bytes
    (the result is cut there, never inside a character; ``None`` = all files).
    Deterministic for a given Python installation (about 4 MB by default; the
    whole stdlib is well over 10 MB).

    Raises ``TypeError``/``ValueError`` for a non-int or ``max_bytes < 1`` and
    ``FileNotFoundError`` if the stdlib directory is missing.
    """
    if max_bytes is not None:
        max_bytes = _check_int(max_bytes, "max_bytes", 1)
    root = sysconfig.get_paths()["stdlib"]
    if not os.path.isdir(root):
        raise FileNotFoundError(f"default_corpus: standard library directory {root!r} not found")
    parts = []
    total = 0
    for rel in _stdlib_py_files(root):
        try:
            with open(os.path.join(root, rel), "rb") as f:
                raw = f.read()
        except OSError:
            continue
        data = raw.decode("utf-8", errors="ignore").encode("utf-8")
        if max_bytes is not None and total + len(data) >= max_bytes:
            parts.append(data[:max_bytes - total])
            total = max_bytes
            break
        parts.append(data)
        total += len(data)
    return b"".join(parts).decode("utf-8", errors="ignore")

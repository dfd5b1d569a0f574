"""Tokenizers: text <-> 1-D arrays of integer ids.

* :class:`CharTokenizer` -- one id per character, vocabulary = the sorted
  unique characters of a training text (nanoGPT's ``shakespeare_char``).
* :class:`ByteTokenizer` -- one id per UTF-8 byte, vocabulary 256; encodes any
  text, decodes any id sequence (invalid UTF-8 becomes U+FFFD).
* :class:`fastlm.bpe.BPETokenizer` -- byte-level BPE on Hugging Face
  ``tokenizers``; it registers itself here (:func:`register_hf_tokenizer`).

All encode to a 1-D ``int32`` array, decode from a list or a 1-D integer
array, serialise to JSON (:meth:`Tokenizer.to_json`, :meth:`Tokenizer.save`)
and are rebuilt by :func:`tokenizer_from_json` / :func:`load_tokenizer`.
fastlm's own JSON has a ``"type"`` field; a Hugging Face ``tokenizer.json``
(no ``"type"``, a ``"model"`` object) is read as a BPE tokenizer.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Sequence, Union

import numpy as np

from ._io import atomic_write

__all__ = [
    "Tokenizer",
    "CharTokenizer",
    "ByteTokenizer",
    "tokenizer_from_dict",
    "tokenizer_from_json",
    "load_tokenizer",
    "register_hf_tokenizer",
]

#: What ``decode`` accepts: a sequence of ints or a 1-D integer array.
IdsLike = Union[Sequence[int], np.ndarray]

_FORMAT_VERSION = 1


def _as_id_array(ids: Any, vocab_size: int, who: str) -> np.ndarray:
    """Validate ``ids`` (list/tuple of ints or 1-D integer array) and return a
    1-D int64 array with every entry in [0, vocab_size)."""
    if isinstance(ids, (str, bytes, bytearray)):
        raise TypeError(f"{who}: ids must be a list or 1-D integer array, got {type(ids).__name__}")
    if isinstance(ids, np.ndarray):
        arr = ids
    else:
        if not isinstance(ids, (list, tuple, range)) and not hasattr(ids, "__array__"):
            raise TypeError(f"{who}: ids must be a list or 1-D integer array, got {type(ids).__name__}")
        if isinstance(ids, (list, tuple, range)) and len(ids) == 0:
            return np.zeros(0, dtype=np.int64)
        try:
            arr = np.asarray(ids)
        except (ValueError, OverflowError) as e:  # ragged or similar
            raise TypeError(f"{who}: ids must be a flat sequence of ints ({e})") from None
    if arr.ndim != 1:
        raise ValueError(f"{who}: ids must be 1-D, got shape {arr.shape}")
    if arr.dtype == object:
        # Python ints too large for int64, or mixed types.
        for i, v in enumerate(arr.tolist()):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"{who}: ids must be integers, got {type(v).__name__} at position {i}")
            if not 0 <= v < vocab_size:
                raise ValueError(f"{who}: id {v} at position {i} is out of range [0, {vocab_size})")
        return arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        if arr.size == 0:
            return np.zeros(0, dtype=np.int64)
        raise TypeError(f"{who}: ids must be integers, got dtype {arr.dtype}")
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    bad = (arr < 0) | (arr >= vocab_size)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{who}: id {int(arr[i])} at position {i} is out of range [0, {vocab_size})")
    return arr.astype(np.int64, copy=False)


def _check_text(text: Any, who: str) -> str:
    if not isinstance(text, str):
        raise TypeError(f"{who}: text must be a str, got {type(text).__name__}")
    return text


def _codepoints(text: str) -> np.ndarray:
    """Code points of ``text`` as a 1-D uint32 array (lone surrogates kept)."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")


class Tokenizer:
    """Base class: ``encode``, ``decode``, ``vocab_size``, JSON (de)serialisation."""

    #: The value of the JSON ``"type"`` field.
    type_name: str = ""

    @property
    def vocab_size(self) -> int:
        """Number of distinct ids; every id lies in ``[0, vocab_size)``."""
        raise NotImplementedError

    def encode(self, text: str) -> np.ndarray:
        """Encode ``text`` to a 1-D ``int32`` array of ids."""
        raise NotImplementedError

    def decode(self, ids: IdsLike) -> str:
        """Decode a list or 1-D integer array of ids to text."""
        raise NotImplementedError

    def encode_batch(self, texts: Sequence[str]) -> List[np.ndarray]:
        """:meth:`encode` of each text of a list (subclasses may run them in parallel)."""
        if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
            raise TypeError(f"encode_batch: texts must be a list of str, got {type(texts).__name__}")
        return [self.encode(t) for t in texts]

    def to_dict(self) -> Dict[str, Any]:
        """JSON-able description, with ``"type"`` and ``"version"`` fields."""
        raise NotImplementedError

    def to_json(self) -> str:
        """The tokenizer as a JSON string; :func:`tokenizer_from_json` inverts it."""
        return json.dumps(self.to_dict())

    def save(self, path: Union[str, "os.PathLike[str]"]) -> None:
        """Write :meth:`to_json` to ``path`` atomically (a crash leaves the
        old file or the new one, never half of it)."""
        atomic_write(path, self.to_json() + "\n")


class CharTokenizer(Tokenizer):
    """One id per character.

    ``CharTokenizer(chars)`` maps ``chars[i]`` to id ``i``; ``chars`` is a list
    of distinct single-character strings (non-empty). Use
    :meth:`from_text` to build the nanoGPT vocabulary: the sorted unique
    characters of a text.

    Encoding a character that is not in the vocabulary raises ``ValueError``
    naming the character and its position.
    """

    type_name = "char"

    def __init__(self, chars: Sequence[str]) -> None:
        if isinstance(chars, str):
            raise TypeError("CharTokenizer: chars must be a list of single characters, not a str "
                            "(use CharTokenizer.from_text(text) to build the vocabulary from a text)")
        try:
            chars = list(chars)
        except TypeError:
            raise TypeError(f"CharTokenizer: chars must be a list of str, got {type(chars).__name__}") from None
        if not chars:
            raise ValueError("CharTokenizer: chars must not be empty")
        seen: Dict[str, int] = {}
        for i, c in enumerate(chars):
            if not isinstance(c, str):
                raise TypeError(f"CharTokenizer: chars[{i}] must be a str, got {type(c).__name__}")
            if len(c) != 1:
                raise ValueError(f"CharTokenizer: chars[{i}] = {c!r} must be exactly one character")
            if c in seen:
                raise ValueError(f"CharTokenizer: chars[{i}] = {c!r} duplicates chars[{seen[c]}]")
            seen[c] = i
        self._chars: List[str] = chars
        self._stoi: Dict[str, int] = seen
        # id -> code point, and a dense code point -> id table (-1 = unknown).
        self._cps = np.array([ord(c) for c in chars], dtype=np.uint32)
        self._lut = np.full(int(self._cps.max()) + 1, -1, dtype=np.int32)
        self._lut[self._cps] = np.arange(len(chars), dtype=np.int32)

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        """Vocabulary = ``sorted(set(text))`` (nanoGPT's ``shakespeare_char``).
        ``text`` must be a non-empty str."""
        _check_text(text, "CharTokenizer.from_text")
        if not text:
            raise ValueError("CharTokenizer.from_text: text is empty, cannot build a vocabulary")
        uniq = np.unique(_codepoints(text))
        return cls([chr(int(c)) for c in uniq])

    @property
    def chars(self) -> List[str]:
        """The vocabulary: ``chars[i]`` is the character of id ``i`` (a copy)."""
        return list(self._chars)

    @property
    def stoi(self) -> Dict[str, int]:
        """Character -> id (a copy)."""
        return dict(self._stoi)

    @property
    def vocab_size(self) -> int:
        """Number of characters in the vocabulary."""
        return len(self._chars)

    def encode(self, text: str) -> np.ndarray:
        """Encode ``text`` to ids: 1-D ``int32`` array of shape ``(len(text),)``.

        Raises ``TypeError`` if ``text`` is not a str and ``ValueError`` naming
        the first character not in the vocabulary and its position.
        """
        _check_text(text, "CharTokenizer.encode")
        cps = _codepoints(text)
        if cps.size == 0:
            return np.zeros(0, dtype=np.int32)
        in_table = cps < self._lut.size
        ids = np.full(cps.shape, -1, dtype=np.int32)
        ids[in_table] = self._lut[cps[in_table]]
        if (ids < 0).any():
            pos = int(np.argmax(ids < 0))
            raise ValueError(f"CharTokenizer.encode: character {text[pos]!r} at position {pos} "
                             f"is not in the vocabulary (vocab_size={self.vocab_size})")
        return ids

    def decode(self, ids: IdsLike) -> str:
        """Decode ids (list/tuple of ints or 1-D integer array) to text.

        Raises ``TypeError`` for non-integer ids, ``ValueError`` for a non-1-D
        array or an id outside ``[0, vocab_size)`` (naming the id and its
        position).
        """
        arr = _as_id_array(ids, self.vocab_size, "CharTokenizer.decode")
        return self._cps[arr].astype("<u4").tobytes().decode("utf-32-le", "surrogatepass")

    def to_dict(self) -> Dict[str, Any]:
        """``{"type": "char", "version": 1, "chars": [...]}``."""
        return {"type": self.type_name, "version": _FORMAT_VERSION, "chars": list(self._chars)}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CharTokenizer):
            return NotImplemented
        return self._chars == other._chars

    def __hash__(self) -> int:
        return hash(("char", tuple(self._chars)))

    def __repr__(self) -> str:
        s = "".join(self._chars)
        if len(s) > 40:
            s = s[:37] + "..."
        return f"CharTokenizer(vocab_size={self.vocab_size}, chars={s!r})"


class ByteTokenizer(Tokenizer):
    """One id per UTF-8 byte: ``vocab_size == 256``.

    Encodes any text (a lone surrogate, which has no UTF-8 form, raises
    ``ValueError``); decoding invalid UTF-8 byte sequences yields U+FFFD
    (``errors="replace"``), so generated ids always decode.
    """

    type_name = "byte"

    @property
    def vocab_size(self) -> int:
        """Always 256."""
        return 256

    def encode(self, text: str) -> np.ndarray:
        """UTF-8 bytes of ``text`` as a 1-D ``int32`` array of shape ``(len(text.encode()),)``."""
        _check_text(text, "ByteTokenizer.encode")
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"ByteTokenizer.encode: character {text[e.start]!r} at position {e.start} "
                             f"has no UTF-8 encoding ({e.reason})") from None
        return np.frombuffer(data, dtype=np.uint8).astype(np.int32)

    def decode(self, ids: IdsLike) -> str:
        """Bytes ``ids`` (list or 1-D integer array, each in [0, 256)) decoded as
        UTF-8 with ``errors="replace"``. Out-of-range id -> ``ValueError``."""
        arr = _as_id_array(ids, 256, "ByteTokenizer.decode")
        return arr.astype(np.uint8).tobytes().decode("utf-8", errors="replace")

    def to_dict(self) -> Dict[str, Any]:
        """``{"type": "byte", "version": 1}``."""
        return {"type": self.type_name, "version": _FORMAT_VERSION}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ByteTokenizer):
            return NotImplemented
        return True

    def __hash__(self) -> int:
        return hash("byte")

    def __repr__(self) -> str:
        return "ByteTokenizer()"


_TYPES = {"char": CharTokenizer, "byte": ByteTokenizer}
# The class that reads a Hugging Face tokenizer.json (fastlm.bpe registers its own).
_hf_reader: List[Any] = []


def register_hf_tokenizer(cls: Any) -> None:
    """Make :func:`tokenizer_from_dict` read a Hugging Face tokenizer JSON
    with ``cls.from_dict`` (``cls``: a :class:`Tokenizer` subclass)."""
    _hf_reader[:] = [cls]


def tokenizer_from_dict(d: Any) -> Tokenizer:
    """Rebuild a tokenizer from :meth:`Tokenizer.to_dict` output or a Hugging
    Face ``tokenizer.json`` object. Any malformed content raises ``ValueError``."""
    if not isinstance(d, dict):
        raise ValueError(f"tokenizer JSON must be an object, got {type(d).__name__}")
    if "type" not in d and isinstance(d.get("model"), dict):
        if not _hf_reader:
            raise ValueError("a Hugging Face tokenizer JSON needs the 'tokenizers' package (pip install tokenizers)")
        return _hf_reader[0].from_dict(d)
    if "type" not in d:
        raise ValueError("tokenizer JSON has no 'type' field (nor a Hugging Face 'model')")
    kind = d["type"]
    if not isinstance(kind, str) or kind not in _TYPES:
        raise ValueError(f"unknown tokenizer type {kind!r}; known types: {sorted(_TYPES)}")
    version = d.get("version", _FORMAT_VERSION)
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= _FORMAT_VERSION:
        raise ValueError(f"unsupported {kind} tokenizer format version {version!r} "
                         f"(this fastlm reads version <= {_FORMAT_VERSION})")
    if kind == "byte":
        return ByteTokenizer()
    chars = d.get("chars")
    if not isinstance(chars, list):
        raise ValueError("char tokenizer JSON needs a 'chars' list")
    try:
        return CharTokenizer(chars)
    except (TypeError, ValueError) as e:
        raise ValueError(f"invalid char tokenizer JSON: {e}") from None


def tokenizer_from_json(s: Union[str, bytes]) -> Tokenizer:
    """Rebuild a :class:`CharTokenizer` or :class:`ByteTokenizer` from
    :meth:`Tokenizer.to_json` output.

    Raises ``TypeError`` if ``s`` is not str/bytes, ``ValueError`` for text
    that is not JSON, lacks a ``"type"`` field, names an unknown type, or
    carries an invalid vocabulary.
    """
    if isinstance(s, (bytes, bytearray)):
        try:
            s = bytes(s).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"tokenizer JSON is not valid UTF-8: {e}") from None
    if not isinstance(s, str):
        raise TypeError(f"tokenizer_from_json: s must be a str, got {type(s).__name__}")
    try:
        d = json.loads(s)
    except (ValueError, RecursionError) as e:  # not JSON, an integer past Python's digit limit, nesting too deep
        raise ValueError(f"tokenizer JSON is corrupt: {type(e).__name__}: {e}") from None
    return tokenizer_from_dict(d)


def load_tokenizer(path: Union[str, "os.PathLike[str]"]) -> Tokenizer:
    """Load a tokenizer: a file saved with :meth:`Tokenizer.save` (or a
    checkpoint's ``tokenizer.json``), a Hugging Face ``tokenizer.json``, or a
    directory holding a ``tokenizer.json`` (a checkpoint, a Hugging Face model).

    Raises ``FileNotFoundError`` (naming ``path``) if it does not exist,
    ``IsADirectoryError`` for a directory without a ``tokenizer.json`` and
    ``ValueError`` naming the file if its content is not a valid tokenizer.
    """
    p = os.fspath(path)
    if not os.path.exists(p):
        raise FileNotFoundError(f"load_tokenizer: no such file {p!r}")
    if os.path.isdir(p):
        inner = os.path.join(p, "tokenizer.json")
        if not os.path.isfile(inner):
            raise IsADirectoryError(f"load_tokenizer: {p!r} is a directory without a tokenizer.json")
        p = inner
    with open(p, "rb") as f:
        data = f.read()
    try:
        return tokenizer_from_json(data)
    except ValueError as e:
        raise ValueError(f"load_tokenizer: {p!r}: {e}") from None

"""Byte-level BPE (GPT-2 style) on Hugging Face ``tokenizers``.

:class:`BPETokenizer` wraps a ``tokenizers.Tokenizer``: the ids are the
library's own for the same ``tokenizer.json``, and the JSON fastlm writes (in
a checkpoint or with :meth:`BPETokenizer.save`) *is* a Hugging Face
``tokenizer.json``, so ``tokenizers.Tokenizer.from_file`` and
``transformers.AutoTokenizer`` read it too. Importing this module registers
the class with :func:`fastlm.tokenizers.tokenizer_from_dict`, which then
recognises a Hugging Face tokenizer JSON by its ``"model"`` field.

``tokenizers`` is a dependency of fastlm; without it this module still
imports, and using a BPE tokenizer raises ``ImportError`` saying what to
install.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

import numpy as np

from ._checks import check_int
from ._io import atomic_write
from .data import list_text_files
from .tokenizers import IdsLike, Tokenizer, _as_id_array, _check_text, register_hf_tokenizer

try:  # the Hugging Face library, not fastlm.tokenizers
    import tokenizers as _hf
except ImportError:  # pragma: no cover - tokenizers is a dependency
    _hf = None

__all__ = ["BPETokenizer", "DEFAULT_SPECIAL_TOKENS"]

PathLike = Union[str, "os.PathLike[str]"]

#: GPT-2's end-of-text token, the default special token of :meth:`BPETokenizer.train`.
DEFAULT_SPECIAL_TOKENS = ("<|endoftext|>",)

# Names an end-of-sequence token goes by, most common first; the first one in
# the vocabulary becomes eos_token when the files name none.
_EOS_NAMES = ("<|endoftext|>", "</s>", "<eos>", "<|eos|>", "<|end_of_text|>", "[EOS]")
_HF_FILE = "tokenizer.json"
_HF_CONFIG = "tokenizer_config.json"
_HF_SPECIAL_MAP = "special_tokens_map.json"


def _library() -> Any:
    if _hf is None:
        raise ImportError("BPETokenizer needs the Hugging Face 'tokenizers' package: pip install tokenizers")
    return _hf


def _byte_level(model: Any) -> Any:
    """A GPT-2 pipeline around ``model``: no normaliser (the round trip is
    exact), byte-level split with GPT-2's regex and no prefix space, byte-level
    decoder -- what transformers' GPT-2 converter builds."""
    hf = _library()
    tok = hf.Tokenizer(model)
    tok.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = hf.decoders.ByteLevel()
    tok.post_processor = hf.processors.ByteLevel(trim_offsets=False)
    return tok


def _token_name(v: Any) -> Optional[str]:
    """A special token as tokenizer_config.json writes it: a str or {"content": str}."""
    if isinstance(v, dict):
        v = v.get("content")
    return v if isinstance(v, str) else None


class BPETokenizer(Tokenizer):
    """Byte-level BPE backed by a ``tokenizers.Tokenizer``.

    ``BPETokenizer(backend, eos_token=None)`` wraps an existing
    ``tokenizers.Tokenizer`` (any model the library loads; a byte-level BPE
    round-trips any text exactly). Build one with :meth:`train` or
    :meth:`from_pretrained`. ``eos_token``: the end-of-sequence token's text;
    ``None`` picks the first of ``<|endoftext|>``, ``</s>``, ``<eos>``, ...
    present in the vocabulary (or none).

    ``encode`` gives the library's ids as a 1-D ``int32`` array;
    ``decode`` keeps special tokens, so ``decode(encode(text)) == text``.
    """

    type_name = "bpe"  # its JSON is Hugging Face's, which has no "type" field

    def __init__(self, backend: Any, eos_token: Optional[str] = None) -> None:
        hf = _library()
        if isinstance(backend, BPETokenizer):
            backend = backend.backend
        if not isinstance(backend, hf.Tokenizer):
            raise TypeError(f"BPETokenizer: backend must be a tokenizers.Tokenizer, got {type(backend).__name__}")
        self._tok = backend
        vocab = backend.get_vocab(with_added_tokens=True)
        if not vocab:
            raise ValueError("BPETokenizer: the tokenizer has an empty vocabulary")
        # Ids need not be dense (added tokens may sit past the model's vocabulary):
        # every id lies below max + 1.
        self._vocab_size = max(vocab.values()) + 1
        if eos_token is None:
            eos_token = next((t for t in _EOS_NAMES if t in vocab), None)
        elif not isinstance(eos_token, str):
            raise TypeError(f"BPETokenizer: eos_token must be a str or None, got {type(eos_token).__name__}")
        elif eos_token not in vocab:
            raise ValueError(f"BPETokenizer: eos_token {eos_token!r} is not in the vocabulary")
        self._eos = eos_token

    # ------------------------------------------------------------ construction

    @classmethod
    def train(cls, text_or_files: Any, vocab_size: int,
              special_tokens: Sequence[str] = DEFAULT_SPECIAL_TOKENS, *,
              min_frequency: int = 0, show_progress: bool = False) -> "BPETokenizer":
        """Learn a byte-level BPE vocabulary of (at most) ``vocab_size`` ids.

        text_or_files: a ``str`` (the training text), a path object
        (``pathlib.Path``: a file, or a directory whose files are all read),
        a list/tuple of paths (``str`` or path objects) or any other iterable
        of ``str`` texts. The 256 byte symbols and ``special_tokens`` (ids 0..,
        in order) are always in the vocabulary, so ``vocab_size`` must be at
        least ``256 + len(special_tokens)``; a small corpus may give fewer
        merges than asked for. Files are read by the library in bounded memory.
        """
        hf = _library()
        vocab_size = check_int(vocab_size, "BPETokenizer.train: vocab_size", 1)
        min_frequency = check_int(min_frequency, "BPETokenizer.train: min_frequency", 0)
        if isinstance(special_tokens, str) or not all(isinstance(t, str) and t for t in special_tokens):
            raise TypeError("BPETokenizer.train: special_tokens must be a list of non-empty str")
        special = list(dict.fromkeys(special_tokens))
        floor = 256 + len(special)
        if vocab_size < floor:
            raise ValueError(f"BPETokenizer.train: vocab_size {vocab_size} is below 256 byte symbols + "
                             f"{len(special)} special tokens = {floor}")
        tok = _byte_level(hf.models.BPE())
        trainer = hf.trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                         special_tokens=special, show_progress=bool(show_progress),
                                         initial_alphabet=hf.pre_tokenizers.ByteLevel.alphabet())
        files = _training_files(text_or_files)
        if files is not None:
            try:
                tok.train(files, trainer)
            except Exception as e:  # the library raises plain Exception (e.g. for a file that is not UTF-8)
                raise ValueError(f"BPETokenizer.train: cannot read the training files {files[:3]!r}"
                                 f"{' ...' if len(files) > 3 else ''}: {e}") from None
        else:
            texts = [text_or_files] if isinstance(text_or_files, str) else text_or_files
            tok.train_from_iterator(_checked_texts(texts), trainer)
        return cls(tok)

    @classmethod
    def from_pretrained(cls, path: PathLike) -> "BPETokenizer":
        """Load a tokenizer from local files, never the network.

        path: a ``tokenizer.json`` file, or a directory holding one or GPT-2's
        ``vocab.json`` + ``merges.txt``. A directory's ``tokenizer_config.json``
        or ``special_tokens_map.json`` may name the ``eos_token``. Raises
        ``FileNotFoundError`` naming what is missing and ``ValueError`` naming
        the file whose content is invalid.
        """
        hf = _library()
        p = _fspath(path, "BPETokenizer.from_pretrained: path")
        if not os.path.exists(p):
            raise FileNotFoundError(f"BPETokenizer.from_pretrained: no such file or directory {p!r}")
        if not os.path.isdir(p):
            return cls(_read_hf_json(p))
        eos = _configured_eos(p)
        if os.path.isfile(os.path.join(p, _HF_FILE)):
            tok = cls(_read_hf_json(os.path.join(p, _HF_FILE)))
        else:
            vocab, merges = os.path.join(p, "vocab.json"), os.path.join(p, "merges.txt")
            if not (os.path.isfile(vocab) and os.path.isfile(merges)):
                raise FileNotFoundError(f"BPETokenizer.from_pretrained: {p!r} holds neither {_HF_FILE} nor "
                                        "vocab.json + merges.txt")
            try:
                model = hf.models.BPE.from_file(vocab, merges)
            except Exception as e:  # the library raises plain Exception
                raise ValueError(f"BPETokenizer.from_pretrained: {vocab!r} / {merges!r} are not a valid GPT-2 "
                                 f"vocabulary: {e}") from None
            backend = _byte_level(model)
            present = [t for t in _EOS_NAMES if backend.token_to_id(t) is not None]
            backend.add_special_tokens(present[:1] + ([eos] if eos and eos not in present[:1] else []))
            tok = cls(backend)
        if eos is not None and eos in tok._tok.get_vocab(with_added_tokens=True):
            tok._eos = eos
        return tok

    @staticmethod
    def accepts(obj: Any) -> bool:
        """Whether ``obj`` is a ``tokenizers.Tokenizer`` this class wraps."""
        return _hf is not None and isinstance(obj, _hf.Tokenizer)

    # ------------------------------------------------------------------ use

    @property
    def backend(self) -> Any:
        """The wrapped ``tokenizers.Tokenizer``."""
        return self._tok

    @property
    def vocab_size(self) -> int:
        """One past the largest id (special tokens included)."""
        return self._vocab_size

    @property
    def eos_token(self) -> Optional[str]:
        """The end-of-sequence token's text, or None."""
        return self._eos

    @property
    def eos_token_id(self) -> Optional[int]:
        """The end-of-sequence token's id, or None when the vocabulary has none."""
        return None if self._eos is None else self._tok.token_to_id(self._eos)

    def token_to_id(self, token: str) -> Optional[int]:
        """The id of a token's text, or None."""
        return self._tok.token_to_id(_check_text(token, "BPETokenizer.token_to_id"))

    def encode(self, text: str, add_special_tokens: bool = True) -> np.ndarray:
        """Encode ``text`` to a 1-D ``int32`` array, as the library's
        ``Tokenizer.encode(text).ids``. Special tokens written in the text
        (``<|endoftext|>``) become their ids. A lone surrogate, which has no
        UTF-8 form, raises ``ValueError`` naming its position."""
        _check_text(text, "BPETokenizer.encode")
        try:
            ids = self._tok.encode(text, add_special_tokens=add_special_tokens).ids
        except TypeError:
            raise _no_utf8(text, "BPETokenizer.encode") from None
        return np.asarray(ids, dtype=np.int32)

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = True) -> List[np.ndarray]:
        """Encode a list of texts on all cores: one 1-D ``int32`` array each,
        equal to :meth:`encode` of each text."""
        if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
            raise TypeError(f"BPETokenizer.encode_batch: texts must be a list of str, got {type(texts).__name__}")
        for i, t in enumerate(texts):
            _check_text(t, f"BPETokenizer.encode_batch: texts[{i}]")
        try:
            # encode_batch_fast (tokenizers >= 0.21) skips the offsets, which ids do not need.
            batch = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)
            encs = batch(list(texts), add_special_tokens=add_special_tokens)
        except TypeError:
            i, t = next((i, t) for i, t in enumerate(texts) if _has_surrogate(t))
            raise _no_utf8(t, f"BPETokenizer.encode_batch: texts[{i}]") from None
        return [np.asarray(e.ids, dtype=np.int32) for e in encs]

    def decode(self, ids: IdsLike) -> str:
        """Decode ids (list or 1-D integer array) to text, special tokens
        included; byte sequences that are not UTF-8 become U+FFFD.
        An id outside ``[0, vocab_size)`` raises ``ValueError``."""
        arr = _as_id_array(ids, self._vocab_size, "BPETokenizer.decode")
        return self._tok.decode(arr.tolist(), skip_special_tokens=False)

    # ------------------------------------------------------------ persistence

    def to_json(self) -> str:
        """The Hugging Face ``tokenizer.json`` text."""
        return self._tok.to_str()

    def to_dict(self) -> Dict[str, Any]:
        """The Hugging Face ``tokenizer.json`` as a dict (it has no ``"type"``
        field; :func:`fastlm.tokenizers.tokenizer_from_dict` knows it by ``"model"``)."""
        return json.loads(self.to_json())

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "BPETokenizer":
        """Rebuild from :meth:`to_dict` (any Hugging Face tokenizer JSON);
        invalid content raises ``ValueError``."""
        hf = _library()
        try:
            return cls(hf.Tokenizer.from_str(json.dumps(d)))
        except Exception as e:  # the library raises plain Exception
            raise ValueError(f"not a valid Hugging Face tokenizer: {e}") from None

    def save_pretrained(self, directory: PathLike, model_max_length: Optional[int] = None) -> List[str]:
        """Write ``tokenizer.json``, ``tokenizer_config.json`` and
        ``special_tokens_map.json`` into ``directory`` (created if missing) so
        that ``transformers.AutoTokenizer.from_pretrained(directory)`` loads
        this tokenizer. ``model_max_length``: the model's context length, if
        any (transformers then warns about longer inputs). Returns the paths
        written."""
        d = _fspath(directory, "BPETokenizer.save_pretrained: directory")
        if model_max_length is not None:
            model_max_length = check_int(model_max_length, "BPETokenizer.save_pretrained: model_max_length", 1)
        if os.path.exists(d) and not os.path.isdir(d):
            raise ValueError(f"BPETokenizer.save_pretrained: {d!r} exists and is not a directory")
        os.makedirs(d, exist_ok=True)
        special = {}
        if self._eos is not None:
            special = {"bos_token": self._eos, "eos_token": self._eos, "unk_token": self._eos}
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "add_prefix_space": False,
                  "clean_up_tokenization_spaces": False,
                  "model_max_length": int(1e30) if model_max_length is None else model_max_length, **special}
        out = []
        for name, text in ((_HF_FILE, self.to_json()), (_HF_CONFIG, json.dumps(config, indent=2)),
                           (_HF_SPECIAL_MAP, json.dumps(special, indent=2))):
            out.append(os.path.join(d, name))
            atomic_write(out[-1], text + "\n")
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BPETokenizer):
            return NotImplemented
        return self._eos == other._eos and self.to_json() == other.to_json()

    __hash__ = None  # type: ignore[assignment]  # mutable backend

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self._vocab_size}, eos_token={self._eos!r})"


# ------------------------------------------------------------------- helpers

def _fspath(path: Any, name: str) -> str:
    try:
        return os.fsdecode(os.fspath(path))
    except TypeError:
        raise TypeError(f"{name} must be a str or os.PathLike, got {type(path).__name__}") from None


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def _no_utf8(text: str, who: str) -> ValueError:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return ValueError(f"{who}: character {text[e.start]!r} at position {e.start} has no UTF-8 encoding")
    return ValueError(f"{who}: the tokenizer rejected the text")


def _read_hf_json(path: str) -> Any:
    hf = _library()
    try:
        return hf.Tokenizer.from_file(path)
    except Exception as e:  # the library raises plain Exception for every parse failure
        raise ValueError(f"{path!r} is not a valid Hugging Face tokenizer.json: {e}") from None


def _configured_eos(directory: str) -> Optional[str]:
    """The eos_token that tokenizer_config.json / special_tokens_map.json name, if any."""
    for name in (_HF_CONFIG, _HF_SPECIAL_MAP):
        p = os.path.join(directory, name)
        if not os.path.isfile(p):
            continue
        try:
            with open(p, "rb") as f:
                cfg = json.loads(f.read().decode("utf-8"))
        except (ValueError, RecursionError) as e:
            raise ValueError(f"BPETokenizer.from_pretrained: {p!r} is not valid JSON: {e}") from None
        eos = _token_name(cfg.get("eos_token")) if isinstance(cfg, dict) else None
        if eos:
            return eos
    return None


def _training_files(src: Any) -> Optional[List[str]]:
    """The files to train on, or None when ``src`` is text."""
    if isinstance(src, os.PathLike):
        items: Sequence[Any] = [src]
    elif isinstance(src, (list, tuple)) and src and all(isinstance(s, (str, os.PathLike)) for s in src):
        items = src
    else:
        return None
    return list_text_files(items)


def _checked_texts(texts: Iterable[Any]) -> Iterable[str]:
    if isinstance(texts, (bytes, bytearray)) or not hasattr(texts, "__iter__"):
        raise TypeError("BPETokenizer.train: text_or_files must be a str, a path, a list of paths "
                        f"or an iterable of str, got {type(texts).__name__}")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"BPETokenizer.train: text {i} must be a str, got {type(t).__name__}")
        yield t


register_hf_tokenizer(BPETokenizer)

"""Corpus preparation: text files of any size -> token files, in bounded memory.

::

    tok = BPETokenizer.train([Path("corpus/")], vocab_size=8192)
    n = tokenize_files(["corpus/"], "all.bin", tok)      # one token file
    prepare_dataset(["corpus/"], "data/", tok)           # data/train.bin, val.bin, tokenizer.json

Files are read in blocks of a few megabytes and decoded as UTF-8; a BPE
tokenizer encodes each block in pieces with ``encode_batch``, on all cores.
Blocks and pieces are cut between a word character and a following space or
newline: GPT-2's pre-tokenizer never joins the two into one token and looks at
no text before a cut, so for a GPT-2-style byte-level BPE (no normaliser, no
prefix space) the ids equal those of encoding each file whole. Only text that runs
for 64 Mi characters without such a cut (no spaces, no newlines) is cut
anywhere, at a character boundary, the one place ids may differ. Character and byte
tokenizers encode whole blocks (no cut changes their ids). Each file is a
document: its ids follow the previous file's, optionally after the end-of-text
id.
"""
from __future__ import annotations

import codecs
import os
import re
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np

from ._checks import check_float, check_int
from .bpe import BPETokenizer
from .data import TokenWriter, _fspath, list_text_files, open_tokens, train_val_split, write_tokens

__all__ = ["encode_text", "tokenize_files", "prepare_dataset", "token_dtype"]

PathLike = Union[str, "os.PathLike[str]"]

_BLOCK = 1 << 23          # characters read per block
_PIECE = 1 << 16          # characters per piece of an encode_batch call
_SEARCH = 1 << 20         # how far back from a block's end a cut is looked for
# A word character followed by a space or newline: a pre-token boundary.
_CUT = re.compile(r"\w(?=[ \n])")


def token_dtype(vocab_size: int) -> np.dtype:
    """``uint16`` when every id of a ``vocab_size`` vocabulary fits it, else ``uint32``."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def _cuts(text: str, final: bool) -> Iterator[int]:
    """Cut positions splitting ``text`` into pieces of about ``_PIECE``
    characters; the last is ``len(text)`` when ``final``, else the last safe
    cut (0 when none: read more)."""
    start, n = 0, len(text)
    while n - start > _PIECE:
        m = _CUT.search(text, start + _PIECE, min(n, start + 2 * _PIECE))
        if m is None:
            break
        start = m.end()
        yield start
    if final:
        yield n
        return
    lo = max(start, n - _SEARCH)
    last = None
    for last in _CUT.finditer(text, lo, n - 1):
        pass
    if last is not None:
        yield last.end()


def encode_text(tokenizer: Any, text: str) -> np.ndarray:
    """Ids of ``text`` as a 1-D ``int32`` array: ``tokenizer.encode(text)``,
    for a BPE tokenizer encoded in pieces on all cores
    (``tokenizer.encode_batch``), without special tokens a post-processor
    would add (equal to ``encode`` for GPT-2's pipeline; see the module docstring)."""
    if not isinstance(text, str):
        raise TypeError(f"encode_text: text must be a str, got {type(text).__name__}")
    if not isinstance(tokenizer, BPETokenizer):
        # Character and byte tokenizers are vectorised already, and their
        # errors then give positions in the whole text.
        return np.asarray(tokenizer.encode(text)).astype(np.int32, copy=False)
    bounds = [0, *_cuts(text, True)]
    pieces = [text[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]
    # No BOS/EOS that a post-processor might add to every piece.
    ids = tokenizer.encode_batch(pieces, add_special_tokens=False)
    return np.concatenate(ids).astype(np.int32, copy=False) if ids else np.zeros(0, np.int32)


def _file_blocks(path: str, progress: Any) -> Iterator[str]:
    """The UTF-8 text of ``path`` in blocks ending at safe cuts."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    pending = ""
    offset = 0
    with open(path, "rb") as f:
        while True:
            raw = f.read(_BLOCK)
            try:
                pending += decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as e:
                raise ValueError(f"corpus file {path!r} is not valid UTF-8 "
                                 f"(near byte offset {offset + e.start}: {e.reason})") from None
            offset += len(raw)
            if progress is not None:
                progress.update(len(raw))
            if not raw:
                if pending:
                    yield pending
                return
            cut = max((*_cuts(pending, False), 0))
            if cut == 0 and len(pending) >= 8 * _BLOCK:
                cut = len(pending)  # no cut in far too long a stretch: bound the memory
            if cut:
                yield pending[:cut]
                pending = pending[cut:]


def tokenize_files(paths: Sequence[Any], out: PathLike, tokenizer: Any, *, append_eos: bool = False,
                   progress: bool = True) -> int:
    """Tokenize text files (or directories of them) into one token file.

    paths: files/directories (see :func:`fastlm.data.list_text_files`), read as UTF-8.
    out: the token file to write (:func:`fastlm.data.open_tokens` reads it),
    ``uint16`` when the vocabulary fits, else ``uint32``; written atomically.
    tokenizer: any fastlm tokenizer (BPE encodes on all cores).
    append_eos: put ``tokenizer.eos_token_id`` after each file's ids
    (``ValueError`` when the tokenizer has none). progress: a tqdm bar over
    the bytes read (on stderr). Memory stays bounded by a few blocks whatever
    the file sizes. Returns the number of ids written.

    Raises ``ValueError`` naming the file and the byte offset for a file that
    is not UTF-8 (no token file is left behind).
    """
    files = list_text_files(paths)
    eos = _eos_id(tokenizer) if append_eos else None
    total = sum(os.path.getsize(f) for f in files)
    bar = _bar(total, progress, os.path.basename(os.fspath(out)))
    try:
        with TokenWriter(out, token_dtype(tokenizer.vocab_size)) as w:
            for path in files:
                at = 0
                for block in _file_blocks(path, bar):
                    try:
                        w.write(encode_text(tokenizer, block))
                    except ValueError as e:  # a character outside a char tokenizer's vocabulary
                        raise ValueError(f"corpus file {path!r}, in the text from character {at}: {e}") from None
                    at += len(block)
                if eos is not None:
                    w.write(np.array([eos]))
    finally:
        if bar is not None:
            bar.close()
    return w.count


def prepare_dataset(paths: Sequence[Any], out_dir: PathLike, tokenizer: Any, *, val_fraction: float = 0.1,
                    append_eos: bool = False, progress: bool = True) -> dict:
    """nanoGPT's ``prepare.py``: tokenize ``paths`` into ``out_dir/train.bin``
    (the first ``1 - val_fraction`` of the ids) and ``out_dir/val.bin`` (the
    rest), and save the tokenizer as ``out_dir/tokenizer.json``.

    ``fastlm train out_dir`` and :func:`fastlm.data.open_tokens` read the
    result. Returns ``{"train": n_train, "val": n_val, "dtype": name}``.
    """
    val_fraction = check_float(val_fraction, "prepare_dataset: val_fraction", 0.0, below=1.0)
    d = _fspath(out_dir, "out_dir")
    if os.path.exists(d) and not os.path.isdir(d):
        raise ValueError(f"prepare_dataset: {d!r} exists and is not a directory")
    os.makedirs(d, exist_ok=True)
    whole = os.path.join(d, ".all.bin")
    try:
        tokenize_files(paths, whole, tokenizer, append_eos=append_eos, progress=progress)
        ids = open_tokens(whole)
        train, val = train_val_split(ids, val_fraction)
        write_tokens(os.path.join(d, "train.bin"), train, dtype=ids.dtype)
        write_tokens(os.path.join(d, "val.bin"), val, dtype=ids.dtype)
        tokenizer.save(os.path.join(d, "tokenizer.json"))
        del ids, train, val
    finally:
        if os.path.exists(whole):
            os.unlink(whole)
    return {"train": len(open_tokens(os.path.join(d, "train.bin"))),
            "val": len(open_tokens(os.path.join(d, "val.bin"))), "dtype": token_dtype(tokenizer.vocab_size).name}


def _eos_id(tokenizer: Any) -> int:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise ValueError(f"append_eos: the tokenizer {tokenizer!r} has no end-of-text token")
    return check_int(eos, "eos_token_id", 0)


def _bar(total: int, enabled: bool, name: str) -> Optional[Any]:
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"tokenizing {name}",
                dynamic_ncols=True)

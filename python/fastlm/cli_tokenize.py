"""``fastlm tokenize`` and the tokenizer / token-directory parts of ``fastlm train``.

``fastlm tokenize corpus/ --out data/ --vocab-size 8192`` learns a byte-level
BPE on the corpus and writes nanoGPT's layout, ``data/train.bin``,
``data/val.bin`` (fastlm token files) and ``data/tokenizer.json``;
``fastlm train data/`` trains on it, memory-mapped. A nanoGPT data directory
(raw uint16 ``train.bin``/``val.bin``, no tokenizer) trains too, with
``--vocab-size`` giving the model's vocabulary.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, NamedTuple, Optional

import numpy as np

DEFAULT_BPE_VOCAB = 4096
_TOKENIZER_FILE = "tokenizer.json"


def _fail(msg: str) -> ValueError:
    # cli.main prints a ValueError as one line with exit status 2, as its own user errors.
    return ValueError(msg)


def add_tokenize_parser(sub: Any, positive_int: Any, unit_float: Any) -> None:
    """Register ``fastlm tokenize`` on the ``add_subparsers`` object ``sub``."""
    k = sub.add_parser("tokenize", help="tokenize text files into train.bin / val.bin", description=(
        "Tokenize UTF-8 text files (or directories of them, walked in sorted order) into OUT/train.bin and "
        "OUT/val.bin (the last --val-fraction of the ids) and save the tokenizer as OUT/tokenizer.json, in "
        "bounded memory. By default a byte-level BPE of --vocab-size ids is learned from the files first."))
    k.add_argument("inputs", nargs="+", metavar="INPUT", help="text file or directory")
    k.add_argument("--out", required=True, help="output directory")
    k.add_argument("--tokenizer", default="bpe", help=(
        "bpe: learn a byte-level BPE (default); byte: UTF-8 bytes; or the path of a tokenizer.json, "
        "a Hugging Face tokenizer directory or a fastlm checkpoint"))
    k.add_argument("--vocab-size", type=positive_int, default=None,
                   help=f"BPE vocabulary to learn (default {DEFAULT_BPE_VOCAB})")
    k.add_argument("--special-tokens", nargs="*", default=["<|endoftext|>"],
                   help="special tokens of a learned BPE (default <|endoftext|>)")
    k.add_argument("--val-fraction", type=unit_float, default=0.1, help="validation share (default 0.1)")
    k.add_argument("--append-eos", action="store_true", help="end each file with the end-of-text token")
    k.add_argument("--no-progress", action="store_true", help="no progress bar")


def cmd_tokenize(a: argparse.Namespace) -> int:
    from .corpus import prepare_dataset
    from .data import list_text_files

    files = list_text_files(a.inputs)
    if os.path.exists(a.out) and not os.path.isdir(a.out):
        raise _fail(f"--out {a.out!r} exists and is not a directory")
    tok = _tokenizer_for_files(a.tokenizer, a.vocab_size, a.special_tokens, files, not a.no_progress)
    info = prepare_dataset(files, a.out, tok, val_fraction=a.val_fraction, append_eos=a.append_eos,
                           progress=not a.no_progress)
    print(f"fastlm: wrote {info['train']:,} train / {info['val']:,} val tokens ({info['dtype']}, vocab "
          f"{tok.vocab_size}) and {_TOKENIZER_FILE} to {a.out}")
    return 0


def _tokenizer_for_files(kind: str, vocab_size: Optional[int], special: Any, files: Any, progress: bool) -> Any:
    from .bpe import BPETokenizer
    from .tokenizers import ByteTokenizer, load_tokenizer

    if kind != "bpe" and vocab_size is not None:
        raise _fail("--vocab-size applies to a learned BPE (--tokenizer bpe) only")
    if kind == "bpe":
        print(f"fastlm: learning a {vocab_size or DEFAULT_BPE_VOCAB}-id BPE vocabulary", file=sys.stderr)
        return BPETokenizer.train([*files], vocab_size or DEFAULT_BPE_VOCAB, special_tokens=special,
                                  show_progress=progress)
    if kind == "byte":
        return ByteTokenizer()
    if not os.path.exists(kind):
        raise _fail(f"--tokenizer: {kind!r} is neither bpe, byte nor an existing tokenizer file or directory")
    if os.path.isdir(kind) and not os.path.isfile(os.path.join(kind, _TOKENIZER_FILE)):
        return BPETokenizer.from_pretrained(kind)  # GPT-2's vocab.json + merges.txt
    return load_tokenizer(kind)


# ----------------------------------------------------------------- fastlm train

class Prepared(NamedTuple):
    """A token directory or file: ids (memory-mapped) and its tokenizer (or None)."""
    train: np.ndarray
    val: Optional[np.ndarray]
    tokenizer: Any


def open_prepared(path: str, val_fraction: float) -> Optional[Prepared]:
    """The token data at ``path`` -- a directory holding ``train.bin`` (and
    ``val.bin``, ``tokenizer.json``) or a token file -- or None when ``path``
    is a text file. A ``.bin`` without fastlm's header is read as nanoGPT's raw
    uint16 ids; a lone token file is split by ``val_fraction``."""
    from .data import TOKEN_FILE_MAGIC, open_tokens, train_val_split
    from .tokenizers import load_tokenizer

    def tokens(p: str) -> np.ndarray:
        with open(p, "rb") as f:
            fastlm_file = f.read(len(TOKEN_FILE_MAGIC)) == TOKEN_FILE_MAGIC
        return open_tokens(p, dtype=None if fastlm_file else "uint16")

    if os.path.isdir(path):
        train_path = os.path.join(path, "train.bin")
        if not os.path.isfile(train_path):
            raise _fail(f"corpus directory {path!r} holds no train.bin (write one with fastlm tokenize)")
        val_path = os.path.join(path, "val.bin")
        tok_path = os.path.join(path, _TOKENIZER_FILE)
        return Prepared(tokens(train_path), tokens(val_path) if os.path.isfile(val_path) else None,
                        load_tokenizer(tok_path) if os.path.isfile(tok_path) else None)
    with open(path, "rb") as f:
        head = f.read(len(TOKEN_FILE_MAGIC))
    if head != TOKEN_FILE_MAGIC and not path.endswith(".bin"):
        return None
    train, val = train_val_split(tokens(path), val_fraction)
    tok_path = os.path.join(os.path.dirname(path), _TOKENIZER_FILE)
    return Prepared(train, val, load_tokenizer(tok_path) if os.path.isfile(tok_path) else None)


def new_tokenizer(kind: Optional[str], vocab_size: Optional[int], text: Optional[str],
                  prepared: Optional[Prepared]) -> Any:
    """The tokenizer of a new ``fastlm train`` run: the token directory's, or
    one built from the corpus text (char by default, byte, or a BPE learned
    with ``vocab_size`` ids)."""
    from .bpe import BPETokenizer
    from .tokenizers import ByteTokenizer, CharTokenizer

    if prepared is not None:
        if kind is not None:
            raise _fail("--tokenizer does not apply to a token directory (its tokenizer.json is used)")
        return prepared.tokenizer
    if kind != "bpe" and vocab_size is not None:
        raise _fail("--vocab-size applies to --tokenizer bpe or a token directory without tokenizer.json")
    if kind == "bpe":
        return BPETokenizer.train(text, vocab_size or DEFAULT_BPE_VOCAB)
    return ByteTokenizer() if kind == "byte" else CharTokenizer.from_text(text)


def model_vocab_size(tok: Any, vocab_size: Optional[int], prepared: Optional[Prepared]) -> int:
    """The vocabulary of a new model: the tokenizer's, or ``--vocab-size`` for
    token data without a tokenizer (nanoGPT's GPT-2 data: 50304)."""
    if tok is not None:
        if prepared is not None and vocab_size is not None and vocab_size < tok.vocab_size:
            raise _fail(f"--vocab-size {vocab_size} is below the tokenizer's {tok.vocab_size}")
        return vocab_size if prepared is not None and vocab_size is not None else tok.vocab_size
    if vocab_size is None:
        raise _fail("the token data has no tokenizer.json: pass --vocab-size (the model's vocabulary)")
    return vocab_size

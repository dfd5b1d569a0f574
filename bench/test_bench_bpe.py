"""BPE tokenization throughput in tokens/s: fastlm's BPETokenizer.encode_batch,
fastlm.corpus.encode_text (one long text) and tokenize_files (file -> token
file) against the tokenizers library's own encode_batch, on the same
documents and the same tokenizer.json.

The corpus is ../shared/data/tinyshakespeare.txt repeated (when present) or the
Python standard library's source, FASTLM_BENCH_BPE_MB megabytes (default 10);
the BPE (8192 ids) is learned from its first megabyte.
"""
from __future__ import annotations

import os
import re
import tempfile

import numpy as np
import pytest

from fastlm.bench import Case
from fastlm.data import default_corpus

from conftest import run

hf = pytest.importorskip("tokenizers")
from fastlm import BPETokenizer  # noqa: E402
from fastlm.corpus import encode_text, tokenize_files  # noqa: E402

MB = float(os.environ.get("FASTLM_BENCH_BPE_MB", "10"))
SHAKESPEARE = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "tinyshakespeare.txt")


def _corpus(n_bytes: int) -> str:
    if os.path.isfile(SHAKESPEARE):
        with open(SHAKESPEARE, encoding="utf-8") as f:
            base = f.read()
        return (base * (n_bytes // len(base.encode()) + 1)).encode()[:n_bytes].decode("utf-8", "ignore")
    return default_corpus(n_bytes)


def test_bench_bpe_encode(benchmark):
    text = _corpus(int(MB * 1e6))
    tok = BPETokenizer.train(text[:1_000_000], 8192)
    lib = hf.Tokenizer.from_str(tok.to_json())  # the library, loaded on its own
    # Documents as a user's corpus has them: paragraphs (together, the whole text).
    docs = [d for d in re.split(r"(?<=\n\n)", text) if d]
    n_tokens = sum(len(e.ids) for e in lib.encode_batch(docs))

    def check() -> str:
        ours = tok.encode_batch(docs)
        theirs = lib.encode_batch(docs)
        assert all(a.tolist() == b.ids for a, b in zip(ours, theirs))
        whole = encode_text(tok, text)
        assert whole.tolist() == lib.encode(text).ids
        return f"bpe: ids equal the library's ({n_tokens:,} tokens in {len(docs):,} documents, {MB:g} MB)"

    tmp = tempfile.mkdtemp()
    src, dst = os.path.join(tmp, "corpus.txt"), os.path.join(tmp, "corpus.bin")
    with open(src, "w", encoding="utf-8", newline="") as f:
        f.write(text)

    case = Case(f"bpe encode {MB:g} MB, vocab 8192", "tokens/s", n_tokens, {
        "fastlm": lambda: tok.encode_batch(docs),
        "fastlm encode_text": lambda: encode_text(tok, text),
        "fastlm tokenize_files": lambda: tokenize_files([src], dst, tok, progress=False),
        "tokenizers": lambda: [e.ids for e in lib.encode_batch(docs)],
    }, rounds=3, check=check)
    try:
        res = run(benchmark, case)
        assert np.isfinite(res.ratio("tokenizers"))
    finally:
        for p in (src, dst):
            if os.path.exists(p):
                os.unlink(p)
        os.rmdir(tmp)

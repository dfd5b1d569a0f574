"""fastlm tokenize, and fastlm train on BPE and on token directories."""
from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("tokenizers")

import fastlm  # noqa: E402
from fastlm import BPETokenizer  # noqa: E402
from fastlm.cli import main  # noqa: E402
from fastlm.data import open_tokens  # noqa: E402

TINY = ["--steps", "2", "--block-size", "8", "--n-layer", "1", "--n-head", "2", "--n-embd", "16",
        "--batch-size", "2", "--eval-interval", "2", "--eval-batches", "1", "--no-progress"]


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    rng = np.random.default_rng(0)
    words = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "caf\u00e9", "\u65e5\u672c"]
    d = tmp_path_factory.mktemp("docs")
    for i in range(3):
        lines = [" ".join(rng.choice(words, 8)) + "." for _ in range(80)]
        (d / f"part{i}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return d


def _error_line(capsys):
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    line = err.splitlines()[-1]
    assert line.startswith("fastlm: error: "), err
    return line


def test_tokenize_then_train_then_sample(docs, tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["tokenize", str(docs), "--out", str(data), "--vocab-size", "300", "--no-progress"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert sorted(os.listdir(data)) == ["tokenizer.json", "train.bin", "val.bin"]
    tok = fastlm.load_tokenizer(data / "tokenizer.json")
    assert isinstance(tok, BPETokenizer) and tok.vocab_size <= 300
    whole = np.concatenate([tok.encode(p.read_bytes().decode()) for p in sorted(docs.iterdir())])
    np.testing.assert_array_equal(np.concatenate([open_tokens(data / "train.bin"), open_tokens(data / "val.bin")]),
                                  whole)
    out = tmp_path / "run"
    assert main(["train", str(data), "--out", str(out)] + TINY) == 0
    model = fastlm.LanguageModel.load(out)
    assert model.tokenizer == tok and model.vocab_size == tok.vocab_size
    capsys.readouterr()
    assert main(["sample", str(out), "--prompt", "the quick", "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.startswith("the quick")
    # Resuming reads the same token directory.
    assert main(["train", str(data), "--out", str(out), "--resume"] + TINY[:1] + ["4"] + TINY[2:]) == 0
    assert fastlm.LanguageModel.load(out).optimizer_step == 4


def test_tokenize_with_an_existing_or_byte_tokenizer(docs, tmp_path, capsys):
    tok = BPETokenizer.train(docs, 280)
    tok.save_pretrained(tmp_path / "hf")
    for spec, want in ((str(tmp_path / "hf"), tok), (str(tmp_path / "hf" / "tokenizer.json"), tok),
                       ("byte", fastlm.ByteTokenizer())):
        out = tmp_path / "d"
        assert main(["tokenize", str(docs / "part0.txt"), "--out", str(out), "--tokenizer", spec,
                     "--val-fraction", "0", "--append-eos" if spec != "byte" else "--no-progress",
                     "--no-progress"]) == 0
        assert fastlm.load_tokenizer(out / "tokenizer.json") == want
        ids = open_tokens(out / "train.bin")
        text = (docs / "part0.txt").read_text(encoding="utf-8")
        if spec == "byte":
            assert want.decode(ids) == text
        else:
            assert ids[-1] == tok.eos_token_id and want.decode(ids[:-1]) == text
        assert len(open_tokens(out / "val.bin")) == 0


def test_train_learns_a_bpe(docs, tmp_path):
    out = tmp_path / "run"
    assert main(["train", str(docs / "part1.txt"), "--out", str(out), "--tokenizer", "bpe",
                 "--vocab-size", "290"] + TINY) == 0
    tok = fastlm.LanguageModel.load(out).tokenizer
    assert isinstance(tok, BPETokenizer) and 256 < tok.vocab_size <= 290


def test_train_on_nanogpt_raw_bins(tmp_path, capsys):
    rng = np.random.default_rng(1)
    d = tmp_path / "shakespeare"
    d.mkdir()
    (d / "train.bin").write_bytes(rng.integers(0, 50, 3000).astype(np.uint16).tobytes())
    (d / "val.bin").write_bytes(rng.integers(0, 50, 300).astype(np.uint16).tobytes())
    out = tmp_path / "run"
    assert main(["train", str(d), "--out", str(out), "--vocab-size", "64"] + TINY) == 0
    model = fastlm.LanguageModel.load(out)
    assert model.vocab_size == 64 and model.tokenizer is None
    # A lone token file is split by --val-fraction.
    assert main(["train", str(d / "train.bin"), "--out", str(tmp_path / "r2"), "--vocab-size", "64"] + TINY) == 0
    capsys.readouterr()
    assert main(["train", str(d), "--out", str(tmp_path / "r3")] + TINY) == 2
    assert "--vocab-size" in _error_line(capsys)


@pytest.mark.parametrize("argv, needle", [
    (["tokenize", "{tmp}/missing", "--out", "{tmp}/o"], "missing"),
    (["tokenize", "{docs}", "--out", "{tmp}/o", "--tokenizer", "{tmp}/nope.json"], "--tokenizer"),
    (["tokenize", "{docs}", "--out", "{tmp}/o", "--tokenizer", "byte", "--vocab-size", "300"], "--vocab-size"),
    (["tokenize", "{docs}", "--out", "{tmp}/o", "--vocab-size", "100"], "below 256"),
    (["tokenize", "{docs}", "--out", "{docs}/part0.txt"], "not a directory"),
    (["tokenize", "{bad}", "--out", "{tmp}/o", "--tokenizer", "byte"], "not valid UTF-8"),
    (["tokenize", "{bad}", "--out", "{tmp}/o"], "bad.txt"),
    (["tokenize", "{docs}"], "--out"),
    (["train", "{docs}/part0.txt", "--out", "{tmp}/o", "--vocab-size", "300"], "--vocab-size"),
    (["train", "{tmp}", "--out", "{tmp}/o"], "no train.bin"),
])
def test_mistakes_are_one_line(argv, needle, docs, tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok \xff")
    args = [a.replace("{tmp}", str(tmp_path)).replace("{docs}", str(docs)).replace("{bad}", str(bad))
            for a in argv]
    assert main(args) == 2
    assert needle in _error_line(capsys)
    assert not (tmp_path / "o").exists() or not os.listdir(tmp_path / "o")

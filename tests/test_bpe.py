"""BPETokenizer: ids against the tokenizers library and an independent GPT-2
byte-level BPE written here, exact round trips, files, checkpoints, errors."""
from __future__ import annotations

import json
import os
import pathlib

import numpy as np
import pytest

hf = pytest.importorskip("tokenizers")
regex = pytest.importorskip("regex")

import fastlm  # noqa: E402
from fastlm import BPETokenizer, Transformer  # noqa: E402
from fastlm.tokenizers import load_tokenizer, tokenizer_from_json  # noqa: E402

TRAIN_TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\r\n\r\nAll:\nSpeak, speak.\n"
              "def f(x):\n    return x  # don't, we'll, I'm, they've\n\t\tcaf\u00e9 na\u00efve \u65e5\u672c\u8a9e "
              "\U0001F600\U0001F600 1234 5678 <|endoftext|>\n") * 20

AWKWARD = [
    "", " ", "   ", "\t\t \n", "a", "\n\n\n", "  leading and trailing  ", "many     spaces   here",
    "line\r\nline\r\n\r\n", "\r", "emoji \U0001F600\U0001F44D\U0001F3FD and \u200d joiners \U0001F468\u200d\U0001F469",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8 \ud55c\uad6d\uc5b4 \u4e2d\u6587", "nul\x00byte\x00\x00",
    "\x7f\x01\x02 control", "it's they're we've I'm you'll he'd 'S", "1234567890 3.14159 -42",
    "<|endoftext|>", "a<|endoftext|>b<|endoftext|>", "\u00a0non-breaking\u2003em space",
    "caf\u00e9 vs cafe\u0301", "\ufeffBOM", "x" * 10_000, ("word " * 2000)[:10_000],
    "".join(chr(c) for c in range(0x20, 0x2000, 7)),
]


@pytest.fixture(scope="module")
def tok() -> BPETokenizer:
    return BPETokenizer.train(TRAIN_TEXT, 400)


# ------------------------------------------------- an independent GPT-2 encoder

def _byte_symbols():
    """GPT-2's printable stand-in for each byte."""
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_GPT2_SPLIT = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


def reference_encode(text, vocab, merges, specials):
    """GPT-2 byte-level BPE from the vocabulary and merge list alone: split on
    special tokens, split words with GPT-2's regex, map bytes to symbols and
    apply the lowest-ranked merge until none applies."""
    rank = {tuple(m): i for i, m in enumerate(merges)}
    sym = _byte_symbols()
    ids = []
    parts = regex.split("(" + "|".join(regex.escape(s) for s in specials) + ")", text) if specials else [text]
    for part in parts:
        if part in specials:
            ids.append(vocab[part])
            continue
        for word in _GPT2_SPLIT.findall(part):
            pieces = [sym[b] for b in word.encode("utf-8")]
            while len(pieces) > 1:
                pairs = [(rank.get((a, b), 1 << 60), i) for i, (a, b) in enumerate(zip(pieces, pieces[1:]))]
                best, i = min(pairs)
                if best == 1 << 60:
                    break
                pieces[i:i + 2] = [pieces[i] + pieces[i + 1]]
            ids.extend(vocab[p] for p in pieces)
    return ids


def _vocab_and_merges(tok):
    model = json.loads(tok.to_json())["model"]
    merges = [m.split(" ") if isinstance(m, str) else m for m in model["merges"]]
    return model["vocab"], merges


# --------------------------------------------------------------------- ids

@pytest.mark.parametrize("i", range(len(AWKWARD)))
def test_ids_equal_the_library_and_a_reference(tok, i):
    text = AWKWARD[i]
    ours = tok.encode(text)
    assert ours.dtype == np.int32 and ours.ndim == 1
    lib = hf.Tokenizer.from_str(tok.to_json())  # an independent load of the same JSON
    assert ours.tolist() == lib.encode(text).ids
    vocab, merges = _vocab_and_merges(tok)
    assert ours.tolist() == reference_encode(text, vocab, merges, ["<|endoftext|>"])
    assert tok.decode(ours) == text
    assert tok.decode(ours.tolist()) == text


def test_encode_batch_equals_encode(tok):
    batch = tok.encode_batch(AWKWARD)
    assert len(batch) == len(AWKWARD)
    for text, ids in zip(AWKWARD, batch):
        assert ids.dtype == np.int32
        np.testing.assert_array_equal(ids, tok.encode(text))
    assert tok.encode_batch([]) == []


def test_round_trip_random_unicode(tok):
    rng = np.random.default_rng(0)
    # Every plane, surrogates excluded (they have no UTF-8 form).
    cps = rng.integers(0, 0x110000, size=5000)
    cps = cps[(cps < 0xD800) | (cps > 0xDFFF)]
    text = "".join(map(chr, cps))
    assert tok.decode(tok.encode(text)) == text


def test_decode_partial_bytes_and_out_of_range(tok):
    ids = tok.encode("\U0001F680")
    assert len(ids) > 1  # the first id is a lone lead byte
    assert tok.decode(ids[:1]) == "\ufffd"
    with pytest.raises(ValueError, match=rf"id {tok.vocab_size} at position 1"):
        tok.decode([0, tok.vocab_size])
    with pytest.raises(ValueError, match="id -1"):
        tok.decode(np.array([-1]))
    with pytest.raises(TypeError):
        tok.decode("abc")


def test_bad_text(tok):
    with pytest.raises(TypeError, match="str"):
        tok.encode(b"bytes")
    with pytest.raises(ValueError, match="position 1 has no UTF-8"):
        tok.encode("a\ud800b")
    with pytest.raises(ValueError, match=r"texts\[1\].*position 0"):
        tok.encode_batch(["ok", "\udfff"])
    with pytest.raises(TypeError, match="list of str"):
        tok.encode_batch("not a list")
    with pytest.raises(TypeError, match=r"texts\[0\]"):
        tok.encode_batch([3])


def test_vocab_and_eos(tok):
    # A small corpus has fewer merges than asked for.
    assert 300 < tok.vocab_size <= 400
    assert tok.vocab_size == tok.backend.get_vocab_size()
    assert tok.eos_token == "<|endoftext|>" and tok.eos_token_id == 0
    assert tok.token_to_id("<|endoftext|>") == 0
    none = BPETokenizer.train(TRAIN_TEXT, 300, special_tokens=[])
    assert none.eos_token is None and none.eos_token_id is None
    custom = BPETokenizer.train(TRAIN_TEXT, 300, special_tokens=["<pad>", "</s>"])
    assert custom.eos_token == "</s>" and custom.eos_token_id == 1
    assert BPETokenizer(custom.backend, eos_token="<pad>").eos_token_id == 0
    with pytest.raises(ValueError, match="not in the vocabulary"):
        BPETokenizer(custom.backend, eos_token="<nope>")


# ------------------------------------------------------------------ training

def test_train_from_files_dirs_and_iterables(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text(TRAIN_TEXT[:2000], encoding="utf-8")
    (tmp_path / "d" / "b.txt").write_text(TRAIN_TEXT[2000:], encoding="utf-8")
    from_text = BPETokenizer.train(TRAIN_TEXT, 350)
    from_dir = BPETokenizer.train(tmp_path / "d", 350)
    from_list = BPETokenizer.train([str(tmp_path / "d" / "a.txt"), tmp_path / "d" / "b.txt"], 350)
    from_iter = BPETokenizer.train(iter([TRAIN_TEXT[:2000], TRAIN_TEXT[2000:]]), 350)
    for t in (from_text, from_dir, from_list, from_iter):
        assert t.vocab_size == from_text.vocab_size
        assert t.decode(t.encode(TRAIN_TEXT)) == TRAIN_TEXT
    assert from_dir == from_list


def test_train_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="vocab_size 200 is below 256 byte symbols"):
        BPETokenizer.train("abc", 200)
    with pytest.raises(TypeError, match="vocab_size"):
        BPETokenizer.train("abc", 300.0)
    with pytest.raises(TypeError, match="special_tokens"):
        BPETokenizer.train("abc", 300, special_tokens="<|endoftext|>")
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        BPETokenizer.train([tmp_path / "missing.txt"], 300)
    with pytest.raises(TypeError, match=r"text 1 must be a str"):
        BPETokenizer.train(iter(["a", 3]), 300)
    with pytest.raises(TypeError, match="backend"):
        BPETokenizer("not a tokenizer")


# --------------------------------------------------------- files and formats

def test_save_and_load_formats(tok, tmp_path):
    p = tmp_path / "tokenizer.json"
    tok.save(p)
    # The file is a Hugging Face tokenizer.json.
    assert hf.Tokenizer.from_file(str(p)).encode(AWKWARD[9]).ids == tok.encode(AWKWARD[9]).tolist()
    for loaded in (load_tokenizer(p), load_tokenizer(tmp_path), BPETokenizer.from_pretrained(p),
                   BPETokenizer.from_pretrained(tmp_path), tokenizer_from_json(p.read_text())):
        assert isinstance(loaded, BPETokenizer) and loaded == tok


def test_gpt2_vocab_and_merges(tok, tmp_path):
    tok.backend.model.save(str(tmp_path))  # vocab.json + merges.txt, as GPT-2 ships them
    assert sorted(os.listdir(tmp_path)) == ["merges.txt", "vocab.json"]
    g = BPETokenizer.from_pretrained(tmp_path)
    assert g.vocab_size == tok.vocab_size and g.eos_token_id == tok.eos_token_id
    for text in AWKWARD:
        assert g.encode(text).tolist() == tok.encode(text).tolist()
        assert g.decode(g.encode(text)) == text


def test_tokenizer_config_names_the_eos(tmp_path):
    t = BPETokenizer.train(TRAIN_TEXT, 300, special_tokens=["<|endoftext|>", "<|im_end|>"])
    t.save(tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": "<|im_end|>"}}))
    assert BPETokenizer.from_pretrained(tmp_path).eos_token_id == 1


def test_corrupt_files_name_the_file(tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text('{"version": "1.0", "model": {"type": "BPE", "vocab": {"a": 0}, "merges": [["a", "zz"]]}}')
    with pytest.raises(ValueError, match=r"tokenizer\.json"):
        load_tokenizer(bad)
    with pytest.raises(ValueError, match=r"tokenizer\.json"):
        BPETokenizer.from_pretrained(bad)
    bad.write_text('{"version": "1.0", "model": {"type": "BPE", "vo')
    with pytest.raises(ValueError, match=r"tokenizer\.json.*corrupt"):
        load_tokenizer(bad)
    with pytest.raises(ValueError, match=r"tokenizer\.json"):
        BPETokenizer.from_pretrained(tmp_path)
    bad.unlink()
    (tmp_path / "vocab.json").write_text("{not json")
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(ValueError, match=r"vocab\.json"):
        BPETokenizer.from_pretrained(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="neither tokenizer.json nor vocab.json"):
        BPETokenizer.from_pretrained(empty)
    with pytest.raises(IsADirectoryError, match="is a directory without a tokenizer.json"):
        load_tokenizer(empty)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        BPETokenizer.from_pretrained(tmp_path / "nowhere")
    (empty / "tokenizer.json").write_text("{}")
    (empty / "tokenizer_config.json").write_text("{oops")
    with pytest.raises(ValueError, match=r"tokenizer_config\.json"):
        BPETokenizer.from_pretrained(empty)


def test_save_pretrained_loads_in_transformers(tok, tmp_path):
    transformers = pytest.importorskip("transformers")
    written = tok.save_pretrained(tmp_path / "hf")
    assert {os.path.basename(p) for p in written} == {"tokenizer.json", "tokenizer_config.json",
                                                      "special_tokens_map.json"}
    at = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    assert at.eos_token == "<|endoftext|>" and at.eos_token_id == 0
    for text in AWKWARD:
        ids = at(text)["input_ids"]
        assert ids == tok.encode(text).tolist()
        assert at.decode(ids) == text
    assert BPETokenizer.from_pretrained(tmp_path / "hf") == tok
    tok.save_pretrained(tmp_path / "hf", model_max_length=64)
    assert transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf")).model_max_length == 64
    with pytest.raises(ValueError, match="model_max_length"):
        tok.save_pretrained(tmp_path / "hf", model_max_length=0)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        tok.save_pretrained(tmp_path / "file")


# ------------------------------------------------------------------- models

def test_checkpoint_round_trip(tok, tmp_path):
    model = Transformer(tok.vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=16, tokenizer=tok)
    model.save(tmp_path / "ckpt")
    assert hf.Tokenizer.from_file(str(tmp_path / "ckpt" / "tokenizer.json")).get_vocab_size() == tok.vocab_size
    loaded = fastlm.LanguageModel.load(tmp_path / "ckpt")
    assert isinstance(loaded.tokenizer, BPETokenizer) and loaded.tokenizer == tok
    assert loaded.tokenizer.eos_token_id == 0
    out = loaded.generate("First Citizen", max_new_tokens=3, do_sample=False)
    assert np.asarray(out).shape[-1] >= 3


def test_library_tokenizer_is_wrapped(tok, tmp_path):
    raw = hf.Tokenizer.from_str(tok.to_json())
    model = Transformer(tok.vocab_size + 5, block_size=8, n_layer=1, n_head=2, n_embd=16, tokenizer=raw)
    assert isinstance(model.tokenizer, BPETokenizer) and model.tokenizer.backend is raw
    model.save(tmp_path / "c")
    assert fastlm.LanguageModel.load(tmp_path / "c").tokenizer == tok
    with pytest.raises(ValueError, match="exceeds vocab_size"):
        Transformer(300, block_size=8, n_layer=1, n_head=2, n_embd=16, tokenizer=raw)


def test_checkpoint_with_a_bad_tokenizer(tok, tmp_path):
    model = Transformer(tok.vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=16, tokenizer=tok)
    model.save(tmp_path / "c")
    tj = tmp_path / "c" / "tokenizer.json"
    tj.write_text(tj.read_text()[:-200])
    with pytest.raises(ValueError, match=r"tokenizer\.json.*corrupt"):
        fastlm.LanguageModel.load(tmp_path / "c")
    # A vocabulary larger than the model's.
    bigger = hf.Tokenizer.from_str(tok.to_json())
    bigger.add_tokens(["<extra>"])
    BPETokenizer(bigger).save(tj)
    with pytest.raises(ValueError, match=r"tokenizer\.json.*vocab_size"):
        fastlm.LanguageModel.load(tmp_path / "c")


def test_pathlib_everywhere(tok, tmp_path):
    tok.save(pathlib.Path(tmp_path) / "t.json")
    assert load_tokenizer(pathlib.Path(tmp_path) / "t.json") == tok

"""Models in precision="bf16" (mixed precision on AVX512_BF16): they train like
float32, decode, checkpoint their precision, and are refused clearly where the
CPU ISA cannot run them."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

import fastlm
from fastlm import GRULM, LSTMLM, LanguageModel, Transformer, _C
from fastlm.cli import main
from conftest import HAS_BF16, bf16_engine, bf16_engines, needs_bf16


MODELS = {
    "gpt": (Transformer, dict(block_size=32, n_layer=2, n_head=2, n_embd=64)),
    "lstm": (LSTMLM, dict(embed_dim=32, hidden_size=64, num_layers=2)),
    "gru": (GRULM, dict(embed_dim=32, hidden_size=64, num_layers=2)),
}
V = 65


def batches(n, seed=0):
    """n (idx, targets) pairs of a learnable toy language: t+1 follows t."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        start = rng.integers(0, V, (4, 1))
        seq = (start + np.arange(33)) % V
        out.append((seq[:, :-1], seq[:, 1:]))
    return out


def train(model, data, lr=3e-3):
    losses = []
    for idx, tgt in data:
        model.zero_grad()
        losses.append(float(model.forward_backward(idx, tgt)))
        model.step(lr)
    return np.array(losses)


@needs_bf16
@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("engine", bf16_engines() if HAS_BF16 else [])
def test_bf16_trains_like_fp32(kind, engine):
    cls, kw = MODELS[kind]
    data = batches(20)
    fp32 = train(cls(V, seed=1, **kw), data)
    bf16_model = cls(V, seed=1, precision="bf16", **kw)
    with bf16_engine(engine):
        bf16 = train(bf16_model, data)
    assert bf16_model.config["precision"] == "bf16"
    assert np.max(np.abs(bf16 - fp32)) < 2e-2, (fp32, bf16)
    assert bf16[-1] < bf16[0] - 0.1  # it learns
    # master weights stay float32 (not rounded to bfloat16)
    w = next(iter(bf16_model.state_dict().values()))
    assert w.dtype == np.float32 and np.any(w.view(np.uint32) & 0xFFFF)


@needs_bf16
@pytest.mark.parametrize("kind", list(MODELS))
def test_bf16_logits_are_bf16_gemms(kind):
    """Same weights, same ids: bf16 logits are close to fp32's but not equal
    (the GEMMs do round), and deterministic."""
    cls, kw = MODELS[kind]
    a, b = cls(V, seed=2, **kw), cls(V, seed=2, precision="bf16", **kw)
    idx = batches(1, seed=3)[0][0]
    la, lb = a.forward(idx), b.forward(idx)
    assert not np.array_equal(la, lb)
    np.testing.assert_allclose(lb, la, atol=5e-2)
    np.testing.assert_array_equal(lb, b.forward(idx))


@needs_bf16
@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("engine", bf16_engines() if HAS_BF16 else [])
def test_bf16_generate_matches_its_forward(kind, engine):
    """Greedy decoding (bfloat16 packed weights, few rows) picks the argmax of
    the full bf16 forward at every step."""
    cls, kw = MODELS[kind]
    m = cls(V, seed=4, precision="bf16", **kw)
    with bf16_engine(engine):
        train(m, batches(10))
        prompt = np.array([[5, 6, 7], [40, 41, 42]])
        out = m.generate(prompt, 8, do_sample=False)
        logits_at = {t: m.forward(out[:, :t])[:, -1] for t in range(3, out.shape[1])}
    for t, logits in logits_at.items():
        top2 = np.sort(logits, axis=1)[:, -2:]
        clear = top2[:, 1] - top2[:, 0] > 1e-2  # ties may break either way
        assert np.all(np.argmax(logits, 1)[clear] == out[clear, t])


@needs_bf16
def test_bf16_checkpoint_roundtrip(tmp_path):
    cls, kw = MODELS["gpt"]
    m = cls(V, seed=5, precision="bf16", **kw)
    train(m, batches(3))
    m.save(tmp_path / "ck")
    assert json.loads((tmp_path / "ck" / "config.json").read_text())["precision"] == "bf16"
    loaded = LanguageModel.load(tmp_path / "ck")
    assert loaded.config == m.config
    idx = batches(1)[0][0]
    np.testing.assert_array_equal(loaded.forward(idx), m.forward(idx))
    as_fp32 = LanguageModel.load(tmp_path / "ck", precision="fp32")
    assert as_fp32.config["precision"] == "fp32"
    ref = cls(V, seed=5, **kw)
    ref.load_state_dict(m.state_dict())
    np.testing.assert_array_equal(as_fp32.forward(idx), ref.forward(idx))
    assert type(m)(**{k: v for k, v in m.config.items()}).config == m.config
    before = fastlm.cpu_isa()
    _C._set_cpu_isa("avx512")  # a CPU without AVX512_BF16 loads it in float32 only when asked to
    try:
        with pytest.raises(ValueError, match="runs in precision 'bf16'.*load it with precision='fp32'"):
            LanguageModel.load(tmp_path / "ck")
        assert LanguageModel.load(tmp_path / "ck", precision="fp32").config["precision"] == "fp32"
    finally:
        _C._set_cpu_isa(before)


def test_fp32_checkpoint_without_precision_loads_as_fp32(tmp_path):
    cls, kw = MODELS["lstm"]
    m = cls(V, **kw)
    m.save(tmp_path / "ck")
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert cfg["precision"] == "fp32"
    del cfg["precision"]  # as written before precision existed
    (tmp_path / "ck" / "config.json").write_text(json.dumps(cfg))
    assert LanguageModel.load(tmp_path / "ck").config["precision"] == "fp32"


@pytest.mark.parametrize("isa", [i for i in fastlm.available_cpu_isas() if i != "avx512bf16"])
@pytest.mark.parametrize("kind", list(MODELS))
def test_bf16_refused_without_avx512bf16(isa, kind):
    cls, kw = MODELS[kind]
    before = fastlm.cpu_isa()
    _C._set_cpu_isa(isa)
    try:
        with pytest.raises(ValueError, match=f"avx512bf16 CPU ISA.*active CPU ISA is '{isa}'"):
            cls(V, precision="bf16", **kw)
        assert cls(V, **kw).config["precision"] == "fp32"  # float32 still runs
    finally:
        _C._set_cpu_isa(before)


@pytest.mark.parametrize("precision, err", [("bfloat16", ValueError), ("FP32", ValueError),
                                            ("highest", ValueError), (16, TypeError), (None, TypeError)])
def test_bad_precision(precision, err):
    cls, kw = MODELS["gpt"]
    with pytest.raises(err, match="precision"):
        cls(V, precision=precision, **kw)
    if precision is not None:  # None: load keeps the checkpoint's
        with pytest.raises(err, match="precision"):
            LanguageModel.load("/nonexistent", precision=precision)


@needs_bf16
def test_cli_trains_and_samples_in_bf16(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog.\n" * 40, encoding="utf-8")
    out = tmp_path / "out"
    tiny = ["--block-size", "16", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--batch-size", "4",
            "--eval-interval", "5", "--eval-batches", "2", "--no-progress"]
    assert main(["train", str(corpus), "--out", str(out), "--steps", "5", "--precision", "bf16"] + tiny) == 0
    assert json.loads((out / "config.json").read_text())["precision"] == "bf16"
    assert main(["sample", str(out), "--max-new-tokens", "5", "--greedy"]) == 0
    assert main(["sample", str(out), "--max-new-tokens", "5", "--greedy", "--precision", "fp32"]) == 0


@pytest.mark.skipif(HAS_BF16, reason="this CPU runs bf16")
def test_cli_refuses_bf16_without_avx512bf16(tmp_path, capsys):
    assert main(["train", "x.txt", "--out", str(tmp_path / "o"), "--precision", "bf16"]) == 2
    assert "--precision bf16 needs the avx512bf16 CPU ISA" in capsys.readouterr().err


def test_cli_info_shows_precisions(capsys):
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    assert f"cpu isa: {fastlm.cpu_isa()}" in text and "precision: fp32" in text
    assert ("bf16" in text.split("precision:")[1].split("(")[0]) == (fastlm.cpu_isa() == "avx512bf16")
    assert ("run on AMX tiles" in text) == fastlm.cpu_amx()


@needs_bf16
@pytest.mark.skipif(not HAS_BF16 or not _C.cpu_amx_available(), reason="no AMX tiles here")
@pytest.mark.parametrize("first,then", [("amx", "vdpbf16ps"), ("vdpbf16ps", "amx")])
def test_bf16_decode_pack_survives_engine_switch(first, then):
    """Decoding keeps its packed weights between generate calls; switching the
    bfloat16 engine in between still decodes what a fresh model decodes."""
    cls, kw = MODELS["gpt"]
    prompt = np.array([[5, 6, 7], [40, 41, 42]])
    reused = cls(V, seed=5, precision="bf16", **kw)
    with bf16_engine(first):
        reused.generate(prompt, 4, do_sample=False)  # packs for `first`
    with bf16_engine(then):
        got = reused.generate(prompt, 8, do_sample=False)
        want = cls(V, seed=5, precision="bf16", **kw).generate(prompt, 8, do_sample=False)
    np.testing.assert_array_equal(got, want)

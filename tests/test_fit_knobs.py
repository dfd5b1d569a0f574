"""fit's nanoGPT knobs: lr_decay_iters, decay_lr, the train/val loss estimates,
keep_best, MFU; and their bad values."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

import fastlm

from fastlm import mfu
from fastlm.model import Transformer
from fastlm.train import estimate_loss, get_lr

V = 23
ARCH = dict(block_size=8, n_layer=1, n_head=2, n_embd=16)


def _data():
    return np.random.default_rng(1).integers(0, V, 1200)


def _fit(model, **kw):
    data = _data()
    args = dict(steps=10, batch_size=2, lr=1e-2, warmup_steps=2, eval_interval=5, eval_batches=2, progress=False,
                val=data[1000:])
    args.update(kw)
    return model.fit(data[:1000], **args)


def test_lr_decay_iters_and_decay_lr():
    h = _fit(Transformer(V, **ARCH), lr_decay_iters=6, min_lr=1e-3)
    assert [e["lr"] for e in h] == [get_lr(i, lr=1e-2, warmup_steps=2, decay_steps=6, min_lr=1e-3) for i in range(10)]
    assert h[-1]["lr"] == h[-4]["lr"] == 1e-3  # min_lr after lr_decay_iters
    h = _fit(Transformer(V, **ARCH), decay_lr=False)
    assert all(e["lr"] == 1e-2 for e in h)


def test_estimates_of_both_splits():
    m = Transformer(V, **ARCH, seed=4)
    h = _fit(m, steps=5)
    data = _data()
    for key, split in (("train_loss", data[:1000]), ("val_loss", data[1000:])):
        assert h[-1][key] == estimate_loss(m, split, batches=2, batch_size=2, block_size=8,
                                           rng=np.random.default_rng([4, 5]))
    # None: over the whole splits.
    whole = Transformer(V, **ARCH, seed=4)
    h = _fit(whole, steps=5, eval_batches=None)
    assert h[-1]["val_loss"] == whole.evaluate(data[1000:], batch_size=2)["loss"]
    assert h[-1]["train_loss"] == whole.evaluate(data[:1000], batch_size=2)["loss"]


def test_eval_does_not_change_training():
    a = _fit(Transformer(V, **ARCH, seed=2), eval_interval=1)
    b = _fit(Transformer(V, **ARCH, seed=2), eval_interval=100)
    assert [e["loss"] for e in a] == [e["loss"] for e in b]


def test_keep_best(tmp_path):
    m = Transformer(V, **ARCH, seed=3)
    h = _fit(m, lr=0.05, decay_lr=False, eval_interval=2, keep_best=True, checkpoint_dir=tmp_path / "ck")
    vals = h.val_losses
    best_step, best = min(vals, key=lambda sv: sv[1])
    state = json.loads((tmp_path / "ck" / "trainer_state.json").read_text())
    assert state["step"] == best_step and state["best_val_loss"] == best
    assert Transformer.load(tmp_path / "ck").optimizer_step == best_step


def test_mfu_in_history(monkeypatch):
    monkeypatch.setenv("FASTLM_PEAK_FLOPS", "1e9")
    m = Transformer(V, **ARCH)
    h = _fit(m, steps=2)
    per_token = 6 * (m.num_parameters() - 8 * 16) + 12 * 1 * 16 * 8
    assert m._flops_per_token(8) == per_token
    for e in h:
        assert e["mfu"] == pytest.approx(per_token * e["tokens_per_sec"] / 1e9)


def test_peak_flops(monkeypatch):
    monkeypatch.delenv("FASTLM_PEAK_FLOPS", raising=False)
    peak = mfu.peak_flops()
    assert 1e8 < peak < 1e14 and math.isfinite(peak)
    if fastlm.cpu_isa() == "avx512bf16":  # the bfloat16 GEMM's own peak, not float32's
        assert mfu.peak_flops("bf16") != peak
    for bad in ("fast", "-1", "0", "inf", "nan"):
        monkeypatch.setenv("FASTLM_PEAK_FLOPS", bad)
        with pytest.raises(ValueError, match="FASTLM_PEAK_FLOPS"):
            mfu.peak_flops()


@pytest.mark.parametrize("kw, exc, needle", [
    (dict(lr_decay_iters=0), ValueError, "lr_decay_iters"),
    (dict(lr_decay_iters=2.5), TypeError, "lr_decay_iters"),
    (dict(decay_lr="no"), TypeError, "decay_lr"),
    (dict(keep_best=1), TypeError, "keep_best"),
    (dict(keep_best=True), ValueError, "keep_best"),  # no checkpoint_dir
    (dict(keep_best=True, val=None, checkpoint_dir="x"), ValueError, "keep_best"),
])
def test_bad_knobs(kw, exc, needle):
    with pytest.raises(exc, match=needle):
        _fit(Transformer(V, **ARCH), **kw)

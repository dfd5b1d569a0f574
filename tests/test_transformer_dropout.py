"""Dropout in fastlm.Transformer (and between the layers of LSTMLM / GRULM):
gradients against the NumPy models with the same masks, off outside training,
reproducible across a resume, kept in config.json."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from conftest import assert_error_bound
from reference.gpt import np_forward_backward, param_names, random_state_dict
from reference.dropout import ref_keep, ref_key
from fastlm.checkpoint import CONFIG_FILE
from fastlm.model import Transformer
from fastlm.rnn import GRULM, LSTMLM

V, BLOCK, N_LAYER, N_HEAD, N_EMBD, B = 67, 19, 2, 3, 48, 3
ARCH = dict(block_size=BLOCK, n_layer=N_LAYER, n_head=N_HEAD, n_embd=N_EMBD)


def call_seed(model_seed: int, call: int) -> int:
    return (model_seed * 0x9E3779B97F4A7C15 + call) % 2**64


def model_masks(seed: int, p: float, T: int) -> dict:
    """The factors of every dropout site of one forward_backward (see gpt.cpp's streams)."""
    scale = 1 / (1 - np.float32(p))
    flat = np.arange(B * T * N_EMBD, dtype=np.uint64)

    def tensor(stream):
        return (ref_keep(ref_key(seed, stream), flat, p) * scale).reshape(B, T, N_EMBD)

    z = {"emb": tensor(0)}
    idx = (np.arange(T)[:, None] * T + np.arange(T)[None, :]).astype(np.uint64)
    for i in range(N_LAYER):
        key = ref_key(seed, 3 * i + 1)
        z[f"attn{i}"] = np.stack([np.stack([ref_keep(ref_key(key, b * N_HEAD + h), idx, p) * scale
                                            for h in range(N_HEAD)]) for b in range(B)])
        z[f"res{i}a"], z[f"res{i}m"] = tensor(3 * i + 2), tensor(3 * i + 3)
    return z


@pytest.fixture(scope="module")
def sd():
    return random_state_dict(V, BLOCK, N_LAYER, N_EMBD, seed=7)


@pytest.mark.parametrize("T,p", [(BLOCK, 0.2), (1, 0.5), (17, 0.1)])
def test_gradients_match_reference_with_same_masks(isa, sd, T, p):
    rng = np.random.default_rng(3)
    idx, tgt = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
    m = Transformer(V, **ARCH, dropout=p, seed=5)
    m.load_state_dict(sd)
    for call in range(2):  # the second call draws new masks
        z = model_masks(call_seed(5, call), p, T)
        _, loss64, g64 = np_forward_backward(sd, idx, tgt, N_HEAD, np.float64, drop=z)
        _, loss32, g32 = np_forward_backward(sd, idx, tgt, N_HEAD, np.float32, drop=z)
        m.zero_grad()
        loss = m.forward_backward(idx, tgt)
        assert abs(loss - loss64) <= 8 * abs(loss32 - loss64) + 1e-6 * abs(loss64)
        grads = m.gradients()
        for name in param_names(N_LAYER):
            assert_error_bound(grads[name], g64[name], g32[name], factor=8.0, name=name)


def test_dropout_is_off_outside_training(sd):
    rng = np.random.default_rng(4)
    idx = rng.integers(0, V, (B, BLOCK))
    plain, dropped = Transformer(V, **ARCH), Transformer(V, **ARCH, dropout=0.5)
    plain.load_state_dict(sd)
    dropped.load_state_dict(sd)
    np.testing.assert_array_equal(plain.forward(idx), dropped.forward(idx))
    data = rng.integers(0, V, 500)
    assert plain.evaluate(data) == dropped.evaluate(data)
    prompt = idx[:, :4]
    np.testing.assert_array_equal(plain.generate(prompt, 10, do_sample=False),
                                  dropped.generate(prompt, 10, do_sample=False))
    # ... but on in training: the loss differs from the dropout-free one.
    tgt = rng.integers(0, V, (B, BLOCK))
    assert plain.forward_backward(idx, tgt) != dropped.forward_backward(idx, tgt)


def test_zero_dropout_is_bit_identical(sd):
    rng = np.random.default_rng(5)
    idx, tgt = rng.integers(0, V, (B, BLOCK)), rng.integers(0, V, (B, BLOCK))
    a = Transformer(V, **ARCH)
    a.load_state_dict(sd)
    la = a._g.forward_backward(idx, tgt)
    ga = {k: v.copy() for k, v in a.gradients().items()}
    a.zero_grad()
    lb = a._g.forward_backward(idx, tgt, 1.0, 0.0, 12345)
    assert la == lb
    for k, v in a.gradients().items():
        np.testing.assert_array_equal(v, ga[k])


def _data():
    return np.random.default_rng(9).integers(0, V, 3000)


def test_resume_reproduces_uninterrupted_run(tmp_path):
    data = _data()
    kw = dict(steps=8, batch_size=4, lr=3e-3, warmup_steps=2, eval_interval=4, eval_batches=2,
              progress=False, grad_accum=2)
    full = Transformer(V, **ARCH, dropout=0.2, seed=2)
    h_full = full.fit(data[:2500], val=data[2500:], **kw)
    part = Transformer(V, **ARCH, dropout=0.2, seed=2)
    part.fit(data[:2500], val=data[2500:], checkpoint_dir=tmp_path / "ck", checkpoint_interval=3,
             callback=lambda step, _: step < 3, **kw)
    resumed = Transformer.load(tmp_path / "ck")
    assert resumed.dropout == 0.2 and resumed._dropout_calls == 6
    h = resumed.fit(data[:2500], val=data[2500:], checkpoint_dir=tmp_path / "ck", resume=True, **kw)
    keys = ("loss", "grad_norm", "train_loss", "val_loss")
    assert [[e[k] for k in keys] for e in h] == [[e[k] for k in keys] for e in h_full]
    for name, w in full.state_dict().items():
        np.testing.assert_array_equal(resumed.state_dict()[name], w)


def test_config_json_and_old_checkpoints(tmp_path):
    m = Transformer(V, **ARCH, dropout=0.1)
    m.save(tmp_path / "a")
    with open(tmp_path / "a" / CONFIG_FILE) as f:
        cfg = json.load(f)
    assert cfg["dropout"] == 0.1
    assert Transformer.load(tmp_path / "a").dropout == 0.1
    del cfg["dropout"]  # a checkpoint from before dropout existed
    with open(tmp_path / "a" / CONFIG_FILE, "w") as f:
        json.dump(cfg, f)
    assert Transformer.load(tmp_path / "a").config["dropout"] == 0.0
    cfg["dropout"] = 1.5
    with open(tmp_path / "a" / CONFIG_FILE, "w") as f:
        json.dump(cfg, f)
    with pytest.raises(ValueError, match="dropout"):
        Transformer.load(tmp_path / "a")


@pytest.mark.parametrize("p,exc", [(-0.1, ValueError), (1.0, ValueError), (float("nan"), ValueError),
                                   ("0.1", TypeError), (True, TypeError), (None, TypeError)])
def test_bad_dropout(p, exc):
    with pytest.raises(exc, match="dropout"):
        Transformer(V, **ARCH, dropout=p)
    m = Transformer(V, **ARCH)
    with pytest.raises(exc, match="dropout"):
        m.dropout = p
    assert m.dropout == 0.0


def test_dropout_setter_and_config():
    m = Transformer(V, **ARCH)
    m.dropout = 0.25
    assert m.config["dropout"] == 0.25
    assert Transformer(**{k: v for k, v in m.config.items() if k != "device"}).dropout == 0.25


@pytest.mark.parametrize("cls", [LSTMLM, GRULM])
def test_recurrent_dropout_between_layers(isa, cls):
    from reference.rnn import np_forward_backward as rnn_forward_backward, random_state_dict as rnn_sd
    E, H, L, T, p = 5, 7, 3, 6, 0.3
    cell = "lstm" if cls is LSTMLM else "gru"
    sd = rnn_sd(cell, V, E, H, L, seed=2)
    m = cls(V, embed_dim=E, hidden_size=H, num_layers=L, dropout=p, seed=9)
    m.load_state_dict(sd)
    rng = np.random.default_rng(6)
    idx, tgt = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
    flat = np.arange(T * B * H, dtype=np.uint64)
    for call in range(2):
        seed = call_seed(9, call)
        # The core runs time-major: layer l's mask indexes its (T, B, H) outputs.
        z = [(ref_keep(ref_key(seed, l), flat, p) / (1 - np.float32(p))).reshape(T, B, H).transpose(1, 0, 2)
             for l in range(L - 1)]
        _, loss64, g64, _ = rnn_forward_backward(sd, idx, tgt, drop=z)
        _, loss32, g32, _ = rnn_forward_backward(sd, idx, tgt, dtype=np.float32, drop=z)
        m.zero_grad()
        loss = m.forward_backward(idx, tgt)
        assert abs(loss - loss64) <= 8 * abs(loss32 - loss64) + 1e-6 * abs(loss64)
        grads = m.gradients()
        for name in g64:
            assert_error_bound(grads[name], g64[name], g32[name], factor=8.0, name=name)
    # Off outside training.
    plain = cls(V, embed_dim=E, hidden_size=H, num_layers=L)
    plain.load_state_dict(sd)
    np.testing.assert_array_equal(plain.forward(idx), m.forward(idx))


def test_ranks_draw_masks_of_their_own(sd, monkeypatch):
    import types
    from fastlm import distributed
    rng = np.random.default_rng(5)
    idx, tgt = rng.integers(0, V, (B, BLOCK)), rng.integers(0, V, (B, BLOCK))
    losses = []
    for rank in (0, 1):
        monkeypatch.setattr(distributed, "world", lambda rank=rank: types.SimpleNamespace(rank=rank, size=2))
        m = Transformer(V, **ARCH, dropout=0.3, seed=5)
        m.load_state_dict(sd)
        losses.append(m.forward_backward(idx, tgt))
    monkeypatch.undo()
    m = Transformer(V, **ARCH, dropout=0.3, seed=5)
    m.load_state_dict(sd)
    assert m.forward_backward(idx, tgt) == losses[0] != losses[1]

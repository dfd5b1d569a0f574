"""fastlm.LSTMLM and fastlm.GRULM against independent references
(tests/reference/rnn.py): a float64 NumPy Embedding -> LSTM/GRU -> Linear LM
always, the PyTorch module (nn.Embedding, nn.LSTM/nn.GRU batch first,
nn.Linear) when torch imports.

Odd sizes on purpose: vocab 67, embed 13, hidden 29, 2 layers, batch 3, length 17;
and the edges: length 1, hidden 1 with 1 layer.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

import fastlm
from conftest import (assert_bad_inputs_refused, assert_bad_state_dicts_refused, assert_error_bound,
                      assert_evaluate_short_and_bad, assert_restored, assert_same_next_step,
                      assert_streams_independent)
from fastlm.checkpoint import CONFIG_FILE, MODEL_FILE, OPTIMIZER_FILE, TOKENIZER_FILE, TRAINER_STATE_FILE
from fastlm.cli import main as cli_main
from fastlm.lm import LanguageModel
from fastlm.model import Transformer
from fastlm.rnn import GRULM, LSTMLM
from fastlm.tokenizers import CharTokenizer
from fastlm.train import get_lr
from reference.rnn import (make_torch_rnn, np_adam_step, np_forward_backward, np_sgd_step, param_names,
                           param_shapes, random_state_dict, torch_grads, torch_param_groups)

V, E, H, L, B, T = 67, 13, 29, 2, 3, 17
CLASSES = {"lstm": LSTMLM, "gru": GRULM}
# (embed_dim, hidden_size, num_layers, batch, length)
# "b9": a batch above the GEMM's few-rows path, so the step GEMMs use the pre-packed W_hh,
# and more tokens (99) than vocabulary entries (67), so layer 0 projects the vocabulary
# once and gathers a row per token (the others project each token).
SIZES = {"odd": (E, H, L, B, T), "t1": (E, H, L, B, 1), "h1": (E, 1, 1, B, T), "t1h1": (E, 1, 1, B, 1),
         "b9": (E, H, L, 9, 11)}


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


@pytest.fixture(params=["lstm", "gru"])
def cell(request):
    return request.param


def _arch(e=E, h=H, l=L):
    return dict(embed_dim=e, hidden_size=h, num_layers=l)


def _model(cell, sd=None, e=E, h=H, l=L, **kw):
    m = CLASSES[cell](V, **_arch(e, h, l), **kw)
    if sd is not None:
        m.load_state_dict(sd)
    return m


def _sd(cell, e=E, h=H, l=L, seed=7):
    return random_state_dict(cell, V, e, h, l, seed=seed)


def _batch(b=B, t=T, seed=11):
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, V, (b, t))
    tgt = rng.integers(0, V, (b, t))
    tgt[0, : max(1, t // 4)] = -100  # some ignored targets
    if t > 7:
        tgt[b - 1, 7] = -100
    return idx, tgt


def _torch_state(torch, cell, h0, c0):
    if h0 is None:
        return None
    if cell == "lstm":
        return (torch.from_numpy(np.asarray(h0, np.float64)), torch.from_numpy(np.asarray(c0, np.float64)))
    return torch.from_numpy(np.asarray(h0, np.float64))


# ------------------------------------------------------------ the reference itself

def test_reference_backward_by_finite_differences(cell):
    """The NumPy backward is the gradient of the NumPy forward (with an initial
    state and ignored targets), a few entries of every parameter."""
    v, e, h, l, b, t = 7, 3, 4, 2, 2, 5
    sd = {k: a.astype(np.float64) for k, a in random_state_dict(cell, v, e, h, l, seed=1).items()}
    rng = np.random.default_rng(2)
    idx = rng.integers(0, v, (b, t))
    tgt = rng.integers(0, v, (b, t))
    tgt[1, 2] = -100
    h0 = 0.5 * rng.standard_normal((l, b, h))
    c0 = 0.5 * rng.standard_normal((l, b, h)) if cell == "lstm" else None
    _, _, grads, _ = np_forward_backward(sd, idx, tgt, h0, c0)
    eps = 1e-6
    for name in param_names(l):
        for _ in range(3):
            i = tuple(int(rng.integers(0, s)) for s in sd[name].shape)
            if name == "embedding.weight":
                i = (int(idx[0, 1]),) + i[1:]  # a row that is used
            plus = dict(sd)
            minus = dict(sd)
            plus[name] = sd[name].copy()
            minus[name] = sd[name].copy()
            plus[name][i] += eps
            minus[name][i] -= eps
            lp = np_forward_backward(plus, idx, tgt, h0, c0)[1]
            lm = np_forward_backward(minus, idx, tgt, h0, c0)[1]
            num = (lp - lm) / (2 * eps)
            assert abs(num - grads[name][i]) <= 1e-6 * max(1.0, abs(num)), (name, i, num, grads[name][i])


def test_reference_matches_pytorch(cell):
    torch = _torch()
    if torch is None:
        pytest.skip("torch not installed")
    sd = _sd(cell)
    idx, tgt = _batch()
    rng = np.random.default_rng(3)
    h0 = 0.5 * rng.standard_normal((L, B, H))
    c0 = 0.5 * rng.standard_normal((L, B, H)) if cell == "lstm" else None
    logits, loss, grads, (hT, cT) = np_forward_backward(sd, idx, tgt, h0, c0)
    tm = make_torch_rnn(sd, "float64")
    tl, tloss, tstate = tm(torch.from_numpy(idx), torch.from_numpy(tgt), _torch_state(torch, cell, h0, c0))
    tloss.backward()
    np.testing.assert_allclose(logits, tl.detach().numpy(), rtol=1e-10, atol=1e-12)
    assert abs(loss - tloss.item()) < 1e-12
    tg = torch_grads(tm)
    assert list(tg) == param_names(L)
    for name in param_names(L):
        np.testing.assert_allclose(grads[name], tg[name], rtol=1e-8, atol=1e-13, err_msg=name)
    th = tstate[0] if cell == "lstm" else tstate
    np.testing.assert_allclose(hT, th.detach().numpy(), rtol=1e-10, atol=1e-13)
    if cell == "lstm":
        np.testing.assert_allclose(cT, tstate[1].detach().numpy(), rtol=1e-10, atol=1e-13)
    else:
        assert cT is None


# -------------------------------------------------------------- construction

def test_config_init_and_num_parameters(cell):
    m = CLASSES[cell](V, **_arch(), seed=3)
    assert m.config == dict(vocab_size=V, **_arch(), dropout=0.0, seed=3, device="cpu", precision="fp32")
    assert CLASSES[cell](**m.config).config == m.config
    shapes = param_shapes(cell, V, E, H, L)
    assert m.num_parameters() == sum(int(np.prod(s)) for s in shapes.values())
    assert f"{CLASSES[cell].__name__}(vocab_size=67" in repr(m)
    sd = m.state_dict()
    assert list(sd) == param_names(L)
    k = 1 / math.sqrt(H)
    for name, a in sd.items():
        assert a.dtype == np.float32 and a.shape == shapes[name], name
        if name == "embedding.weight":  # nn.Embedding: N(0, 1)
            assert abs(a.std() - 1.0) < 0.1 and abs(a.mean()) < 0.1
        else:  # nn.LSTM / nn.GRU / nn.Linear(H, V): U(-1/sqrt(H), 1/sqrt(H))
            assert np.abs(a).max() <= k and np.abs(a).max() > 0.8 * k, name
    again = CLASSES[cell](V, **_arch(), seed=3).state_dict()
    assert all(np.array_equal(sd[n], again[n]) for n in sd)
    other = CLASSES[cell](V, **_arch(), seed=4).state_dict()
    assert not np.array_equal(sd["rnn.weight_hh_l1"], other["rnn.weight_hh_l1"])


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(embed_dim=0), ValueError, "embed_dim"),
    (dict(hidden_size=-1), ValueError, "hidden_size"),
    (dict(hidden_size=2**31), ValueError, "hidden_size must be <= 2147483647"),
    (dict(hidden_size=2**31 - 1), ValueError, "weight_hh_l0 is too large"),  # 3H x H > 2^63
    (dict(num_layers=0), ValueError, "num_layers"),
    (dict(num_layers=2.0), TypeError, "num_layers"),
    (dict(hidden_size=True), TypeError, "hidden_size"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(device="tpu"), ValueError, "unknown device"),
    (dict(tokenizer="abc"), TypeError, "tokenizer"),
])
def test_bad_config(cell, kwargs, exc, match):
    args = _arch()
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        CLASSES[cell](V, **args)


def test_bad_vocab_size(cell):
    with pytest.raises(TypeError, match="vocab_size"):
        CLASSES[cell]("x")
    with pytest.raises(ValueError, match="vocab_size"):
        CLASSES[cell](0)


# ---------------------------------------------------------------- state dict

def test_state_dict_roundtrip_with_pytorch(cell):
    torch = _torch()
    if torch is None:
        pytest.skip("torch not installed")
    tm = make_torch_rnn(_sd(cell), "float32")
    tsd = tm.state_dict()
    m = _model(cell)
    ours = m.state_dict()
    assert list(ours) == list(tsd)  # the same names, in the same order
    for name in ours:
        assert ours[name].shape == tuple(tsd[name].shape), name
    # torch -> fastlm: a fresh torch module (its own init) loads unchanged
    fresh = make_torch_rnn(_sd(cell, seed=99), "float32")
    torch.manual_seed(0)
    fresh.embedding.reset_parameters()
    fresh.rnn.reset_parameters()
    fresh.fc.reset_parameters()
    m.load_state_dict(fresh.state_dict())
    got = m.state_dict()
    for name, t in fresh.state_dict().items():
        assert np.array_equal(got[name], t.numpy()), name
    # fastlm -> torch, strict: the same logits
    tm2 = make_torch_rnn(_sd(cell, seed=5), "float32")
    tm2.load_state_dict({k: torch.from_numpy(v) for k, v in got.items()}, strict=True)
    idx, _ = _batch()
    with torch.no_grad():
        tl = tm2(torch.from_numpy(idx))[0].numpy()
    np.testing.assert_allclose(m.forward(idx), tl, rtol=1e-4, atol=1e-5)


def test_load_state_dict_conversions_and_copies(cell):
    sd = _sd(cell)
    m = _model(cell)
    m.load_state_dict({k: v.astype(np.float64) for k, v in sd.items()})
    got = m.state_dict()
    assert all(np.array_equal(got[k], sd[k]) for k in sd)
    got["fc.bias"][:] = 0  # a copy: the model is untouched
    assert np.array_equal(m.state_dict()["fc.bias"], sd["fc.bias"])


def test_load_state_dict_errors(cell):
    sd = _sd(cell)
    m = _model(cell, seed=1)
    before = m.state_dict()
    G = {"lstm": 4, "gru": 3}[cell] * H
    bad = dict(sd)
    del bad["rnn.bias_hh_l1"]
    bad["rnn.weight_ih_l2"] = np.zeros((G, H), np.float32)
    bad["rnn.weight_hh_l0"] = np.zeros((G, H + 1), np.float32)
    with pytest.raises(ValueError) as ei:
        m.load_state_dict(bad)
    msg = str(ei.value)
    assert "missing keys: rnn.bias_hh_l1" in msg
    assert "unexpected keys: 'rnn.weight_ih_l2'" in msg
    assert f"rnn.weight_hh_l0: got ({G}, {H + 1}), expected ({G}, {H})" in msg
    # a state dict of the other cell: every recurrent tensor has the wrong shape
    other = "gru" if cell == "lstm" else "lstm"
    with pytest.raises(ValueError, match="shape mismatches: rnn.weight_ih_l0"):
        m.load_state_dict(random_state_dict(other, V, E, H, L))
    assert_bad_state_dicts_refused(m, sd, "fc.bias", before)


# ------------------------------------------------------------------- parity

@pytest.mark.parametrize("size", list(SIZES))
def test_logits_loss_and_every_gradient_parity(cell, size):
    e, h, l, b, t = SIZES[size]
    sd = _sd(cell, e, h, l)
    idx, tgt = _batch(b, t)
    m = _model(cell, sd, e, h, l)
    ref64, loss64, g64, (h64, c64) = np_forward_backward(sd, idx, tgt)
    ref32, loss32, g32, (h32, c32) = np_forward_backward(sd, idx, tgt, dtype=np.float32)

    logits = m.forward(idx)
    assert logits.dtype == np.float32 and logits.shape == (b, t, V)
    assert_error_bound(logits, ref64, ref32, factor=8, name="logits")
    hs, cs = m.state()
    assert hs.shape == (l, b, h) and hs.dtype == np.float32
    assert_error_bound(hs, h64, h32, factor=8, name="h_n")
    if cell == "lstm":
        assert cs.shape == (l, b, h)
        assert_error_bound(cs, c64, c32, factor=8, name="c_n")
    else:
        assert cs is None
    np.testing.assert_array_equal(m.forward(idx.astype(np.int32)), logits)
    np.testing.assert_array_equal(m.forward(idx.tolist()), logits)

    m.zero_grad()
    loss = m.forward_backward(idx, tgt)
    assert isinstance(loss, float)
    assert abs(loss - loss64) <= 8 * abs(loss32 - loss64) + 8 * np.finfo(np.float32).eps * abs(loss64)
    grads = m.gradients()
    assert list(grads) == param_names(l)
    for name in param_names(l):
        assert grads[name].dtype == np.float32 and grads[name].shape == g64[name].shape, name
        if t == 1 and "weight_hh" in name:  # one step from h = 0: no recurrent gradient
            assert not grads[name].any() and not g64[name].any(), name
        else:
            assert np.abs(g64[name]).max() > 0, name  # every path carries gradient
        assert_error_bound(grads[name], g64[name], g32[name], factor=8, name=name)
    norm64 = math.sqrt(sum(float(np.sum(g * g)) for g in g64.values()))
    assert abs(m.grad_norm() - norm64) <= 1e-4 * norm64
    # gradients accumulate like loss.backward(); zero_grad clears them
    m.forward_backward(idx, tgt)
    twice = m.gradients()
    for name in param_names(l):
        np.testing.assert_allclose(twice[name], 2 * grads[name], rtol=1e-5, atol=1e-9, err_msg=name)
    m.zero_grad()
    assert all(not g.any() for g in m.gradients().values())


@pytest.mark.parametrize("size", list(SIZES))
def test_parity_with_pytorch(cell, size):
    torch = _torch()
    if torch is None:
        pytest.skip("torch not installed; the float64 NumPy reference covers parity")
    e, h, l, b, t = SIZES[size]
    sd = _sd(cell, e, h, l)
    idx, tgt = _batch(b, t)
    outs = {}
    for key in ("float64", "float32"):
        tm = make_torch_rnn(sd, key)
        logits, loss, _ = tm(torch.from_numpy(idx), torch.from_numpy(tgt))
        loss.backward()
        outs[key] = (logits.detach().double().numpy(), loss.item(), torch_grads(tm))
    m = _model(cell, sd, e, h, l)
    m.zero_grad()
    loss = m.forward_backward(idx, tgt)
    assert_error_bound(m.forward(idx), outs["float64"][0], outs["float32"][0], factor=8, name="logits vs torch")
    assert abs(loss - outs["float64"][1]) <= 8 * abs(outs["float32"][1] - outs["float64"][1]) + 1e-6
    grads = m.gradients()
    for name in param_names(l):
        assert_error_bound(grads[name], outs["float64"][2][name], outs["float32"][2][name], factor=8,
                           name=name + " vs torch")


@pytest.mark.parametrize("size", ["odd", "h1", "b9"])
def test_parity_on_every_isa(cell, isa, size):
    """The model's kernels on each ISA this CPU runs (a model binds the kernel
    table active when it is built)."""
    e, h, l, b, t = SIZES[size]
    sd = _sd(cell, e, h, l)
    idx, tgt = _batch(b, t)
    m = _model(cell, sd, e, h, l)
    ref64, loss64, g64, _ = np_forward_backward(sd, idx, tgt)
    ref32, loss32, g32, _ = np_forward_backward(sd, idx, tgt, dtype=np.float32)
    assert_error_bound(m.forward(idx), ref64, ref32, factor=8, name=f"logits [{isa}]")
    m.zero_grad()
    loss = m.forward_backward(idx, tgt)
    assert abs(loss - loss64) <= 8 * abs(loss32 - loss64) + 1e-6
    grads = m.gradients()
    for name in param_names(l):
        assert_error_bound(grads[name], g64[name], g32[name], factor=8, name=f"{name} [{isa}]")
    got = m.generate([[5, 9, 1], [0, 33, 66]], 10, do_sample=False)
    np.testing.assert_array_equal(got, _greedy_by_recompute(m, [[5, 9, 1], [0, 33, 66]], 10))


def test_all_targets_ignored_is_nan(cell):
    m = _model(cell, _sd(cell))
    idx, _ = _batch()
    m.zero_grad()
    assert math.isnan(m.forward_backward(idx, np.full_like(idx, -100)))
    assert all(not g.any() for g in m.gradients().values())


# ------------------------------------------------------------------- carry

def test_carry_equals_one_long_forward(cell):
    sd = _sd(cell)
    m = _model(cell, sd)
    assert m.state() == (None, None)  # before any call
    idx, _ = _batch()
    full = m.forward(idx)
    np.testing.assert_array_equal(_model(cell, sd).forward(idx, carry=True), full)  # nothing to carry yet
    h_full, c_full = m.state()
    first = m.forward(idx[:, :9])
    second = m.forward(idx[:, 9:], carry=True)
    np.testing.assert_allclose(np.concatenate([first, second], axis=1), full, rtol=1e-5, atol=1e-6)
    h2, c2 = m.state()
    np.testing.assert_allclose(h2, h_full, rtol=1e-5, atol=1e-6)
    if cell == "lstm":
        np.testing.assert_allclose(c2, c_full, rtol=1e-5, atol=1e-6)
    # without carry the second half starts from zeros again
    fresh = m.forward(idx[:, 9:])
    assert np.abs(fresh - full[:, 9:]).max() > 1e-3
    # carried state in many small pieces, down to one token at a time
    out = [m.forward(idx[:, :1])]
    for s in range(1, T):
        out.append(m.forward(idx[:, s:s + 1], carry=True))
    np.testing.assert_allclose(np.concatenate(out, axis=1), full, rtol=1e-5, atol=1e-6)


def test_state_and_carry_against_reference(cell):
    """state() is the reference's final (h, c); carrying it equals the
    reference run from that initial state."""
    sd = _sd(cell)
    m = _model(cell, sd)
    idx, _ = _batch()
    m.forward(idx[:, :9])
    h9, c9 = m.state()
    _, _, _, (rh, rc) = np_forward_backward(sd, idx[:, :9])
    np.testing.assert_allclose(h9, rh, rtol=1e-4, atol=1e-5)
    if cell == "lstm":
        np.testing.assert_allclose(c9, rc, rtol=1e-4, atol=1e-5)
    h_copy = h9.copy()
    h9[:] = 0  # a copy: the model's state is untouched
    got = m.forward(idx[:, 9:], carry=True)
    ref64, _, _, _ = np_forward_backward(sd, idx[:, 9:], None, h_copy, c9)
    ref32, _, _, _ = np_forward_backward(sd, idx[:, 9:], None, h_copy, c9, dtype=np.float32)
    assert_error_bound(got, ref64, ref32, factor=8, name="logits after carry")


def test_carry_with_another_batch_size_starts_from_zero(cell):
    m = _model(cell, _sd(cell))
    idx, _ = _batch()
    zero = m.forward(idx[:, 9:])
    m.forward(idx[:2, :9])  # a state of batch 2
    np.testing.assert_array_equal(m.forward(idx[:, 9:], carry=True), zero)
    assert m.state()[0].shape == (L, B, H)


def test_carried_forward_backward_gradients(cell):
    """The training path fit(stateful=True) uses: BPTT through the window from
    the carried state (a constant), against the reference with that h0/c0."""
    sd = _sd(cell)
    m = _model(cell, sd)
    idx, tgt = _batch()
    m.forward(idx[:, :9])
    h0, c0 = m.state()
    x = np.ascontiguousarray(idx[:, 9:])
    y = np.ascontiguousarray(tgt[:, 9:])
    m.zero_grad()
    loss = m._forward_backward(x, y, 1.0, True)
    _, loss64, g64, _ = np_forward_backward(sd, x, y, h0, c0)
    _, loss32, g32, _ = np_forward_backward(sd, x, y, h0, c0, dtype=np.float32)
    assert abs(loss - loss64) <= 8 * abs(loss32 - loss64) + 1e-6
    grads = m.gradients()
    for name in param_names(L):
        assert_error_bound(grads[name], g64[name], g32[name], factor=8, name=name)


# -------------------------------------------------------------------- step

def _two_batches(seed=5):
    rng = np.random.default_rng(seed)
    two = [(rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))) for _ in range(2)]
    return [two[i % 2] for i in range(10)]  # memorisable, so the loss must fall


def _run_ours(cell, sd, batches, lr, **step_kw):
    m = _model(cell, sd)
    losses = []
    for x, y in batches:
        m.zero_grad()
        losses.append(m.forward_backward(x, y))
        m.step(lr, **step_kw)
    return m, losses


def _run_numpy(sd, batches, update):
    params = {k: v.astype(np.float64) for k, v in sd.items()}
    losses = []
    for t, (x, y) in enumerate(batches, 1):
        _, loss, grads, _ = np_forward_backward(params, x, y)
        losses.append(loss)
        update(params, grads, t)
    return params, losses


def _run_torch(sd, batches, make_opt):
    torch = _torch()
    tm = make_torch_rnn(sd, "float64")
    opt = make_opt(tm)
    losses = []
    for x, y in batches:
        opt.zero_grad()
        _, loss, _ = tm(torch.from_numpy(x), torch.from_numpy(y))
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return {k: v.detach().numpy() for k, v in tm.state_dict().items()}, losses


def _check_params(ours, ref, atol):
    for k in ref:
        np.testing.assert_allclose(ours[k], ref[k], rtol=0, atol=atol, err_msg=k)


def test_adam_is_the_default_step(cell):
    """Ten default steps: torch.optim.Adam (betas 0.9, 0.999, no decay)."""
    sd = _sd(cell)
    batches = _two_batches()
    lr = 3e-3
    m, ours = _run_ours(cell, sd, batches, lr)
    assert m.optimizer_step == 10
    assert ours[-1] < ours[0] - 0.05  # it learns
    state: dict = {}
    params, ref = _run_numpy(sd, batches, lambda p, g, t: np_adam_step(p, g, state, t, lr))
    np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-4)
    _check_params(m.state_dict(), params, 2e-4)
    if _torch() is not None:
        import torch
        tparams, tl = _run_torch(sd, batches, lambda tm: torch.optim.Adam(tm.parameters(), lr=lr))
        np.testing.assert_allclose(tl, ref, rtol=0, atol=1e-10)  # the NumPy Adam is torch's
        np.testing.assert_allclose(ours, tl, rtol=0, atol=2e-4)
        _check_params(m.state_dict(), tparams, 2e-4)
    # optimizer="adam" has no (coupled, L2) weight decay: asking for one is an error, not a no-op
    with pytest.raises(ValueError, match="optimizer='adam' has no weight decay"):
        _run_ours(cell, sd, batches[:3], lr, optimizer="adam", weight_decay=0.5)


def test_sgd_momentum_matches_torch(cell):
    sd = _sd(cell)
    batches = _two_batches()[:4]
    lr, wd = 0.5, 0.01
    m, ours = _run_ours(cell, sd, batches, lr, optimizer="sgd", momentum=0.9, weight_decay=wd)
    bufs: dict = {}
    params, ref = _run_numpy(sd, batches, lambda p, g, t: np_sgd_step(p, g, bufs, lr, 0.9, wd))
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-4)
    _check_params(m.state_dict(), params, 1e-4)
    if _torch() is not None:
        import torch
        tparams, tl = _run_torch(sd, batches,
                                 lambda tm: torch.optim.SGD(torch_param_groups(tm, wd), lr=lr, momentum=0.9))
        np.testing.assert_allclose(tl, ref, rtol=0, atol=1e-10)
        np.testing.assert_allclose(ours, tl, rtol=0, atol=1e-4)
        _check_params(m.state_dict(), tparams, 1e-4)
    # momentum 0 is plain SGD: p -= lr * g
    m0 = _model(cell, sd)
    x, y = batches[0]
    m0.forward_backward(x, y)
    g = m0.gradients()
    m0.step(0.1, optimizer="sgd", momentum=0.0)
    for k, v in m0.state_dict().items():
        np.testing.assert_allclose(v, sd[k] - np.float32(0.1) * g[k], rtol=0, atol=1e-6, err_msg=k)


def test_adamw_decays_2d_weights_only(cell):
    sd = _sd(cell)
    batches = _two_batches()[:5]
    lr, wd, betas = 3e-3, 0.1, (0.9, 0.95)
    m, ours = _run_ours(cell, sd, batches, lr, optimizer="adamw", weight_decay=wd, betas=betas)
    state: dict = {}
    params, ref = _run_numpy(sd, batches, lambda p, g, t: np_adam_step(p, g, state, t, lr, betas, 1e-8, wd))
    np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-4)
    _check_params(m.state_dict(), params, 2e-4)
    if _torch() is not None:
        import torch
        tparams, tl = _run_torch(sd, batches, lambda tm: torch.optim.AdamW(torch_param_groups(tm, wd), lr=lr,
                                                                          betas=betas, eps=1e-8))
        np.testing.assert_allclose(tl, ref, rtol=0, atol=1e-10)
        np.testing.assert_allclose(ours, tl, rtol=0, atol=2e-4)
        _check_params(m.state_dict(), tparams, 2e-4)
    # grad_scale=0 leaves only the decoupled decay, on 2-D tensors only
    c = _model(cell, sd)
    c.forward_backward(*batches[0])
    c.step(1e-2, optimizer="adamw", weight_decay=0.5, grad_scale=0.0)
    for k, v in c.state_dict().items():
        want = sd[k] * np.float32(1 - 1e-2 * 0.5) if sd[k].ndim == 2 else sd[k]
        np.testing.assert_allclose(v, want, rtol=1e-6, atol=0, err_msg=k)


# --------------------------------------------------------------------- fit

def _data(n=3000, seed=0):
    """A learnable stream: a noisy walk through the vocabulary."""
    rng = np.random.default_rng(seed)
    return (np.cumsum(rng.integers(1, 3, n)) % V).astype(np.uint16)


def test_fit_learns(cell):
    m = _model(cell, seed=2)
    data = _data()
    hist = m.fit(data[:2500], val=data[2500:], steps=30, batch_size=4, block_size=16, lr=1e-2,
                 optimizer="adam", weight_decay=0.0, eval_interval=15, eval_batches=2, progress=False)
    assert len(hist) == 30 and m.optimizer_step == 30
    assert np.mean(hist.losses[-5:]) < np.mean(hist.losses[:5]) - 0.3
    assert [s for s, _ in hist.val_losses] == [15, 30]
    assert hist.val_losses[-1][1] < math.log(V) - 0.3
    assert m.history == hist


def test_fit_stateful_carries_the_state(cell):
    """fit(stateful=True) walks batch_size contiguous streams window by window,
    each window starting from the state the previous one left (truncated
    BPTT); replayed here step by step, the carried state checked against the
    reference run from it."""
    sd = _sd(cell)
    data = _data(2000)
    bs, block, steps, lr, betas = 3, 16, 3, 3e-3, (0.9, 0.95)
    kw = dict(steps=steps, batch_size=bs, block_size=block, lr=lr, warmup_steps=0, grad_clip=None, betas=betas,
              optimizer="adam", weight_decay=0.0, progress=False, stateful=True)
    m = _model(cell, sd)
    hist = m.fit(data, **kw)
    assert len(hist) == steps

    stream_len = len(data) // bs
    streams = data[:stream_len * bs].reshape(bs, stream_len).astype(np.int64)
    r = _model(cell, sd)
    for it in range(steps):
        x = np.ascontiguousarray(streams[:, it * block:(it + 1) * block])
        y = np.ascontiguousarray(streams[:, it * block + 1:(it + 1) * block + 1])
        r.zero_grad()
        if it == 0:
            want = r.forward_backward(x, y)  # window 0 starts from zeros
        else:
            h0, c0 = r.state()  # what the previous window left
            now = r.state_dict()
            _, carried, _, _ = np_forward_backward(now, x, y, h0, c0)
            _, cold, _, _ = np_forward_backward(now, x, y)
            assert abs(carried - cold) > 1e-4  # the carried state matters (float32 error ~1e-7)
            want = r._forward_backward(x, y, 1.0, True)
            assert want == pytest.approx(carried, abs=1e-5)
        assert hist[it]["loss"] == pytest.approx(want, abs=1e-6), it
        r.step(get_lr(it, lr=lr, warmup_steps=0, decay_steps=steps, min_lr=lr / 10), optimizer="adam",
               betas=betas)
    final = m.state_dict()
    for k, v in r.state_dict().items():
        np.testing.assert_allclose(final[k], v, rtol=0, atol=1e-6, err_msg=k)
    # deterministic: the same run twice gives the same losses, bit for bit;
    # evaluating val between steps does not disturb the carried state
    assert _model(cell, sd).fit(data, **kw).losses == hist.losses
    with_val = _model(cell, sd).fit(data, val=data[:300], eval_interval=1, eval_batches=2, **kw)
    assert with_val.losses == hist.losses and len(with_val.val_losses) == steps
    # and a non-stateful run is another one
    assert _model(cell, sd).fit(data, **{**kw, "stateful": False}).losses != hist.losses


def test_fit_stateful_wraps_and_checks(cell):
    m = _model(cell, seed=1)
    data = _data(200)
    # 200 tokens in 4 streams of 50: windows of 16 at 0, 16, 32, then back to 0
    hist = m.fit(data, steps=5, batch_size=4, block_size=16, stateful=True, progress=False)
    assert len(hist) == 5 and all(np.isfinite(hist.losses))
    assert len(_model(cell).fit(data[:68], steps=2, batch_size=4, block_size=16, stateful=True,
                                progress=False)) == 2  # 4 streams of exactly block + 1 tokens
    with pytest.raises(ValueError, match="train has 40 tokens"):
        m.fit(data[:40], steps=2, batch_size=4, block_size=16, stateful=True, progress=False)
    with pytest.raises(TypeError, match="stateful"):
        m.fit(data, steps=2, batch_size=4, block_size=16, stateful=1, progress=False)


@pytest.mark.parametrize("n", [4 * 16 + 1, 4 * 17 - 1])
def test_fit_stateful_shortest_accepted_train(cell, n):
    """Every train that fit(stateful=True) accepts must train (or be refused
    up front with an error naming train), not fail inside the model: each of
    the batch_size streams needs a window of block_size + 1 tokens, so 4
    streams of block 16 need 68 tokens, not 65."""
    data = _data(200)
    try:
        h = _model(cell, seed=1).fit(data[:n], steps=2, batch_size=4, block_size=16, stateful=True,
                                     progress=False)
    except ValueError as e:
        assert str(e).startswith(f"train has {n} tokens"), str(e)
    else:
        assert len(h) == 2 and all(np.isfinite(h.losses))


def test_fit_stateful_transformer_raises():
    t = Transformer(V, block_size=8, n_layer=1, n_head=1, n_embd=8)
    with pytest.raises(ValueError, match="stateful"):
        t.fit(_data(500), steps=2, batch_size=2, stateful=True, progress=False)
    assert t.optimizer_step == 0


@pytest.mark.parametrize("optimizer, stateful", [("adam", False), ("sgd", False), ("adam", True)])
def test_fit_resume_equals_uninterrupted(cell, optimizer, stateful, tmp_path):
    """train.py: "A run resumed from its checkpoint continues with exactly the
    losses the uninterrupted run would have had"; with stateful=True that
    includes the recurrent state carried into the next window."""
    data = _data(2000)
    kw = dict(steps=4, batch_size=3, block_size=12, lr=3e-3, warmup_steps=1, optimizer=optimizer, progress=False,
              seed=9, stateful=stateful)
    full = _model(cell, seed=1).fit(data, **kw)
    ck = tmp_path / "run"
    h1 = _model(cell, seed=1).fit(data, checkpoint_dir=ck, callback=lambda step, metrics: step < 2, **kw)
    assert len(h1) == 2
    resumed = _model(cell, seed=55)  # everything comes from the checkpoint
    h2 = resumed.fit(data, checkpoint_dir=ck, resume=True, **kw)
    assert [e["step"] for e in h2] == [1, 2, 3, 4]
    assert h2.losses == full.losses


# ---------------------------------------------------------------- evaluate

def test_evaluate_matches_reference(cell):
    sd = _sd(cell)
    m = _model(cell, sd)
    data = _data(2 * 64 + 30, seed=3).astype(np.int64)
    ev = m.evaluate(data, batch_size=3)
    assert set(ev) == {"loss", "perplexity"}
    x = np.stack([data[k * 64:(k + 1) * 64] for k in range(2)])  # windows of 64, each from zeros
    y = np.stack([data[k * 64 + 1:(k + 1) * 64 + 1] for k in range(2)])
    _, ref, _, _ = np_forward_backward(sd, x, y)
    assert ev["loss"] == pytest.approx(ref, rel=1e-5)
    assert ev["perplexity"] == pytest.approx(math.exp(ref), rel=1e-5)
    assert_evaluate_short_and_bad(m, data, lambda x, y: np_forward_backward(sd, x, y)[1], V)


def test_evaluate_keeps_the_carried_state(cell):
    m = _model(cell, _sd(cell))
    idx, _ = _batch()
    m.forward(idx[:, :9])
    want = m.forward(idx[:, 9:], carry=True)
    want_h, want_c = m.state()
    m.forward(idx[:, :9])
    ev = m.evaluate(_data(300), batch_size=2)  # another batch size, longer windows
    assert np.isfinite(ev["loss"])
    np.testing.assert_array_equal(m.forward(idx[:, 9:], carry=True), want)
    h, c = m.state()
    np.testing.assert_array_equal(h, want_h)
    if cell == "lstm":
        np.testing.assert_array_equal(c, want_c)


# ------------------------------------------------------------------ generate

def _greedy_by_recompute(m, prompt2d, n):
    seq = np.array(prompt2d, dtype=np.int64)
    for _ in range(n):
        logits = m.forward(seq)[:, -1]
        seq = np.concatenate([seq, logits.argmax(-1)[:, None]], axis=1)
    return seq


def test_greedy_generation_equals_full_recompute(cell):
    m = _model(cell, _sd(cell))
    prompt = np.array([[5, 9, 1, 60, 2], [0, 0, 33, 66, 4]], dtype=np.int64)
    got = m.generate(prompt, 30, do_sample=False)
    assert got.dtype == np.int64 and got.shape == (2, 35)
    np.testing.assert_array_equal(got, _greedy_by_recompute(m, prompt, 30))
    one = m.generate(prompt[1], 30, do_sample=False)
    assert one.ndim == 1
    np.testing.assert_array_equal(one, got[1])
    single = m.generate([7], 5, do_sample=False)  # a one-token prompt
    np.testing.assert_array_equal(single, _greedy_by_recompute(m, [[7]], 5)[0])


def test_generate_seed_stream_and_eos(cell):
    m = _model(cell, _sd(cell))
    prompt = [3, 1, 4, 1, 5]
    a = m.generate(prompt, 25, seed=123, temperature=1.3)
    np.testing.assert_array_equal(a, m.generate(prompt, 25, seed=123, temperature=1.3))
    assert a.shape == (30,) and a[:5].tolist() == prompt
    assert not np.array_equal(a, m.generate(prompt, 25, seed=124, temperature=1.3))
    s = list(m.generate(prompt, 25, seed=123, temperature=1.3, stream=True))
    assert all(isinstance(t, int) for t in s) and s == a[5:].tolist()
    np.testing.assert_array_equal(m.generate(prompt, 10, top_k=1, seed=9), m.generate(prompt, 10, do_sample=False))
    top = m.generate(prompt, 10, top_k=5, top_p=0.9, seed=9)
    assert ((top >= 0) & (top < V)).all()
    assert m.generate(prompt, 0).tolist() == prompt
    # eos: the greedy run's first new token stops a 1-D generation right after it
    greedy = m.generate(prompt, 6, do_sample=False)
    eos = int(greedy[5])
    assert m.generate(prompt, 6, do_sample=False, eos_token_id=eos).tolist() == greedy[:6].tolist()
    # a batch: sampled rows are reproducible; finished rows keep emitting eos
    batch = np.array([prompt, [7, 7, 7, 7, 7], [60, 2, 2, 9, 0]])
    b1 = m.generate(batch, 12, seed=77)
    np.testing.assert_array_equal(b1, m.generate(batch, 12, seed=77))
    streamed = list(m.generate(batch, 12, seed=77, stream=True))
    assert len(streamed) == 12 and streamed[0].shape == (3,)
    np.testing.assert_array_equal(np.stack(streamed, 1), b1[:, 5:])
    free = m.generate(batch, 8, do_sample=False)
    eos = int(free[0, 5])
    got = m.generate(batch, 8, do_sample=False, eos_token_id=eos)
    assert (got[0, 5:] == eos).all()
    for row in range(3):
        hit = np.flatnonzero(free[row, 5:] == eos)
        stop = 5 + (hit[0] + 1 if hit.size else 8)
        np.testing.assert_array_equal(got[row, :stop], free[row, :stop])
        assert (got[row, stop:] == eos).all()


def test_interleaved_streams_do_not_share_the_state(cell):
    assert_streams_independent(_model(cell, _sd(cell)))


def test_generate_bad_args(cell):
    m = _model(cell, _sd(cell))
    with pytest.raises(ValueError, match="max_new_tokens"):
        m.generate([1, 2], -1)
    with pytest.raises(ValueError, match="out of range"):
        m.generate([1, V], 3)
    with pytest.raises(TypeError, match="integer"):
        m.generate([1.5, 2.0], 3)
    with pytest.raises(ValueError, match="temperature"):
        m.generate([1, 2], 3, temperature=0.0)
    with pytest.raises(ValueError, match="eos_token_id"):
        m.generate([1, 2], 3, eos_token_id=V)
    with pytest.raises(TypeError, match="tokenizer"):
        m.generate("abc", 2)
    tok = CharTokenizer.from_text("abcdefgh ")
    mt = CLASSES[cell](tok.vocab_size, embed_dim=4, hidden_size=5, num_layers=1, tokenizer=tok)
    out = mt.generate("abc", 5, seed=0)
    assert out[:3].tolist() == tok.encode("abc").tolist() and len(tok.decode(out)) == 8


# --------------------------------------------------------------- checkpoints

def _trained(cell, sd, steps=2):
    tok = CharTokenizer.from_text("".join(chr(ord("!") + i) for i in range(V)))
    m = CLASSES[cell](V, **_arch(), seed=4, tokenizer=tok)
    m.load_state_dict(sd)
    data = _data(500)
    m.fit(data, steps=steps, batch_size=2, block_size=16, optimizer="adam", progress=False, val=data[:100],
          eval_interval=1)
    return m


def test_save_load_bit_exact(cell, tmp_path):
    sd = _sd(cell)
    m = _trained(cell, sd)
    path = tmp_path / "ckpt"
    m.save(path)
    assert sorted(os.listdir(path)) == sorted([CONFIG_FILE, MODEL_FILE, TOKENIZER_FILE, OPTIMIZER_FILE,
                                               TRAINER_STATE_FILE])
    cfg = json.loads((path / CONFIG_FILE).read_text())
    assert cfg["model_type"] == cell
    assert (cfg["vocab_size"], cfg["embed_dim"], cfg["hidden_size"], cfg["num_layers"]) == (V, E, H, L)
    import safetensors.numpy
    assert set(safetensors.numpy.load_file(str(path / MODEL_FILE))) == set(param_names(L))

    idx, tgt = _batch()
    for loaded in (CLASSES[cell].load(path), LanguageModel.load(path), fastlm.LanguageModel.load(str(path))):
        assert type(loaded) is CLASSES[cell]
        assert_restored(m, loaded, idx, tgt)
        assert loaded.optimizer_step == 2
    assert_same_next_step(m, CLASSES[cell].load(path), idx, tgt)


def test_load_the_wrong_class_raises(cell, tmp_path):
    m = _model(cell, _sd(cell))
    m.save(tmp_path / "c")
    assert sorted(os.listdir(tmp_path / "c")) == [CONFIG_FILE, MODEL_FILE]
    other = GRULM if cell == "lstm" else LSTMLM
    with pytest.raises(ValueError, match=f"model_type '{cell}'"):
        other.load(tmp_path / "c")
    with pytest.raises(ValueError, match="model_type"):
        Transformer.load(tmp_path / "c")
    t = Transformer(V, block_size=8, n_layer=1, n_head=1, n_embd=8)
    t.save(tmp_path / "t")
    with pytest.raises(ValueError, match="model_type 'transformer'"):
        CLASSES[cell].load(tmp_path / "t")
    assert type(LanguageModel.load(tmp_path / "t")) is Transformer
    fresh = LanguageModel.load(tmp_path / "c")
    assert fresh.optimizer_step == 0 and fresh.tokenizer is None


# ----------------------------------------------------------------- bad inputs

def test_bad_inputs(cell):
    m = _model(cell, _sd(cell))
    idx, tgt = _batch()
    assert_bad_inputs_refused(m, idx, tgt, V)
    with pytest.raises(TypeError, match="integer"):
        m.forward_backward(idx.astype(np.float64), tgt)
    with pytest.raises(ValueError, match="optimizer"):
        m.step(1e-3, optimizer="rmsprop")
    with pytest.raises(ValueError, match="momentum"):
        m.step(1e-3, optimizer="sgd", momentum=1.5)
    with pytest.raises(ValueError, match="weight_decay"):
        m.step(1e-3, optimizer="sgd", weight_decay=-0.1)
    data = _data(500)
    with pytest.raises(ValueError, match="optimizer"):
        m.fit(data, steps=2, batch_size=2, optimizer="lbfgs", progress=False)
    with pytest.raises(ValueError, match="momentum"):
        m.fit(data, steps=2, batch_size=2, optimizer="sgd", momentum=1.5, progress=False)
    with pytest.raises(ValueError, match="block_size"):
        m.fit(data, steps=2, batch_size=2, block_size=0, progress=False)
    assert m.optimizer_step == 0  # nothing was stepped


# ----------------------------------------------------------------------- CLI

@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = np.random.default_rng(0)
    words = ["ab", "abc", "bca", "cab", "bac", "ba"]
    p = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    p.write_text("\n".join(" ".join(rng.choice(words, 8)) for _ in range(60)) + "\n", encoding="utf-8")
    return p


def test_cli_train_and_sample(cell, corpus, tmp_path, capsys):
    out = tmp_path / "out"
    rc = cli_main(["train", str(corpus), "--model", cell, "--out", str(out), "--steps", "20", "--batch-size", "4",
                   "--block-size", "16", "--hidden-size", "32", "--embed-dim", "16", "--num-layers", "1",
                   "--no-progress"])
    assert rc == 0
    assert {CONFIG_FILE, MODEL_FILE, TOKENIZER_FILE, OPTIMIZER_FILE, "metrics.jsonl"} <= set(os.listdir(out))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 21))
    m = LanguageModel.load(out)
    assert type(m) is CLASSES[cell] and m.optimizer_step == 20
    assert (m.config["hidden_size"], m.config["embed_dim"], m.config["num_layers"]) == (32, 16, 1)
    capsys.readouterr()
    args = ["sample", str(out), "--prompt", "ab", "--max-new-tokens", "20"]
    assert cli_main(args) == 0
    text = capsys.readouterr().out
    assert text.startswith("ab") and len(text) == 2 + 20 + 1
    assert cli_main(args) == 0
    assert capsys.readouterr().out == text  # same (default) seed, same text
    assert cli_main(args + ["--num-samples", "2", "--greedy"]) == 0
    assert capsys.readouterr().out.count("ab") >= 2
    # resume continues the run; an architecture flag that differs is one error line
    assert cli_main(["train", str(corpus), "--out", str(out), "--steps", "22", "--resume", "--block-size", "16",
                     "--batch-size", "4", "--no-progress"]) == 0
    assert LanguageModel.load(out).optimizer_step == 22
    capsys.readouterr()
    assert cli_main(["train", str(corpus), "--out", str(out), "--steps", "25", "--resume", "--hidden-size",
                     "64", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fastlm: error:") and "--hidden-size 64 differs" in err


def test_switching_optimizer_starts_it_empty():
    """A new optimizer starts from empty state, as a new torch.optim object would."""
    rng = np.random.default_rng(3)
    x = rng.integers(0, 11, (2, 5))
    y = rng.integers(0, 11, (2, 5))

    def run(first_adam: bool):
        m = fastlm.LSTMLM(11, embed_dim=4, hidden_size=6, num_layers=1, seed=0)
        if first_adam:
            m.zero_grad(); m.forward_backward(x, y); m.step(1e-3)
            m.load_state_dict(fastlm.LSTMLM(11, embed_dim=4, hidden_size=6, num_layers=1, seed=0).state_dict())
        m.zero_grad(); m.forward_backward(x, y); m.step(0.1, optimizer="sgd", momentum=0.9)
        m.zero_grad(); m.forward_backward(x, y); m.step(0.1, optimizer="sgd", momentum=0.9)
        return m.state_dict()

    a, b = run(True), run(False)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_cli_rejects_flags_of_another_model(tmp_path):
    from fastlm.cli import main
    corpus = tmp_path / "c.txt"
    corpus.write_text("abcabcabd " * 200)
    assert main(["train", str(corpus), "--model", "lstm", "--n-layer", "2", "--out", str(tmp_path / "o"),
                 "--steps", "1", "--no-progress"]) != 0
    assert main(["train", str(corpus), "--hidden-size", "8", "--out", str(tmp_path / "o2"),
                 "--steps", "1", "--no-progress"]) != 0

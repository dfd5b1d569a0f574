"""LSTM cell forward/backward against float64 NumPy, torch.nn.LSTMCell, and bad inputs."""
from __future__ import annotations

import numpy as np
import pytest

from fastlm import ops
from conftest import assert_error_bound, finite_difference, torch_or_skip


def sigmoid(z):
    with np.errstate(over="ignore"):  # exp(-z) = inf gives the right limit, 0
        return 1 / (1 + np.exp(-z))


def lstm_ref(x, h, c, w_ih, w_hh, b_ih, b_hh, dtype=np.float64):
    """PyTorch's LSTMCell in `dtype`: returns (h_next, c_next, gates)."""
    x, h, c, w_ih, w_hh, b_ih, b_hh = (np.asarray(a, dtype=dtype)
                                       for a in (x, h, c, w_ih, w_hh, b_ih, b_hh))
    pre = x @ w_ih.T + b_ih + h @ w_hh.T + b_hh
    i, f, g, o = np.split(pre, 4, axis=1)
    i, f, g, o = sigmoid(i), sigmoid(f), np.tanh(g), sigmoid(o)
    c_next = f * c + i * g
    return o * np.tanh(c_next), c_next, np.concatenate([i, f, g, o], axis=1)


def lstm_backward_ref(dh_next, dc_next, x, h, c, w_ih, w_hh, b_ih, b_hh, dtype=np.float64):
    """Returns (dx, dh, dc, dw_ih, dw_hh, db) for loss <dh_next, h_next> + <dc_next, c_next>."""
    _, c_next, gates = lstm_ref(x, h, c, w_ih, w_hh, b_ih, b_hh, dtype)
    dh_next, dc_next, x, h, c, w_ih, w_hh = (np.asarray(a, dtype=dtype)
                                             for a in (dh_next, dc_next, x, h, c, w_ih, w_hh))
    i, f, g, o = np.split(gates, 4, axis=1)
    tc = np.tanh(c_next)
    dct = dc_next + dh_next * o * (1 - tc * tc)
    dpre = np.concatenate([dct * g * i * (1 - i), dct * c * f * (1 - f),
                           dct * i * (1 - g * g), dh_next * tc * o * (1 - o)], axis=1)
    return dpre @ w_ih, dpre @ w_hh, dct * f, dpre.T @ x, dpre.T @ h, dpre.sum(0)


def make(rng, n, inp, hid, scale=1.0):
    k = 1 / np.sqrt(hid)
    f = lambda *s: rng.uniform(-k, k, s).astype(np.float32)  # noqa: E731  (PyTorch's init)
    return dict(
        x=(rng.standard_normal((n, inp)) * scale).astype(np.float32),
        h=(rng.standard_normal((n, hid)) * 0.5 * scale).astype(np.float32),
        c=(rng.standard_normal((n, hid)) * scale).astype(np.float32),
        w_ih=f(4 * hid, inp) * np.float32(scale), w_hh=f(4 * hid, hid) * np.float32(scale),
        b_ih=f(4 * hid), b_hh=f(4 * hid))


def upstream(rng, n, hid):
    return (rng.standard_normal((n, hid)).astype(np.float32),
            rng.standard_normal((n, hid)).astype(np.float32))


FWD_NAMES = ("h_next", "c_next", "gates")
BWD_NAMES = ("dx", "dh", "dc", "dw_ih", "dw_hh", "db")


def run(a, dh, dc):
    h_next, c_next, gates = ops.lstm_cell(**a)
    grads = ops.lstm_cell_backward(dh, dc, a["x"], a["h"], a["c"], c_next, gates, a["w_ih"],
                                   a["w_hh"])
    return (h_next, c_next, gates), grads


def check(a, dh, dc):
    fwd, grads = run(a, dh, dc)
    for name, ours, r, q in zip(FWD_NAMES, fwd, lstm_ref(**a), lstm_ref(**a, dtype=np.float32)):
        assert_error_bound(ours, r, q, name=name)
    ref = lstm_backward_ref(dh, dc, **a)
    naive = lstm_backward_ref(dh, dc, **a, dtype=np.float32)
    for name, ours, r, q in zip(BWD_NAMES, grads, ref, naive):
        assert_error_bound(ours, r, q, name=name)


@pytest.mark.parametrize("n", [1, 3, 17])
@pytest.mark.parametrize("inp", [1, 13, 33])
@pytest.mark.parametrize("hid", [1, 29, 33])
def test_forward_backward(isa, rng, n, inp, hid):
    check(make(rng, n, inp, hid), *upstream(rng, n, hid))


def test_threaded_size(isa, rng):
    a = make(rng, 64, 40, 130)  # n * 4h above the kernel's threading threshold
    check(a, *upstream(rng, 64, 130))


def test_zero_upstream(isa, rng):
    """Only dh_next (dc_next = 0) and only dc_next (dh_next = 0)."""
    a = make(rng, 3, 13, 29)
    dh, dc = upstream(rng, 3, 29)
    check(a, dh, np.zeros_like(dc))
    check(a, np.zeros_like(dh), dc)
    _, grads = run(a, np.zeros_like(dh), np.zeros_like(dc))
    for g in grads:
        np.testing.assert_array_equal(g, 0)


def test_saturated_gates(isa, rng):
    """Preactivations in the hundreds: sigmoid and tanh saturate without NaN."""
    a = make(rng, 17, 13, 33, scale=30.0)
    dh, dc = upstream(rng, 17, 33)
    fwd, grads = run(a, dh, dc)
    assert all(np.all(np.isfinite(t)) for t in fwd + grads)
    check(a, dh, dc)


def test_backward_reference_matches_finite_differences(rng):
    a = {k: v.astype(np.float64) for k, v in make(rng, 3, 5, 4).items()}
    dh, dc = (t.astype(np.float64) for t in upstream(rng, 3, 4))
    dy = np.concatenate([dh, dc], axis=1)
    grads = dict(zip(BWD_NAMES, lstm_backward_ref(dh, dc, **a)))
    for arg, gname in (("x", "dx"), ("h", "dh"), ("c", "dc"), ("w_ih", "dw_ih"),
                       ("w_hh", "dw_hh"), ("b_ih", "db"), ("b_hh", "db")):
        def f(t, arg=arg):
            out = lstm_ref(**{**a, arg: t})
            return np.concatenate(out[:2], axis=1)
        num, idx = finite_difference(f, a[arg], dy)
        np.testing.assert_allclose(num, [grads[gname][i] for i in idx], rtol=1e-6, atol=1e-9,
                                   err_msg=gname)


@pytest.mark.parametrize("n,inp,hid", [(3, 13, 29), (17, 33, 33)])
def test_torch_parity(isa, rng, n, inp, hid):
    """Ours is as close to float64 as torch.nn.LSTMCell in float32 (within 4x)."""
    torch = torch_or_skip()
    a = make(rng, n, inp, hid)
    dh, dc = upstream(rng, n, hid)
    cell = torch.nn.LSTMCell(inp, hid)
    with torch.no_grad():
        for name in ("w_ih", "w_hh", "b_ih", "b_hh"):
            getattr(cell, {"w": "weight_", "b": "bias_"}[name[0]] + name[2:]).copy_(
                torch.tensor(a[name]))
    xt, ht, ct = (torch.tensor(a[k], requires_grad=True) for k in ("x", "h", "c"))
    h_next, c_next = cell(xt, (ht, ct))
    (h_next * torch.tensor(dh) + c_next * torch.tensor(dc)).sum().backward()
    fwd, grads = run(a, dh, dc)
    ref = lstm_ref(**a)
    assert_error_bound(fwd[0], ref[0], h_next.detach().numpy(), name="h_next")
    assert_error_bound(fwd[1], ref[1], c_next.detach().numpy(), name="c_next")
    theirs = (xt.grad, ht.grad, ct.grad, cell.weight_ih.grad, cell.weight_hh.grad,
              cell.bias_ih.grad)
    np.testing.assert_array_equal(cell.bias_ih.grad.numpy(), cell.bias_hh.grad.numpy())
    for name, ours, r, t in zip(BWD_NAMES, grads, lstm_backward_ref(dh, dc, **a), theirs):
        assert_error_bound(ours, r, t.numpy(), name=name)


def test_deterministic(isa, rng):
    a = make(rng, 64, 40, 130)
    dh, dc = upstream(rng, 64, 130)
    first, second = run(a, dh, dc), run(a, dh, dc)
    for x, y in zip(first[0] + first[1], second[0] + second[1]):
        np.testing.assert_array_equal(x, y)


def test_bad_inputs(rng):
    a = make(rng, 3, 5, 4)
    dh, dc = upstream(rng, 3, 4)
    with pytest.raises(TypeError, match="x"):
        ops.lstm_cell(**{**a, "x": a["x"].astype(np.float64)})
    with pytest.raises(TypeError, match="b_hh"):
        ops.lstm_cell(**{**a, "b_hh": list(a["b_hh"])})
    with pytest.raises(ValueError, match="w_ih"):
        ops.lstm_cell(**{**a, "w_ih": a["w_ih"][:, :4].copy()})
    with pytest.raises(ValueError, match="w_hh"):
        ops.lstm_cell(**{**a, "w_hh": np.ascontiguousarray(a["w_hh"][:4])})
    with pytest.raises(ValueError, match="h"):
        ops.lstm_cell(**{**a, "h": np.asfortranarray(a["h"])})
    with pytest.raises(ValueError, match="c"):
        ops.lstm_cell(**{**a, "c": a["c"][:2].copy()})
    with pytest.raises(ValueError, match="b_ih"):
        ops.lstm_cell(**{**a, "b_ih": a["b_ih"][:-1].copy()})
    _, c_next, gates = ops.lstm_cell(**a)
    args = [dh, dc, a["x"], a["h"], a["c"], c_next, gates, a["w_ih"], a["w_hh"]]
    with pytest.raises(ValueError, match="dh_next"):
        ops.lstm_cell_backward(dh[:, :3].copy(), *args[1:])
    with pytest.raises(TypeError, match="dc_next"):
        ops.lstm_cell_backward(dh, dc.astype(np.float64), *args[2:])
    with pytest.raises(ValueError, match="gates"):
        ops.lstm_cell_backward(*args[:6], gates[:, :8].copy(), *args[7:])
    with pytest.raises(ValueError, match="c_next"):
        ops.lstm_cell_backward(*args[:5], c_next.T, *args[6:])

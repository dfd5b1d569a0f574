"""LSTM cell forward/backward against float64 NumPy on every backend (each CPU
ISA, the emulated device, CUDA), torch.nn.LSTMCell, and bad inputs."""
from __future__ import annotations

import numpy as np
import pytest

from fastlm import ops
from conftest import HOST, assert_error_bound, finite_difference, torch_or_skip
from reference.rnn_cell import lstm_backward_ref, lstm_ref, make_lstm as make, upstream


FWD_NAMES = ("h_next", "c_next", "gates")
BWD_NAMES = ("dx", "dh", "dc", "dw_ih", "dw_hh", "db")


def run(B, a, dh, dc):
    """The cell and its backward on B; (h_next, c_next, gates), grads as NumPy."""
    d = {key: B.put(val) for key, val in a.items()}
    h_next, c_next, gates = ops.lstm_cell(**d)
    grads = ops.lstm_cell_backward(B.put(dh), B.put(dc), d["x"], d["h"], d["c"], c_next, gates,
                                   d["w_ih"], d["w_hh"])
    return tuple(B.get(t) for t in (h_next, c_next, gates)), tuple(B.get(g) for g in grads)


def check(B, a, dh, dc, factor=4.0):
    fwd, grads = run(B, a, dh, dc)
    for name, ours, r, q in zip(FWD_NAMES, fwd, lstm_ref(**a), lstm_ref(**a, dtype=np.float32)):
        assert_error_bound(ours, r, q, name=name)
    ref = lstm_backward_ref(dh, dc, **a)
    naive = lstm_backward_ref(dh, dc, **a, dtype=np.float32)
    for name, ours, r, q in zip(BWD_NAMES, grads, ref, naive):
        assert_error_bound(ours, r, q, factor=factor, name=name)


@pytest.mark.parametrize("n", [1, 3, 17])
@pytest.mark.parametrize("inp", [1, 13, 33])
@pytest.mark.parametrize("hid", [1, 29, 33])
def test_forward_backward(backend, rng, n, inp, hid):
    check(backend, make(rng, n, inp, hid), *upstream(rng, n, hid))


@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_threaded_size(backend, rng, scale):
    a = make(rng, 64, 40, 130, scale)  # n * 4h above the kernel's threading threshold
    check(backend, a, *upstream(rng, 64, 130))


def test_zero_upstream(backend, rng):
    """Only dh_next (dc_next = 0) and only dc_next (dh_next = 0)."""
    a = make(rng, 3, 13, 29)
    dh, dc = upstream(rng, 3, 29)
    check(backend, a, dh, np.zeros_like(dc))
    check(backend, a, np.zeros_like(dh), dc)
    _, grads = run(backend, a, np.zeros_like(dh), np.zeros_like(dc))
    for g in grads:
        np.testing.assert_array_equal(g, 0)


@pytest.mark.parametrize("n,inp,hid", [(1, 1, 1), (3, 13, 29), (17, 13, 33), (17, 33, 33)])
def test_saturated_gates(backend, rng, n, inp, hid):
    """Preactivations in the hundreds: sigmoid and tanh saturate without NaN.
    The gate derivatives are then a few float32 ulps of exp's result, where a
    vectorised exp and libm's differ by an ulp or two: the bound is 8x the
    naive error (the SSE2 kernels' dx reaches 4.4x at (17, 33, 33))."""
    a = make(rng, n, inp, hid, scale=30.0)
    dh, dc = upstream(rng, n, hid)
    fwd, grads = run(backend, a, dh, dc)
    assert all(np.all(np.isfinite(t)) for t in fwd + grads)
    check(backend, a, dh, dc, factor=8.0)


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
    fwd, grads = run(HOST, a, dh, dc)
    ref = lstm_ref(**a)
    assert_error_bound(fwd[0], ref[0], h_next.detach().numpy(), name="h_next")
    assert_error_bound(fwd[1], ref[1], c_next.detach().numpy(), name="c_next")
    theirs = (xt.grad, ht.grad, ct.grad, cell.weight_ih.grad, cell.weight_hh.grad,
              cell.bias_ih.grad)
    np.testing.assert_array_equal(cell.bias_ih.grad.numpy(), cell.bias_hh.grad.numpy())
    for name, ours, r, t in zip(BWD_NAMES, grads, lstm_backward_ref(dh, dc, **a), theirs):
        assert_error_bound(ours, r, t.numpy(), name=name)


def test_deterministic(backend, rng):
    a = make(rng, 64, 40, 130)
    dh, dc = upstream(rng, 64, 130)
    first, second = run(backend, a, dh, dc), run(backend, a, dh, dc)
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


def test_small_lstm_cell(backend, rng):
    """Both kernels once at a tiny size (compute-sanitizer runs the test_small_* set)."""
    a = make(rng, 3, 5, 7)
    fwd, _ = run(backend, a, *upstream(rng, 3, 7))
    np.testing.assert_allclose(fwd[0], lstm_ref(**a)[0], rtol=1e-4, atol=1e-5)

"""ops.gru_cell and its backward against a float64 NumPy reference (checked by
finite differences) on every ISA, and against torch.nn.GRUCell."""
import numpy as np
import pytest

from fastlm import ops
from conftest import assert_error_bound, finite_difference, torch_or_skip

SIZES = [(1, 1, 1), (3, 13, 29), (17, 33, 33), (5, 1, 17)]


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def gru_ref(x, h, w_ih, w_hh, b_ih, b_hh):
    """Float64 (or float32, for the naive yardstick) GRU step in PyTorch's formulas."""
    H = h.shape[1]
    gi = x @ w_ih.T + b_ih
    gh = h @ w_hh.T + b_hh
    r = sigmoid(gi[:, :H] + gh[:, :H])
    z = sigmoid(gi[:, H:2 * H] + gh[:, H:2 * H])
    n = np.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])
    return (1 - z) * n + z * h, (r, z, n, gh[:, 2 * H:])


def gru_ref_backward(dy, x, h, w_ih, w_hh, b_ih, b_hh):
    _, (r, z, n, hn) = gru_ref(x, h, w_ih, w_hh, b_ih, b_hh)
    dn = dy * (1 - z) * (1 - n * n)
    dz = dy * (h - n) * z * (1 - z)
    dr = dn * hn * r * (1 - r)
    dgi = np.concatenate([dr, dz, dn], axis=1)
    dgh = np.concatenate([dr, dz, dn * r], axis=1)
    dx = dgi @ w_ih
    dh = dgh @ w_hh + dy * z
    return dx, dh, dgi.T @ x, dgh.T @ h, dgi.sum(0), dgh.sum(0)


def make(rng, n, i, hdim):
    s = 1 / np.sqrt(hdim)
    f = lambda *shape: rng.uniform(-s, s, shape).astype(np.float32) * 3
    return (rng.standard_normal((n, i)).astype(np.float32), rng.standard_normal((n, hdim)).astype(np.float32),
            f(3 * hdim, i), f(3 * hdim, hdim), f(3 * hdim), f(3 * hdim))


def test_reference_backward_matches_finite_differences(rng):
    args = [a.astype(np.float64) for a in make(rng, 3, 4, 5)]
    dy = rng.standard_normal((3, 5))
    grads = gru_ref_backward(dy, *args)
    for which in range(6):
        def f(v, which=which):
            a = list(args)
            a[which] = v
            return gru_ref(*a)[0]
        num, idx = finite_difference(f, args[which], dy, rng=rng)
        np.testing.assert_allclose([grads[which][i] for i in idx], num, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("n,i,hdim", SIZES)
def test_gru_cell_forward_backward(isa, rng, n, i, hdim):
    args = make(rng, n, i, hdim)
    a64 = [a.astype(np.float64) for a in args]
    h_next, gates = ops.gru_cell(*args)
    ref, parts = gru_ref(*a64)
    naive, nparts = gru_ref(*args)
    assert_error_bound(h_next, ref, naive, name="h_next")
    assert_error_bound(gates, np.concatenate(parts, 1), np.concatenate(nparts, 1), name="gates")
    dy = rng.standard_normal((n, hdim)).astype(np.float32)
    got = ops.gru_cell_backward(dy, args[0], args[1], gates, args[2], args[3])
    want = gru_ref_backward(dy.astype(np.float64), *a64)
    naive = gru_ref_backward(dy, *args)
    for name, g, w, nv in zip(["dx", "dh", "dw_ih", "dw_hh", "db_ih", "db_hh"], got, want, naive):
        assert_error_bound(g, w, nv, name=name)


def test_gru_cell_matches_torch(rng):
    torch = torch_or_skip()
    x, h, w_ih, w_hh, b_ih, b_hh = make(rng, 4, 7, 9)
    cell = torch.nn.GRUCell(7, 9)
    with torch.no_grad():
        for p, v in zip([cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh],
                        [w_ih, w_hh, b_ih, b_hh]):
            p.copy_(torch.from_numpy(v))
    xt = torch.from_numpy(x).requires_grad_(True)
    ht = torch.from_numpy(h).requires_grad_(True)
    yt = cell(xt, ht)
    dy = rng.standard_normal((4, 9)).astype(np.float32)
    yt.backward(torch.from_numpy(dy))
    h_next, gates = ops.gru_cell(x, h, w_ih, w_hh, b_ih, b_hh)
    np.testing.assert_allclose(h_next, yt.detach().numpy(), rtol=1e-5, atol=1e-6)
    dx, dh, dw_ih, dw_hh, db_ih, db_hh = ops.gru_cell_backward(dy, x, h, gates, w_ih, w_hh)
    for ours, theirs in [(dx, xt.grad), (dh, ht.grad), (dw_ih, cell.weight_ih.grad),
                         (dw_hh, cell.weight_hh.grad), (db_ih, cell.bias_ih.grad),
                         (db_hh, cell.bias_hh.grad)]:
        np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-4, atol=1e-5)


def test_gru_cell_bad_inputs(rng):
    x, h, w_ih, w_hh, b_ih, b_hh = make(rng, 2, 3, 4)
    with pytest.raises(TypeError, match="x must have dtype float32"):
        ops.gru_cell(x.astype(np.float64), h, w_ih, w_hh, b_ih, b_hh)
    with pytest.raises(ValueError, match="w_ih must have shape"):
        ops.gru_cell(x, h, w_ih[:4], w_hh, b_ih, b_hh)
    with pytest.raises(ValueError, match="b_hh must have shape"):
        ops.gru_cell(x, h, w_ih, w_hh, b_ih, b_hh[:3])
    with pytest.raises(ValueError, match="h must have shape"):
        ops.gru_cell(x, h[:1], w_ih, w_hh, b_ih, b_hh)
    _, gates = ops.gru_cell(x, h, w_ih, w_hh, b_ih, b_hh)
    with pytest.raises(ValueError, match="gates must have shape"):
        ops.gru_cell_backward(h, x, h, gates[:, :8].copy(), w_ih, w_hh)
    with pytest.raises(ValueError, match="dh_next must be C-contiguous"):
        ops.gru_cell_backward(np.asfortranarray(np.ones((2, 4), np.float32)), x, h, gates, w_ih, w_hh)


def test_gru_cell_deterministic(rng):
    args = make(rng, 17, 33, 29)
    a, _ = ops.gru_cell(*args)
    b, _ = ops.gru_cell(*args)
    assert np.array_equal(a, b)

"""ops.gru_cell and its backward against a float64 NumPy reference (checked by
finite differences) on every backend (each CPU ISA, the emulated device, CUDA),
and against torch.nn.GRUCell."""
import numpy as np
import pytest

from fastlm import ops
from conftest import assert_error_bound, finite_difference, torch_or_skip
from reference.rnn_cell import gru_ref, gru_ref_backward, make_gru as make

SIZES = [(1, 1, 1), (3, 13, 29), (17, 33, 33), (5, 1, 17)]


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
def test_gru_cell_forward_backward(backend, rng, n, i, hdim):
    B = backend
    args = make(rng, n, i, hdim)
    a64 = [a.astype(np.float64) for a in args]
    d = [B.put(a) for a in args]
    h_next, gates = ops.gru_cell(*d)
    ref, parts = gru_ref(*a64)
    naive, nparts = gru_ref(*args)
    assert_error_bound(B.get(h_next), ref, naive, name="h_next")
    assert_error_bound(B.get(gates), np.concatenate(parts, 1), np.concatenate(nparts, 1), name="gates")
    dy = rng.standard_normal((n, hdim)).astype(np.float32)
    got = ops.gru_cell_backward(B.put(dy), d[0], d[1], gates, d[2], d[3])
    want = gru_ref_backward(dy.astype(np.float64), *a64)
    naive = gru_ref_backward(dy, *args)
    for name, g, w, nv in zip(["dx", "dh", "dw_ih", "dw_hh", "db_ih", "db_hh"], got, want, naive):
        assert_error_bound(B.get(g), w, nv, name=name)


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


def test_gru_cell_deterministic(backend, rng):
    B = backend
    args = [B.put(a) for a in make(rng, 17, 33, 29)]
    a, _ = ops.gru_cell(*args)
    b, _ = ops.gru_cell(*args)
    assert np.array_equal(B.get(a), B.get(b))


def test_small_gru_cell(backend, rng):
    """Both kernels once at a tiny size (compute-sanitizer runs the test_small_* set)."""
    B = backend
    args = make(rng, 3, 5, 7)
    d = [B.put(a) for a in args]
    h_next, gates = ops.gru_cell(*d)
    ops.gru_cell_backward(B.put(rng.standard_normal((3, 7)).astype(np.float32)), d[0], d[1], gates,
                          d[2], d[3])
    np.testing.assert_allclose(B.get(h_next), gru_ref(*args)[0], rtol=1e-4, atol=1e-5)

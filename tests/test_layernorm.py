"""LayerNorm forward/backward against float64 NumPy on every backend (each CPU
ISA, the emulated device, CUDA), PyTorch, and bad inputs."""
from __future__ import annotations

import numpy as np
import pytest

from fastlm import ops
from conftest import assert_error_bound, finite_difference, num_threads, torch_or_skip
from reference.layernorm import EPS, ln_backward_ref, ln_ref, make

SIZES = [1, 3, 17, 31, 33, 127, 1000]


def check_forward(B, x, w, b, eps=EPS):
    y, mean, rstd = ops.layernorm(B.put(x), B.put(w), B.put(b), eps)
    ref = ln_ref(x, w, b, eps)
    naive = list(ln_ref(x, w, b, eps, np.float32))
    # NumPy's float32 mean sums pairwise; a plain float32 loop is the fairer
    # yardstick for a mean near 0 over thousands of columns.
    naive[1] = np.cumsum(x, axis=-1, dtype=np.float32)[..., -1] / np.float32(x.shape[-1])
    for name, ours, r, n in zip(("y", "mean", "rstd"), (y, mean, rstd), ref, naive):
        assert_error_bound(B.get(ours), r, n, name=name)
    return y, mean, rstd


def check_backward(B, dy, x, w, mean, rstd):
    """mean, rstd: the forward's outputs, on B."""
    grads = ops.layernorm_backward(B.put(dy), B.put(x), B.put(w), mean, rstd)
    ref = ln_backward_ref(dy, x, w)
    naive = ln_backward_ref(dy, x, w, dtype=np.float32)
    for name, ours, r, n in zip(("dx", "dweight", "dbias"), grads, ref, naive):
        assert_error_bound(B.get(ours), r, n, name=name)


@pytest.mark.parametrize("rows", [1, 3, 17, 127, 1000])
@pytest.mark.parametrize("cols", SIZES + [768, 6001, 8192])
def test_forward_backward(backend, rng, rows, cols):
    if rows * cols > 2_000_000:
        pytest.skip("large enough elsewhere")
    x, w, b, dy = make(rng, rows, cols)
    _, mean, rstd = check_forward(backend, x, w, b)
    check_backward(backend, dy, x, w, mean, rstd)


@pytest.mark.parametrize("rows", [31, 33])
def test_rows_awkward(backend, rng, rows):
    x, w, b, dy = make(rng, rows, 33)
    _, mean, rstd = check_forward(backend, x, w, b)
    check_backward(backend, dy, x, w, mean, rstd)


def test_leading_dims(backend, rng):
    B = backend
    x = rng.standard_normal((2, 3, 17)).astype(np.float32)
    w, b = np.ones(17, np.float32), np.zeros(17, np.float32)
    y, mean, rstd = ops.layernorm(B.put(x), B.put(w), B.put(b))
    assert B.get(y).shape == x.shape and B.get(mean).shape == (2, 3) and B.get(rstd).shape == (2, 3)
    assert_error_bound(B.get(y), ln_ref(x, w, b)[0], ln_ref(x, w, b, dtype=np.float32)[0])
    dy = rng.standard_normal(x.shape).astype(np.float32)
    grads = ops.layernorm_backward(B.put(dy), B.put(x), B.put(w), mean, rstd)
    ref, naive = ln_backward_ref(dy, x, w), ln_backward_ref(dy, x, w, dtype=np.float32)
    for ours, r, n in zip(grads, ref, naive):
        assert_error_bound(B.get(ours), r, n)


@pytest.mark.parametrize("offset", [1e3, -3e4])
def test_large_offset(backend, rng, offset):
    """|mean| >> std: a one-pass E[x^2] - E[x]^2 would lose the variance entirely."""
    x, w, b, dy = make(rng, 17, 1000, offset)
    _, mean, rstd = check_forward(backend, x, w, b)
    check_backward(backend, dy, x, w, mean, rstd)


def test_constant_rows(backend):
    B = backend
    x = np.full((3, 31), 7.25, np.float32)
    w, b = np.ones(31, np.float32), np.arange(31, dtype=np.float32)
    y, mean, rstd = (B.get(t) for t in ops.layernorm(B.put(x), B.put(w), B.put(b), 1e-5))
    np.testing.assert_array_equal(mean, 7.25)
    np.testing.assert_allclose(rstd, 1 / np.sqrt(1e-5), rtol=1e-6)
    np.testing.assert_array_equal(y, np.broadcast_to(b, y.shape))


def test_squares_past_float_range(backend):
    # Row variance beyond float's range: rstd is 0 and y the bias, as in torch,
    # on every ISA; never the 1/sqrt(eps) of a variance clamped to 0 (which
    # scaled such a row up 316-fold). A NaN row stays NaN.
    n = 37
    x = np.stack([np.r_[1e30, np.linspace(-1, 1, n - 1)], np.r_[-3e25, np.linspace(-1, 1, n - 1)],
                  np.r_[np.nan, np.linspace(-1, 1, n - 1)]]).astype(np.float32)
    w, b = np.ones(n, np.float32), np.linspace(-0.5, 0.5, n).astype(np.float32)
    B = backend
    y, mean, rstd = (B.get(t) for t in ops.layernorm(B.put(x), B.put(w), B.put(b), 1e-5))
    assert np.all(np.isfinite(y[:2])) and np.all(np.abs(y[:2] - b) <= np.sqrt(n))
    np.testing.assert_array_equal(rstd[0], 0.0)
    assert np.isnan(rstd[2]) and np.all(np.isnan(y[2]))


def test_backward_reference_matches_finite_differences(rng):
    x = rng.standard_normal((3, 7))
    w = 1 + 0.5 * rng.standard_normal(7)
    b = rng.standard_normal(7)
    dy = rng.standard_normal((3, 7))
    dx, dw, db = ln_backward_ref(dy, x, w)
    num, idx = finite_difference(lambda t: ln_ref(t, w, b)[0], x, dy)
    np.testing.assert_allclose(num, [dx[i] for i in idx], rtol=1e-6, atol=1e-8)
    num, idx = finite_difference(lambda t: ln_ref(x, t, b)[0], w, dy)
    np.testing.assert_allclose(num, [dw[i] for i in idx], rtol=1e-6, atol=1e-8)
    num, idx = finite_difference(lambda t: ln_ref(x, w, t)[0], b, dy)
    np.testing.assert_allclose(num, [db[i] for i in idx], rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("shape", [(17, 33), (127, 1000)])
def test_torch_parity(isa, rng, shape):
    """Ours is as close to float64 as PyTorch's float32 layer_norm (within 4x)."""
    torch = torch_or_skip()
    x, w, b, dy = make(rng, *shape)
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    yt = torch.nn.functional.layer_norm(xt, (shape[1],), wt, bt, EPS)
    yt.backward(torch.tensor(dy))
    y, mean, rstd = ops.layernorm(x, w, b, EPS)
    assert_error_bound(y, ln_ref(x, w, b)[0], yt.detach().numpy(), name="y")
    grads = ops.layernorm_backward(dy, x, w, mean, rstd)
    ref = ln_backward_ref(dy, x, w)
    for name, ours, r, t in zip(("dx", "dw", "db"), grads, ref, (xt.grad, wt.grad, bt.grad)):
        assert_error_bound(ours, r, t.numpy(), name=name)


@pytest.mark.parametrize("cols", [127, 768])
def test_deterministic(backend, rng, cols):
    B = backend
    x, w, b, dy = (B.put(t) for t in make(rng, 1000, cols))  # large enough for the threaded paths
    first = ops.layernorm(x, w, b)
    second = ops.layernorm(x, w, b)
    for a, c in zip(first, second):
        np.testing.assert_array_equal(B.get(a), B.get(c))
    g1 = ops.layernorm_backward(dy, x, w, first[1], first[2])
    g2 = ops.layernorm_backward(dy, x, w, first[1], first[2])
    for a, c in zip(g1, g2):
        np.testing.assert_array_equal(B.get(a), B.get(c))


def test_thread_counts_agree(rng):
    x, w, b, dy = make(rng, 1000, 127)
    with num_threads(1):
        y1, m1, r1 = ops.layernorm(x, w, b)
        g1 = ops.layernorm_backward(dy, x, w, m1, r1)
    with num_threads(3):
        y3, m3, r3 = ops.layernorm(x, w, b)
        g3 = ops.layernorm_backward(dy, x, w, m3, r3)
    np.testing.assert_array_equal(y1, y3)  # rows are independent
    np.testing.assert_array_equal(g1[0], g3[0])
    for a, c in zip(g1[1:], g3[1:]):  # column sums: only the reduction order differs
        np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-4)


def test_empty(backend):
    B = backend
    x = B.put(np.zeros((0, 5), np.float32))
    w, b = B.put(np.ones(5, np.float32)), B.put(np.zeros(5, np.float32))
    y, mean, rstd = ops.layernorm(x, w, b)
    assert B.get(y).shape == (0, 5) and B.get(mean).shape == (0,)
    dx, dw, db = ops.layernorm_backward(x, x, w, mean, rstd)
    np.testing.assert_array_equal(B.get(dw), 0)
    np.testing.assert_array_equal(B.get(db), 0)


def test_bad_inputs(rng):
    x, w, b, dy = make(rng, 4, 8)
    with pytest.raises(TypeError, match="x"):
        ops.layernorm(x.astype(np.float64), w, b)
    with pytest.raises(TypeError, match="weight"):
        ops.layernorm(x, w.tolist(), b)
    with pytest.raises(ValueError, match="weight"):
        ops.layernorm(x, w[:7].copy(), b)
    with pytest.raises(ValueError, match="bias"):
        ops.layernorm(x, w, np.zeros((1, 8), np.float32))
    with pytest.raises(ValueError, match="x"):
        ops.layernorm(np.asfortranarray(x), w, b)
    with pytest.raises(ValueError, match="eps"):
        ops.layernorm(x, w, b, -1.0)
    _, mean, rstd = ops.layernorm(x, w, b)
    with pytest.raises(ValueError, match="dy"):
        ops.layernorm_backward(dy[:3].copy(), x, w, mean, rstd)
    with pytest.raises(TypeError, match="dy"):
        ops.layernorm_backward(dy.astype(np.float16), x, w, mean, rstd)
    with pytest.raises(ValueError, match="mean"):
        ops.layernorm_backward(dy, x, w, mean[:2].copy(), rstd)
    with pytest.raises(ValueError, match="rstd"):
        ops.layernorm_backward(dy, x, w, mean, rstd[:, None].copy())
    with pytest.raises(ValueError, match="x"):
        ops.layernorm_backward(dy, x[:, ::2], w[:4].copy(), mean, rstd)


def test_small_layernorm(backend, rng):
    """Both kernels once at a tiny size (compute-sanitizer runs the test_small_* set)."""
    B = backend
    x, w, b, dy = make(rng, 5, 37)
    y, mean, rstd = ops.layernorm(B.put(x), B.put(w), B.put(b))
    grads = ops.layernorm_backward(B.put(dy), B.put(x), B.put(w), mean, rstd)
    np.testing.assert_allclose(B.get(y), ln_ref(x, w, b)[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(B.get(grads[0]), ln_backward_ref(dy, x, w)[0], rtol=1e-4, atol=1e-4)

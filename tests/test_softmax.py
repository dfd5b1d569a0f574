"""fastlm.ops.softmax and softmax_backward against float64 NumPy references,
on every backend (each CPU ISA, the emulated device, CUDA)."""
from __future__ import annotations

import numpy as np
import pytest

from fastlm import ops

from conftest import AWKWARD_SIZES, assert_error_bound, awkward_rows, finite_difference, num_threads, torch_or_skip
from reference.softmax import softmax_backward_ref, softmax_ref


def check_forward(B, x):
    y = B.get(ops.softmax(B.put(x)))
    assert y.dtype == np.float32 and y.shape == x.shape
    assert_error_bound(y, softmax_ref(x), softmax_ref(x, np.float32), name="softmax")
    return y


def check_backward(B, dy, y):
    dx = B.get(ops.softmax_backward(B.put(dy), B.put(y)))
    assert dx.dtype == np.float32 and dx.shape == y.shape
    assert_error_bound(dx, softmax_backward_ref(dy, y), softmax_backward_ref(dy, y, np.float32),
                       name="softmax_backward")
    return dx


@pytest.mark.parametrize("cols", AWKWARD_SIZES + (50304,))
def test_awkward_sizes(backend, rng, cols):
    for x in awkward_rows(rng, cols, 200_000):
        y = check_forward(backend, x)
        check_backward(backend, rng.standard_normal(x.shape, dtype=np.float32), y)
        if backend.device:  # the device and the CPU agree to float32 rounding
            np.testing.assert_allclose(y, ops.softmax(x), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("shape", [(1,), (33,), (1000,), (2, 3, 17), (3, 5, 127), (2, 0, 4)])
def test_shapes(backend, rng, shape):
    x = rng.standard_normal(shape, dtype=np.float32)
    y = check_forward(backend, x)
    check_backward(backend, rng.standard_normal(shape, dtype=np.float32), y)


def test_large_inputs_stable(backend, rng):
    x = (rng.standard_normal((17, 127)) * 1e4).astype(np.float32)
    x[2] += 1e30
    x[3] = 8e4  # all equal and large: uniform
    y = check_forward(backend, x)
    np.testing.assert_allclose(y[3], 1 / 127, rtol=1e-6)
    np.testing.assert_allclose(y.sum(axis=-1), 1, rtol=1e-5)


@pytest.mark.parametrize("cols", [33, 127])
def test_neg_inf(backend, rng, cols):
    x = rng.standard_normal((17, cols), dtype=np.float32)
    x[:, ::4] = -np.inf
    x[5] = -np.inf
    x[5, 1] = 2.0  # only one finite entry: probability 1
    x[6] = -np.inf  # nothing finite: NaN, as torch
    y = backend.get(ops.softmax(backend.put(x)))
    assert np.all(y[:, ::4][np.arange(17) != 6] == 0)
    assert y[5, 1] == 1 and np.sum(y[5]) == 1
    assert np.all(np.isnan(y[6]))
    keep = np.arange(17) != 6
    np.testing.assert_allclose(y[keep], softmax_ref(x[keep]), rtol=1e-6, atol=1e-12)


def test_reference_backward_finite_difference(rng):
    x = rng.standard_normal((5, 9))
    dy = rng.standard_normal((5, 9))
    dx = softmax_backward_ref(dy, softmax_ref(x))
    num, idx = finite_difference(softmax_ref, x, dy, rng=rng)
    np.testing.assert_allclose(num, [dx[i] for i in idx], rtol=1e-6, atol=1e-9)


def test_torch_parity(isa, rng):
    torch = torch_or_skip()
    x = rng.standard_normal((31, 1000), dtype=np.float32) * 3
    x[4] = -np.inf
    x[5, ::2] = -np.inf
    dy = rng.standard_normal(x.shape, dtype=np.float32)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    yt = torch.softmax(xt, dim=-1)
    yt.backward(torch.from_numpy(dy))
    y = ops.softmax(x)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-5, atol=1e-9)
    keep = np.arange(31) != 4
    dx = ops.softmax_backward(dy[keep], y[keep])
    np.testing.assert_allclose(dx, xt.grad.numpy()[keep], rtol=1e-4, atol=1e-8)


def test_determinism(backend, rng):
    B = backend
    x = rng.standard_normal((127, 1000), dtype=np.float32)
    dy = rng.standard_normal(x.shape, dtype=np.float32)
    xd, dyd = B.put(x), B.put(dy)
    y1 = ops.softmax(xd)
    np.testing.assert_array_equal(B.get(y1), B.get(ops.softmax(xd)))
    np.testing.assert_array_equal(B.get(ops.softmax_backward(dyd, y1)),
                                  B.get(ops.softmax_backward(dyd, y1)))
    if B.device:
        return
    with num_threads(1):
        y3 = ops.softmax(x)
        dx3 = ops.softmax_backward(dy, y1)
    np.testing.assert_array_equal(y3, y1)
    np.testing.assert_array_equal(dx3, ops.softmax_backward(dy, y1))


def test_bad_inputs(rng):
    x = rng.standard_normal((4, 6), dtype=np.float32)
    with pytest.raises(TypeError, match="x"):
        ops.softmax(x.astype(np.float64))
    with pytest.raises(TypeError, match="x"):
        ops.softmax([1.0, 2.0])
    with pytest.raises(ValueError, match="x"):
        ops.softmax(rng.standard_normal((4, 12), dtype=np.float32)[:, ::2])
    with pytest.raises(ValueError, match="x"):
        ops.softmax(np.array(1.0, dtype=np.float32))
    with pytest.raises(TypeError, match="dy"):
        ops.softmax_backward(x.astype(np.float64), x)
    with pytest.raises(TypeError, match="y"):
        ops.softmax_backward(x, x.astype(np.float16))
    with pytest.raises(ValueError, match="dy"):
        ops.softmax_backward(x[:3], x)
    with pytest.raises(ValueError, match="y"):
        ops.softmax_backward(x, np.asfortranarray(x))


def test_small_softmax(backend, rng):
    """Both kernels once at a tiny size (compute-sanitizer runs the test_small_* set)."""
    B = backend
    x = rng.standard_normal((5, 37)).astype(np.float32)
    dy = rng.standard_normal((5, 37)).astype(np.float32)
    y = ops.softmax(B.put(x))
    dx = ops.softmax_backward(B.put(dy), y)
    np.testing.assert_allclose(B.get(y), softmax_ref(x), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(B.get(dx), softmax_backward_ref(dy, B.get(y)), rtol=1e-4, atol=1e-6)

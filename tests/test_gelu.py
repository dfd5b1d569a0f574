"""GELU (tanh and erf) forward/backward against float64 NumPy on every backend
(each CPU ISA, the emulated device, CUDA), PyTorch, and bad inputs."""
from __future__ import annotations

import numpy as np
import pytest

from fastlm import ops
from conftest import assert_error_bound, finite_difference, same_on_thread_counts, torch_or_skip
from reference.gelu import gelu_erf_grad_ref, gelu_erf_ref, gelu_grad_ref, gelu_ref

SIZES = [1, 3, 17, 31, 33, 127, 1000, 100_003]  # the last one runs threaded


def make(rng, shape, scale=3.0):
    x = (rng.standard_normal(shape) * scale).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    return x, dy


def run(B, x, dy, approximate="tanh"):
    """(gelu(x), gelu_backward(dy, x)) on B, as NumPy."""
    return (B.get(ops.gelu(B.put(x), approximate=approximate)),
            B.get(ops.gelu_backward(B.put(dy), B.put(x), approximate=approximate)))


@pytest.mark.parametrize("n", SIZES)
def test_forward_backward(backend, rng, n):
    x, dy = make(rng, n)
    y, dx = run(backend, x, dy)
    assert_error_bound(y, gelu_ref(x), gelu_ref(x, np.float32), name="y")
    assert_error_bound(dx, gelu_grad_ref(dy, x), gelu_grad_ref(dy, x, np.float32), name="dx")
    if backend.device:  # the device and the CPU agree to float32 rounding
        np.testing.assert_allclose(y, ops.gelu(x), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("shape", [(3, 17), (2, 31, 33), (0, 4)])
def test_shapes(backend, rng, shape):
    x, dy = make(rng, shape)
    y, dx = run(backend, x, dy)
    assert y.shape == shape and dx.shape == shape
    assert_error_bound(y, gelu_ref(x), gelu_ref(x, np.float32))
    assert_error_bound(dx, gelu_grad_ref(dy, x), gelu_grad_ref(dy, x, np.float32))


def test_large_magnitude(backend):
    """Saturated inputs give x (or ~0) and slope 1 (or ~0), never NaN."""
    x = np.concatenate([np.linspace(-20, 20, 4001), [-1e4, -300, 300, 1e4]]).astype(np.float32)
    dy = np.ones_like(x)
    y, dx = run(backend, x, dy)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(dx))
    assert_error_bound(y, gelu_ref(x), gelu_ref(x, np.float32), name="y")
    assert_error_bound(dx, gelu_grad_ref(dy, x), gelu_grad_ref(dy, x, np.float32), name="dx")
    pos, neg = x >= 10, x <= -10  # x exactly; or ~0 (the true values are below 1e-37)
    np.testing.assert_array_equal(y[pos], x[pos])
    np.testing.assert_array_equal(dx[pos], 1)
    assert np.all(np.abs(y[neg]) < 1e-20) and np.all(np.abs(dx[neg]) < 1e-20)


def test_special_values(backend):
    x = np.array([0.0, -0.0, np.inf, np.nan, -np.inf], np.float32)
    y, dx = run(backend, x, np.ones_like(x))
    assert y[0] == 0 and y[1] == 0 and y[2] == np.inf and np.isnan(y[3]) and y[4] == 0
    assert dx[0] == 0.5 and dx[1] == 0.5 and dx[2] == 1 and np.isnan(dx[3]) and dx[4] == 0


def test_backward_reference_matches_finite_differences(rng):
    x = rng.standard_normal(9) * 3
    dy = rng.standard_normal(9)
    num, idx = finite_difference(gelu_ref, x, dy)
    np.testing.assert_allclose(num, [gelu_grad_ref(dy, x)[i] for i in idx], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("approximate", ["tanh", "none"])
@pytest.mark.parametrize("n", [1000, 100_003])
def test_torch_parity(isa, rng, n, approximate):
    """Ours is as close to float64 as PyTorch's float32 GELU of the same kind (within 4x)."""
    torch = torch_or_skip()
    ref, grad_ref = (gelu_ref, gelu_grad_ref) if approximate == "tanh" else (gelu_erf_ref, gelu_erf_grad_ref)
    x, dy = make(rng, n)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.gelu(xt, approximate=approximate)
    yt.backward(torch.tensor(dy))
    assert_error_bound(ops.gelu(x, approximate=approximate), ref(x), yt.detach().numpy(), name="y")
    assert_error_bound(ops.gelu_backward(dy, x, approximate=approximate), grad_ref(dy, x),
                       xt.grad.numpy(), name="dx")


def test_deterministic(backend, rng):
    x, dy = make(rng, 100_003)
    for a, b in zip(run(backend, x, dy), run(backend, x, dy)):
        np.testing.assert_array_equal(a, b)


def test_bad_inputs(rng):
    x, dy = make(rng, (4, 6))
    with pytest.raises(TypeError, match="x"):
        ops.gelu(x.astype(np.float64))
    with pytest.raises(TypeError, match="x"):
        ops.gelu([1.0, 2.0])
    with pytest.raises(ValueError, match="x"):
        ops.gelu(x.T)
    with pytest.raises(TypeError, match="dy"):
        ops.gelu_backward(dy.astype(np.int32), x)
    with pytest.raises(ValueError, match="dy"):
        ops.gelu_backward(dy[:3].copy(), x)
    with pytest.raises(ValueError, match="dy"):
        ops.gelu_backward(dy[:, ::-1], x)
    with pytest.raises(ValueError, match="x"):
        ops.gelu_backward(dy, np.asfortranarray(x))


# ---- the exact (erf) GELU, approximate="none" ----------------------------------

@pytest.mark.parametrize("n", SIZES)
def test_erf_forward_backward(backend, rng, n):
    x, dy = make(rng, n)
    y, dx = run(backend, x, dy, "none")
    assert_error_bound(y, gelu_erf_ref(x), gelu_erf_ref(x, np.float32), name="y")
    assert_error_bound(dx, gelu_erf_grad_ref(dy, x), gelu_erf_grad_ref(dy, x, np.float32), name="dx")
    if backend.device:
        np.testing.assert_allclose(y, ops.gelu(x, approximate="none"), rtol=1e-5, atol=1e-7)


def test_erf_relative_accuracy_on_tails(backend):
    """1 + erf(x / sqrt 2) would cancel for negative x; the kernel stays accurate
    in relative terms down to where the values leave float32's normal range."""
    x = np.linspace(-12.5, 12.5, 5001).astype(np.float32)
    y, dx = (t.astype(np.float64) for t in run(backend, x, np.ones_like(x), "none"))
    ref, dref = gelu_erf_ref(x), gelu_erf_grad_ref(np.ones_like(x), x)
    np.testing.assert_allclose(y, ref, rtol=2e-5, atol=0)
    away_from_zero = np.abs(dref) > 1e-3  # gelu' crosses 0 near x = -0.75
    np.testing.assert_allclose(dx[away_from_zero], dref[away_from_zero], rtol=2e-5, atol=0)
    np.testing.assert_allclose(dx, dref, rtol=0, atol=1e-6)


def test_erf_large_magnitude_and_special_values(backend):
    x = np.array([0.0, -0.0, np.inf, np.nan, -np.inf, -1e4, -300, -14.5, 14.5, 300, 1e4], np.float32)
    y, dx = run(backend, x, np.ones_like(x), "none")
    assert y[0] == 0 and y[1] == 0 and y[2] == np.inf and np.isnan(y[3]) and y[4] == 0
    assert dx[0] == 0.5 and dx[1] == 0.5 and dx[2] == 1 and np.isnan(dx[3]) and dx[4] == 0
    np.testing.assert_array_equal(y[5:8], 0)
    np.testing.assert_array_equal(dx[5:8], 0)
    np.testing.assert_array_equal(y[8:], x[8:])
    np.testing.assert_array_equal(dx[8:], 1)


def test_erf_backward_reference_matches_finite_differences(rng):
    x = rng.standard_normal(9) * 3
    dy = rng.standard_normal(9)
    num, idx = finite_difference(gelu_erf_ref, x, dy)
    np.testing.assert_allclose(num, [gelu_erf_grad_ref(dy, x)[i] for i in idx], rtol=1e-6,
                               atol=1e-9)


def test_erf_deterministic_and_shapes(backend, rng):
    B = backend
    x, dy = make(rng, (2, 31, 33))
    y = B.get(ops.gelu(B.put(x), approximate="none"))
    assert y.shape == x.shape
    np.testing.assert_array_equal(y, B.get(ops.gelu(B.put(x), approximate="none")))
    assert B.get(ops.gelu(B.put(np.zeros((0, 4), np.float32)), approximate="none")).shape == (0, 4)
    if B.device:
        return
    big, dbig = make(np.random.default_rng(5), 100_003)
    assert same_on_thread_counts(lambda: ops.gelu_backward(dbig, big, approximate="none"))


def test_erf_bad_inputs(rng):
    x, dy = make(rng, (4, 6))
    with pytest.raises(ValueError, match="approximate"):
        ops.gelu(x, approximate="erf")
    with pytest.raises(ValueError, match="approximate"):
        ops.gelu_backward(dy, x, approximate=None)
    with pytest.raises(TypeError, match="x"):
        ops.gelu(x.astype(np.float64), approximate="none")
    with pytest.raises(ValueError, match="dy"):
        ops.gelu_backward(dy[:3].copy(), x, approximate="none")


@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_small_gelu(backend, rng, approximate):
    """Both kernels once at a tiny size (compute-sanitizer runs the test_small_* set)."""
    x, dy = make(rng, (5, 37))
    y, dx = run(backend, x, dy, approximate)
    ref, grad_ref = (gelu_ref, gelu_grad_ref) if approximate == "tanh" else (gelu_erf_ref, gelu_erf_grad_ref)
    np.testing.assert_allclose(y, ref(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dx, grad_ref(dy, x), rtol=1e-5, atol=1e-6)

"""fastlm.ops.cross_entropy: fused softmax cross-entropy (loss and d loss / d logits)
against a float64 NumPy reference, on every backend (each CPU ISA, the emulated
device, CUDA)."""
from __future__ import annotations

import numpy as np
import pytest

from fastlm import ops

from conftest import AWKWARD_SIZES, assert_error_bound, awkward_rows, finite_difference, num_threads, torch_or_skip
from reference.cross_entropy import ce_ref


def check(B, x, t, ignore_index=-100, **kw):
    """cross_entropy on B against the references; (loss, dlogits as NumPy)."""
    loss, g = ops.cross_entropy(B.put(x), B.put(t), ignore_index=ignore_index, **kw)
    l64, g64 = ce_ref(x, t, ignore_index)
    l32, g32 = ce_ref(x, t, ignore_index, np.float32)
    assert isinstance(loss, float)
    assert_error_bound(loss, l64, l32, name="loss")
    g = B.get(g)
    assert g.dtype == np.float32 and g.shape == x.shape
    assert_error_bound(g, g64, g32, name="dlogits")
    return loss, g


@pytest.mark.parametrize("vocab", AWKWARD_SIZES + (50304,))
def test_awkward_sizes(backend, rng, vocab):
    for x in awkward_rows(rng, vocab, 300_000):
        t = rng.integers(0, vocab, len(x))
        loss, g = check(backend, x, t)
        if backend.device:  # the device and the CPU agree to float32 rounding
            cpu_loss, cpu_g = ops.cross_entropy(x, t)
            np.testing.assert_allclose(loss, cpu_loss, rtol=1e-6)
            np.testing.assert_allclose(g, cpu_g, rtol=1e-5, atol=1e-9)


def test_large_vocab(backend, rng):
    x = rng.standard_normal((5, 50304), dtype=np.float32) * 4
    t = rng.integers(0, 50304, 5)
    loss, _ = check(backend, x, t)
    loss_only, _ = ops.cross_entropy(backend.put(x), backend.put(t), compute_grad=False)
    l64, _ = ce_ref(x, t)
    l32, _ = ce_ref(x, t, dtype=np.float32)
    assert_error_bound(loss_only, l64, l32, name="loss (no grad)")


def test_int32_and_int64_targets(backend, rng):
    B = backend
    x = rng.standard_normal((33, 127), dtype=np.float32)
    t = rng.integers(0, 127, 33)
    l64, g64 = ops.cross_entropy(B.put(x), B.put(t.astype(np.int64)))
    l32, g32 = ops.cross_entropy(B.put(x), B.put(t.astype(np.int32)))
    assert l64 == l32
    np.testing.assert_array_equal(B.get(g64), B.get(g32))
    check(B, x, t.astype(np.int32))


def test_ignore_index(backend, rng):
    B = backend
    x = rng.standard_normal((31, 33), dtype=np.float32)
    t = rng.integers(0, 33, 31)
    t[[0, 5, 6, 30]] = -100
    _, g = check(B, x, t)
    assert np.all(g[[0, 5, 6, 30]] == 0)
    # A custom ignore_index, and the default -100 is then an error.
    t2 = np.where(t == -100, 7, t)
    _, g = check(B, x, t2, ignore_index=7)
    assert np.all(g[t2 == 7] == 0)
    with pytest.raises(ValueError, match="targets"):
        ops.cross_entropy(B.put(x), B.put(t), ignore_index=7)


def test_all_ignored(backend, rng):
    B = backend
    x = rng.standard_normal((17, 31), dtype=np.float32)
    t = B.put(np.full(17, -1, dtype=np.int64))
    loss, g = ops.cross_entropy(B.put(x), t, ignore_index=-1)
    assert np.isnan(loss)
    np.testing.assert_array_equal(B.get(g), np.zeros_like(x))
    loss, g = ops.cross_entropy(B.put(x), t, ignore_index=-1, compute_grad=False)
    assert np.isnan(loss) and g is None
    xi = B.put(x)
    ops.cross_entropy(xi, t, ignore_index=-1, out=xi)
    np.testing.assert_array_equal(B.get(xi), np.zeros_like(x))


def test_zero_rows(backend):
    B = backend
    loss, g = ops.cross_entropy(B.put(np.zeros((0, 5), np.float32)), B.put(np.zeros(0, np.int64)))
    assert np.isnan(loss) and B.get(g).shape == (0, 5)


def test_out_variants(backend, rng):
    B = backend
    x = rng.standard_normal((127, 1000), dtype=np.float32) * 2
    t = rng.integers(0, 1000, 127)
    t[3] = -100
    xd, td = B.put(x), B.put(t)
    loss, g = ops.cross_entropy(xd, td)
    g = B.get(g)
    np.testing.assert_array_equal(B.get(xd), x)  # logits untouched

    out = B.put(np.full_like(x, 123.0))
    loss2, g2 = ops.cross_entropy(xd, td, out=out)
    assert g2 is out and loss2 == loss
    np.testing.assert_array_equal(B.get(out), g)

    xi = B.put(x)
    loss3, g3 = ops.cross_entropy(xi, td, out=xi)
    assert g3 is xi and loss3 == loss
    np.testing.assert_array_equal(B.get(xi), g)


def test_compute_grad_false(backend, rng):
    # The loss-only path (online max/sum) is a different algorithm from the
    # gradient path; both must meet the bound. Ascending rows make the running
    # max grow at every block, descending ones never after the first.
    x = rng.standard_normal((33, 1000), dtype=np.float32) * 3
    x[0] = np.linspace(-50, 50, 1000, dtype=np.float32)
    x[1] = x[0][::-1]
    t = rng.integers(0, 1000, 33)
    t[2] = -100
    loss, g = ops.cross_entropy(backend.put(x), backend.put(t), compute_grad=False)
    assert g is None
    l64, _ = ce_ref(x, t)
    l32, _ = ce_ref(x, t, dtype=np.float32)
    assert_error_bound(loss, l64, l32, name="loss")
    check(backend, x, t)


@pytest.mark.parametrize("compute_grad", [True, False])
def test_large_logits_stable(backend, rng, compute_grad):
    B = backend
    x = (rng.standard_normal((17, 127)) * 1e4).astype(np.float32)
    x[3] += 3e4
    t = rng.integers(0, 127, 17)
    t[5] = int(np.argmax(x[5]))
    loss, g = ops.cross_entropy(B.put(x), B.put(t), compute_grad=compute_grad)
    assert np.isfinite(loss)
    l64, g64 = ce_ref(x, t)
    l32, g32 = ce_ref(x, t, dtype=np.float32)
    assert_error_bound(loss, l64, l32, name="loss")
    if compute_grad:
        assert_error_bound(B.get(g), g64, g32, name="dlogits")


@pytest.mark.parametrize("compute_grad", [True, False])
def test_neg_inf_logits(backend, rng, compute_grad):
    # Masked-out vocabulary entries (-inf) get probability and gradient 0.
    B = backend
    x = rng.standard_normal((17, 33), dtype=np.float32)
    x[:, ::3] = -np.inf
    x[4, :32] = -np.inf
    t = rng.integers(0, 11, 17) * 3 + 1
    t[4] = 32
    loss, g = ops.cross_entropy(B.put(x), B.put(t), compute_grad=compute_grad)
    l64, g64 = ce_ref(x, t)
    np.testing.assert_allclose(loss, l64, rtol=1e-5)
    if compute_grad:
        g = B.get(g)
        assert np.all(g[:, ::3] == 0)
        np.testing.assert_allclose(g, g64, rtol=1e-5, atol=1e-8)


def test_reference_gradient_finite_difference(rng):
    x = rng.standard_normal((7, 13))
    t = rng.integers(0, 13, 7)
    t[2] = -100
    _, g = ce_ref(x, t)
    num, idx = finite_difference(lambda z: ce_ref(z, t)[0], x, np.float64(1.0), rng=rng)
    np.testing.assert_allclose(num, [g[i] for i in idx], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("ignore_index", [-100, 2])
def test_torch_parity(isa, rng, ignore_index):
    torch = torch_or_skip()
    F = torch.nn.functional
    x = rng.standard_normal((127, 1000), dtype=np.float32) * 2
    t = rng.integers(0, 1000, 127)
    t[::5] = ignore_index
    loss, g = ops.cross_entropy(x, t, ignore_index=ignore_index)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    lt = F.cross_entropy(xt, torch.from_numpy(t), ignore_index=ignore_index)
    lt.backward()
    np.testing.assert_allclose(loss, lt.item(), rtol=1e-5)
    np.testing.assert_allclose(g, xt.grad.numpy(), rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("shape", [(127, 1000), (1000, 1000)])
def test_determinism(backend, rng, shape):
    B = backend
    x = rng.standard_normal(shape, dtype=np.float32)
    t = rng.integers(0, shape[1], shape[0])
    l1, g1 = ops.cross_entropy(B.put(x), B.put(t))
    l2, g2 = ops.cross_entropy(B.put(x), B.put(t))
    assert l1 == l2
    np.testing.assert_array_equal(B.get(g1), B.get(g2))
    if B.device:
        return
    # Rows are owned by one thread each and losses summed serially afterwards,
    # so even the thread count does not change a bit.
    with num_threads(1):
        l3, g3 = ops.cross_entropy(x, t)
    assert l3 == l1
    np.testing.assert_array_equal(g3, g1)


def test_bad_inputs(rng):
    x = rng.standard_normal((4, 6), dtype=np.float32)
    t = np.array([0, 1, 5, 2])
    with pytest.raises(TypeError, match="logits"):
        ops.cross_entropy(x.astype(np.float64), t)
    with pytest.raises(TypeError, match="logits"):
        ops.cross_entropy(x.tolist(), t)
    with pytest.raises(TypeError, match="targets"):
        ops.cross_entropy(x, t.astype(np.float32))
    with pytest.raises(ValueError, match="targets"):
        ops.cross_entropy(x, np.array([0, 1, 6, 2]))
    with pytest.raises(ValueError, match="targets"):
        ops.cross_entropy(x, np.array([0, -1, 1, 2]))
    with pytest.raises(ValueError, match="targets"):
        ops.cross_entropy(x, t[:3])
    with pytest.raises(ValueError, match="targets"):
        ops.cross_entropy(x, t.reshape(2, 2))
    with pytest.raises(ValueError, match="logits"):
        ops.cross_entropy(np.asfortranarray(rng.standard_normal((4, 6), dtype=np.float32)), t)
    with pytest.raises(ValueError, match="logits"):
        ops.cross_entropy(rng.standard_normal((4, 12), dtype=np.float32)[:, ::2], t)
    with pytest.raises(ValueError, match="logits"):
        ops.cross_entropy(x.ravel(), t)
    with pytest.raises(ValueError, match="out"):
        ops.cross_entropy(x, t, out=np.empty((4, 5), np.float32))
    with pytest.raises(TypeError, match="out"):
        ops.cross_entropy(x, t, out=np.empty((4, 6), np.float64))
    ro = np.empty((4, 6), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out"):
        ops.cross_entropy(x, t, out=ro)
    big = rng.standard_normal((5, 6), dtype=np.float32)
    with pytest.raises(ValueError, match="out"):
        ops.cross_entropy(big[:4], t, out=big[1:])


def test_small_cross_entropy(backend, rng):
    """The kernels once at a tiny size, int32 and int64 targets, in place
    (compute-sanitizer runs the test_small_* set)."""
    B = backend
    x = rng.standard_normal((5, 37)).astype(np.float32)
    t = np.array([0, 36, -100, 5, 1])
    loss, g = ops.cross_entropy(B.put(x), B.put(t.astype(np.int32)))
    np.testing.assert_allclose(loss, ce_ref(x, t)[0], rtol=1e-5)
    xi = B.put(x)
    ops.cross_entropy(xi, B.put(t), out=xi)
    np.testing.assert_allclose(B.get(xi), ce_ref(x, t)[1], rtol=1e-5, atol=1e-7)

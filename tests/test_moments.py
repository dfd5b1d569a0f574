"""The optimizer moments of a model's parameter store: allocated on first use,
releasable, and held for one range alone under ZeRO-1 (fastlm.zero)."""
from __future__ import annotations

import gc

import numpy as np
import pytest

import fastlm


def tiny(device="cpu"):
    return fastlm.Transformer(31, block_size=8, n_layer=1, n_head=2, n_embd=12, seed=2, device=device)


def batch(seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 31, (2, 8)), rng.integers(0, 31, (2, 8))


def train_step(model, seed=0, **step):
    model.zero_grad()
    model.forward_backward(*batch(seed))
    model.step(**step)


def adamw_ref(p, g, m, v, lr, b1, b2, eps, wd, step):
    """float64 AdamW (torch.optim.AdamW) of one element range."""
    p, g, m, v = (np.asarray(a, np.float64) for a in (p, g, m, v))
    p = p * (1 - lr * wd)
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    mhat, vhat = m / (1 - b1 ** step), v / (1 - b2 ** step)
    return p - lr * mhat / (np.sqrt(vhat) + eps), m, v


def test_moments_allocated_on_first_use_and_released(model_device):
    model = tiny(model_device)
    g, n = model._g, model.num_parameters()
    assert g.moment_bytes() == 0 and tuple(g.moment_range()) == (0, n)  # a model that never trains holds none
    model.generate(np.zeros((1, 1), np.int64), max_new_tokens=2)
    assert g.moment_bytes() == 0
    np.testing.assert_array_equal(g.read("adam_v"), np.zeros(n, np.float32))  # a read allocates zeros
    assert g.moment_bytes() == 4 * n  # the second moment alone
    g.release_moments()
    train_step(model, 0, lr=1e-2)
    assert g.moment_bytes() == 8 * n
    assert np.abs(g.read("adam_m")).max() > 0
    g.release_moments()
    assert g.moment_bytes() == 0
    np.testing.assert_array_equal(g.read("adam_m"), np.zeros(n, np.float32))


def test_sgd_allocates_its_momentum_alone():
    model = tiny()
    train_step(model, 0, lr=1e-2, optimizer="sgd", momentum=0.9)
    assert model._g.moment_bytes() == 4 * model.num_parameters()


def test_lazy_moments_step_bit_for_bit_as_zeroed_ones():
    """A first step on moments allocated now equals one on moments written as zeros."""
    a, b = tiny(), tiny()
    n = b.num_parameters()
    b._g.write("adam_m", np.zeros(n, np.float32))
    b._g.write("adam_v", np.zeros(n, np.float32))
    assert a._g.moment_bytes() == 0 and b._g.moment_bytes() == 8 * n
    for model in (a, b):
        for s in range(3):
            train_step(model, s, lr=1e-2, weight_decay=0.1)
    for w in ("params", "adam_m", "adam_v"):
        np.testing.assert_array_equal(a._g.read(w), b._g.read(w))


def test_a_view_outlives_released_moments():
    model = tiny()
    train_step(model, 0, lr=1e-2)
    view = model._g.adam_m()
    before = view.copy()
    model._g.release_moments()
    gc.collect()
    np.testing.assert_array_equal(view, before)  # the old buffer, kept alive by the view
    train_step(model, 1, lr=1e-2)
    np.testing.assert_array_equal(view, before)  # not the model's any more
    assert not np.array_equal(model._g.adam_m(), before)


@pytest.mark.parametrize("lo, hi", [(0, 0), (3, 3), (5, 200), (190, None), (0, None)])
def test_ranged_step_updates_the_range_alone(model_device, lo, hi):
    """AdamW over [lo, hi) with moments of that range only, against float64,
    with weight decay on the 2-D tensors only (the range cuts tensors)."""
    model = tiny(model_device)
    g, n = model._g, model.num_parameters()
    hi = n if hi is None else hi
    model.zero_grad()
    model.forward_backward(*batch())
    p0, grads = g.read("params"), g.read("grads")
    m0 = np.random.default_rng(1).standard_normal(hi - lo).astype(np.float32) * 1e-3
    v0 = np.random.default_rng(2).random(hi - lo).astype(np.float32) * 1e-4
    g.set_moment_range(lo, hi)
    assert g.moment_bytes() == 0 and tuple(g.moment_range()) == (lo, hi)
    g.write("adam_m", m0, lo)
    g.write("adam_v", v0, lo)
    assert g.moment_bytes() == 8 * (hi - lo)
    g.step_count = 4
    g.step(1e-2, 0.9, 0.95, 1e-8, 0.1, 0.5, lo, hi)
    assert g.step_count == 5
    p1 = g.read("params")
    np.testing.assert_array_equal(p1[:lo], p0[:lo])
    np.testing.assert_array_equal(p1[hi:], p0[hi:])
    decay = np.zeros(n, bool)
    for _, shape, off in model._tensors.layout:
        decay[off:off + int(np.prod(shape))] = len(shape) >= 2
    ref_p, ref_m, ref_v = adamw_ref(p0[lo:hi], grads[lo:hi] * np.float32(0.5), m0, v0, 1e-2, 0.9, 0.95, 1e-8,
                                    np.where(decay[lo:hi], 0.1, 0.0), 5)
    np.testing.assert_allclose(p1[lo:hi], ref_p, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(g.read("adam_m", lo, hi - lo), ref_m, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(g.read("adam_v", lo, hi - lo), ref_v, rtol=1e-5, atol=1e-12)


def test_ranged_step_equals_the_whole_step_bit_for_bit():
    """Two ranges stepped in turn are the whole-vector step, bit for bit."""
    whole, cut = tiny(), tiny()
    n = whole.num_parameters()
    for model in (whole, cut):
        model.zero_grad()
        model.forward_backward(*batch())
    whole._g.step(1e-2, 0.9, 0.95, 1e-8, 0.1, 0.7)
    mid = n // 2 + 3
    moments = {}
    for lo, hi in ((0, mid), (mid, n)):
        cut._g.set_moment_range(lo, hi)
        cut._g.step_count = 0
        cut._g.step(1e-2, 0.9, 0.95, 1e-8, 0.1, 0.7, lo, hi)
        moments[lo] = [cut._g.read(w, lo, hi - lo) for w in ("adam_m", "adam_v")]
    np.testing.assert_array_equal(cut._g.read("params"), whole._g.read("params"))
    for i, w in enumerate(("adam_m", "adam_v")):
        np.testing.assert_array_equal(np.concatenate([moments[0][i], moments[mid][i]]), whole._g.read(w))


def test_sharded_moments_refuse_what_they_do_not_hold():
    model = tiny()
    g, n = model._g, model.num_parameters()
    g.set_moment_range(10, 20)
    with pytest.raises(ValueError, match=r"read: 10 values at offset 0 do not fit the elements \[10, 20\) that "
                                         r"'adam_m' holds \(a ZeRO-1 shard\)"):
        g.read("adam_m", 0, 10)
    with pytest.raises(ValueError, match=r"write: 11 values at offset 10 do not fit"):
        g.write("adam_v", np.zeros(11, np.float32), 10)
    with pytest.raises(ValueError, match=r"adam_m: the optimizer moments hold elements \[10, 20\) only"):
        g.adam_m()
    with pytest.raises(ValueError, match=r"the optimizer moments hold elements \[10, 20\) only \(a ZeRO-1 shard\), "
                                         r"not \[0, " + str(n)):
        train_step(model, 0, lr=1e-2)
    with pytest.raises(ValueError, match="sgd: the optimizer moments hold elements"):
        train_step(model, 0, lr=1e-2, optimizer="sgd")
    assert g.step_count == 0
    with pytest.raises(ValueError, match=r"set_moment_range: \[5, 4\) is not a range of the"):
        g.set_moment_range(5, 4)
    with pytest.raises(ValueError, match=r"step: \[lo, hi\) = \[0, " + str(n + 1)):
        g.step(1e-2, 0.9, 0.95, 1e-8, 0.0, 1.0, 0, n + 1)
    with pytest.raises(ValueError, match="which must be 'params', 'grads', 'adam_m' or 'adam_v', got 'x'"):
        g.read("x")
    g.set_moment_range(0, n)
    assert model._tensors.flat("adam_m").shape == (n,)


def test_to_moves_moments_only_when_held(monkeypatch):
    monkeypatch.setenv("FASTLM_EMULATE_CUDA", "1")
    model = tiny()
    model.to("cuda")
    assert model._g.moment_bytes() == 0  # never used: none on either device
    train_step(model, 0, lr=1e-2)
    m, v = model._g.read("adam_m"), model._g.read("adam_v")
    model.to("cpu")
    assert model._g.moment_bytes() == 8 * model.num_parameters()
    np.testing.assert_array_equal(model._g.read("adam_m"), m)
    np.testing.assert_array_equal(model._g.read("adam_v"), v)

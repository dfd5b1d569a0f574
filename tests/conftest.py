"""Shared test helpers: run each op on every ISA this machine can run, and judge
errors the flash-attention way (against float64, relative to a naive float32
computation's own error)."""
from __future__ import annotations

import numpy as np
import pytest

import fastlm
from fastlm import _C

ISAS = fastlm.available_cpu_isas()


@pytest.fixture(params=ISAS)
def isa(request):
    """Switch the kernel table to one ISA for the test, then restore it."""
    before = fastlm.cpu_isa()
    _C._set_cpu_isa(request.param)
    try:
        yield request.param
    finally:
        _C._set_cpu_isa(before)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def assert_error_bound(ours, ref64, naive32, *, factor: float = 4.0, name: str = "") -> None:
    """max |ours - ref64| <= factor * max |naive32 - ref64| + a few float32 ulps of the scale.

    ref64 is a float64 reference; naive32 the same formula evaluated plainly in
    float32. The ulp floor keeps the bound meaningful where the naive error is 0.
    """
    ours = np.asarray(ours, dtype=np.float64)
    ref64 = np.asarray(ref64, dtype=np.float64)
    naive32 = np.asarray(naive32, dtype=np.float64)
    assert ours.shape == ref64.shape, f"{name}: shape {ours.shape} != {ref64.shape}"
    assert np.all(np.isfinite(ours)), f"{name}: non-finite values"
    err = np.max(np.abs(ours - ref64)) if ours.size else 0.0
    base = np.max(np.abs(naive32 - ref64)) if ours.size else 0.0
    scale = np.max(np.abs(ref64)) if ours.size else 0.0
    bound = factor * base + 8 * np.finfo(np.float32).eps * scale + 1e-30
    assert err <= bound, f"{name}: error {err:.3g} > bound {bound:.3g} (naive float32 error {base:.3g})"


def finite_difference(f, x: np.ndarray, dy: np.ndarray, h: float = 1e-6, n_probe: int = 8,
                      rng=None) -> tuple:
    """Check of a float64 backward reference: returns (numeric, index) pairs
    d<dy, f(x)>/dx at n_probe random entries of x by central differences."""
    rng = rng or np.random.default_rng(0)
    idx = [tuple(int(rng.integers(0, s)) for s in x.shape) for _ in range(n_probe)]
    out = []
    for i in idx:
        xp = x.copy(); xp[i] += h
        xm = x.copy(); xm[i] -= h
        out.append((np.sum(dy * f(xp)) - np.sum(dy * f(xm))) / (2 * h))
    return np.array(out), idx


def torch_or_skip():
    return pytest.importorskip("torch")


def same_on_thread_counts(f, counts=(1, 2, 3)) -> bool:
    """Whether f() returns the same bits (an array) on each of these fastlm thread counts."""
    before = fastlm.get_num_threads()
    outs = []
    try:
        for n in counts:
            fastlm.set_num_threads(n)
            outs.append(f())
    finally:
        fastlm.set_num_threads(before)
    return all(np.array_equal(o, outs[0]) for o in outs[1:])


def assert_streams_independent(model) -> None:
    """Two generate(stream=True) iterators advanced in turn, with another call
    on the model between tokens, give what each gives alone: every stream keeps
    its own decoding state (KV cache or recurrent state)."""
    p1, p2 = [1, 2, 3], [[9, 8], [7, 6]]
    ref1 = model.generate(p1, 12, do_sample=False)
    ref2 = model.generate(p2, 12, do_sample=False)
    s1 = model.generate(p1, 12, do_sample=False, stream=True)
    s2 = model.generate(p2, 12, do_sample=False, stream=True)
    out1, out2 = [], []
    for _ in range(12):
        out1.append(next(s1))
        out2.append(next(s2))
        model.forward(np.array([[0, 1]]))  # any other use of the model in between
    assert out1 == ref1[3:].tolist()
    np.testing.assert_array_equal(np.stack(out2, 1), ref2[:, 2:])


def assert_restored(m, loaded, idx, tgt) -> None:
    """``loaded`` (read back from ``m.save``) is ``m`` bit for bit: config,
    tokenizer, weights in order, logits on ``idx``, AdamW moments, step count
    and history."""
    assert loaded.config == m.config and loaded.tokenizer == m.tokenizer
    a, b = m.state_dict(), loaded.state_dict()
    assert list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a)
    np.testing.assert_array_equal(m.forward(idx), loaded.forward(idx))
    for which in ("adam_m", "adam_v"):
        assert np.array_equal(m._tensors.flat(which), loaded._tensors.flat(which))
    assert loaded.optimizer_step == m.optimizer_step and loaded.history == m.history


def assert_same_next_step(m1, m2, idx, tgt) -> None:
    """One training step (lr 1e-3) of each model leaves the same weights."""
    for x in (m1, m2):
        x.zero_grad()
        x.forward_backward(idx, tgt)
        x.step(1e-3)
    a, b = m1.state_dict(), m2.state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)


# The devices a model can run on here: the CPU, the emulated CUDA device (the
# device path on the CPU kernels, always), and a real GPU when one is usable.
MODEL_DEVICES = ["cpu", "emulated", pytest.param("cuda", marks=pytest.mark.skipif(
    not fastlm.cuda_available(), reason="needs a CUDA GPU"))]


@pytest.fixture(params=MODEL_DEVICES)
def model_device(request, monkeypatch):
    """A device name for models ("cpu" or "cuda"), with FASTLM_EMULATE_CUDA set
    for the emulated one; request.param says which backend it is."""
    if request.param == "emulated":
        monkeypatch.setenv("FASTLM_EMULATE_CUDA", "1")
        return "cuda"
    monkeypatch.delenv("FASTLM_EMULATE_CUDA", raising=False)
    return request.param

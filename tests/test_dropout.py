"""Dropout: fastlm.ops.dropout and the attention-probability dropout against a
NumPy reimplementation of the mask (csrc/dropout_hash.h) and float64
references that apply that mask."""
from __future__ import annotations

import numpy as np
import pytest

from fastlm import ops
from conftest import assert_error_bound
from test_attention import inputs

M32, M64 = np.uint64(0xFFFFFFFF), np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix64(z):
    z = np.asarray(z, np.uint64)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def ref_key(seed: int, stream: int) -> int:
    with np.errstate(over="ignore"):
        inner = _mix64(np.uint64(stream) + np.uint64(0x9E3779B97F4A7C15))
        return int(_mix64(np.uint64(seed) + inner))


def _fmix32(x):
    x = np.asarray(x, np.uint64) & M32
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(0x85EBCA6B)) & M32
    x ^= x >> np.uint64(13)
    x = (x * np.uint64(0xC2B2AE35)) & M32
    return x ^ (x >> np.uint64(16))


def ref_keep(key: int, index, p: float) -> np.ndarray:
    """The kept elements: bits(key, index) >= round(p 2^32)."""
    index = np.asarray(index, np.uint64)
    k = np.uint64(key)
    x = _fmix32((index & M32) ^ (k & M32))
    x = _fmix32(x ^ (((index >> np.uint64(32)) + (k >> np.uint64(32))) & M32))
    thr = min(int(p * 2**32 + 0.5), 2**32 - 1)
    return x >= np.uint64(thr)


@pytest.mark.parametrize("n", [1, 3, 17, 33, 127, 1000, 70001])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_matches_reference_mask(isa, rng, n, p):
    x = rng.standard_normal(n).astype(np.float32)
    seed = 0x1234_5678_9ABC_DEF0 + n
    y = ops.dropout(x, p, seed=seed)
    keep = ref_keep(seed, np.arange(n), p)
    expect = np.where(keep, x * np.float32(1 / (1 - np.float32(p))), np.float32(0))
    np.testing.assert_array_equal(y, expect)
    dy = rng.standard_normal(n).astype(np.float32)
    np.testing.assert_array_equal(ops.dropout_backward(dy, p, seed=seed),
                                  np.where(keep, dy * np.float32(1 / (1 - np.float32(p))), np.float32(0)))


def test_dropout_keeps_shape_and_zero_p_is_identity(isa, rng):
    x = rng.standard_normal((3, 5, 7)).astype(np.float32)
    np.testing.assert_array_equal(ops.dropout(x, 0.0, seed=9), x)
    y = ops.dropout(x, 0.3, seed=9)
    assert y.shape == x.shape and y.dtype == np.float32
    assert np.array_equal(y, ops.dropout(x, 0.3, seed=9))
    assert not np.array_equal(y, ops.dropout(x, 0.3, seed=10))


@pytest.mark.parametrize("p", [0.05, 0.2, 0.5, 0.8])
def test_kept_fraction_within_three_sigma(isa, p):
    n = 1_000_000
    y = ops.dropout(np.ones(n, np.float32), p, seed=2024)
    kept = np.count_nonzero(y) / n
    sigma = np.sqrt(p * (1 - p) / n)
    assert abs(kept - (1 - p)) <= 3 * sigma, (kept, 1 - p, sigma)
    # Neighbouring elements independent: the pairs kept together as often as chance says.
    both = np.count_nonzero(y[:-1] * y[1:]) / (n - 1)
    assert abs(both - (1 - p) ** 2) <= 4 * np.sqrt((1 - p) ** 2 * (1 - (1 - p) ** 2) / n)


def test_seeds_give_independent_masks():
    n = 200_000
    a = ops.dropout(np.ones(n, np.float32), 0.5, seed=1) > 0
    b = ops.dropout(np.ones(n, np.float32), 0.5, seed=2) > 0
    assert abs(np.mean(a == b) - 0.5) < 4 * 0.5 / np.sqrt(n)


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5, float("nan"), float("inf")])
def test_bad_p(p):
    x = np.ones(4, np.float32)
    with pytest.raises(ValueError, match="dropout"):
        ops.dropout(x, p, seed=0)
    q = np.ones((1, 1, 4, 4), np.float32)
    with pytest.raises(ValueError, match="dropout"):
        ops.attention(q, q, q, dropout=p)


@pytest.mark.parametrize("seed,exc", [(-1, ValueError), (2**64, ValueError), (1.5, TypeError), (True, TypeError)])
def test_bad_seed(seed, exc):
    with pytest.raises(exc, match="dropout_seed"):
        ops.dropout(np.ones(4, np.float32), 0.5, seed=seed)


def test_bad_x():
    with pytest.raises(TypeError):
        ops.dropout(np.ones(4, np.float64), 0.5, seed=0)


# ---------------------------------------------------------------- attention

def attention_mask(B, H, T, Tk, p, seed):
    """(B, H, T, Tk) keep factors: 1 / (1 - p) where kept, 0 where dropped."""
    z = np.empty((B, H, T, Tk))
    idx = (np.arange(T)[:, None] * Tk + np.arange(Tk)[None, :]).astype(np.uint64)
    for b in range(B):
        for h in range(H):
            z[b, h] = ref_keep(ref_key(seed, b * H + h), idx, p) / (1 - np.float32(p))
    return z


def ref_attention(q, k, v, z, causal, dtype=np.float64):
    q, k, v, z = (np.asarray(x, dtype) for x in (q, k, v, z))
    T, Tk, D = q.shape[2], k.shape[2], q.shape[3]
    s = q @ np.swapaxes(k, -1, -2) * dtype(1 / np.sqrt(D))
    if causal:
        s = np.where(np.arange(Tk)[None, :] > np.arange(T)[:, None] + (Tk - T), dtype(-np.inf), s)
    m = s.max(-1, keepdims=True)
    e = np.exp(s - m)
    l = e.sum(-1, keepdims=True)
    return (e / l * z) @ v, (m + np.log(l))[..., 0], e / l


def ref_attention_backward(dout, q, k, v, z, causal, dtype=np.float64):
    _, _, p = ref_attention(q, k, v, z, causal, dtype)
    dout, q, k, v, z = (np.asarray(x, dtype) for x in (dout, q, k, v, z))
    scale = dtype(1 / np.sqrt(q.shape[3]))
    dv = np.swapaxes(p * z, -1, -2) @ dout
    dp = (dout @ np.swapaxes(v, -1, -2)) * z
    ds = p * (dp - np.sum(dp * p, -1, keepdims=True)) * scale
    return ds @ k, np.swapaxes(ds, -1, -2) @ q, dv


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 17, 31), (1, 2, 33, 64), (1, 1, 127, 17),
                                   (2, 1, 130, 8)])
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_attention_dropout_forward_backward(isa, rng, shape, causal, p):
    B, H, T, D = shape
    q, k, v = inputs(rng, B, H, T, D)
    seed = 77 + T
    z = attention_mask(B, H, T, T, p, seed)
    out, lse = ops.attention(q, k, v, causal=causal, dropout=p, dropout_seed=seed)
    r_out, r_lse, _ = ref_attention(q, k, v, z, causal)
    n_out, n_lse, _ = ref_attention(q, k, v, z, causal, np.float32)
    assert_error_bound(out, r_out, n_out, name="out")
    assert_error_bound(lse, r_lse, n_lse, name="lse")
    dout = rng.standard_normal(q.shape).astype(np.float32)
    grads = ops.attention_backward(dout, q, k, v, out, lse, causal=causal, dropout=p, dropout_seed=seed)
    refs = ref_attention_backward(dout, q, k, v, z, causal)
    naive = ref_attention_backward(dout, q, k, v, z, causal, np.float32)
    for name, g, r, n in zip(("dq", "dk", "dv"), grads, refs, naive):
        if T == 1 and name != "dv":
            # One key: dq and dk are 0 exactly; the kernel's delta = dO . O
            # rounds otherwise than dO . V z, leaving float32 noise.
            assert np.abs(g).max() < 1e-6 * np.abs(refs[2]).max() + 1e-30
            continue
        assert_error_bound(g, r, n, name=name)


def test_attention_dropout_zero_is_bit_identical(rng):
    q, k, v = inputs(rng, 2, 2, 40, 16)
    a = ops.attention(q, k, v)
    b = ops.attention(q, k, v, dropout=0.0, dropout_seed=5)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)

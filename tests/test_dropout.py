"""Dropout: fastlm.ops.dropout (CPU) and the attention-probability dropout (every
backend; bfloat16 on a GPU) against a NumPy reimplementation of the mask
(csrc/dropout_hash.h) and float64 references that apply that mask."""
from __future__ import annotations

import numpy as np
import pytest

from fastlm import ops
from conftest import assert_error_bound
from reference.attention import inputs, naive_bf16_attention
from reference.bf16 import bf16_round
from reference.dropout import attention_mask, ref_attention, ref_attention_backward, ref_keep

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

@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 17, 31), (1, 2, 33, 64), (1, 1, 127, 17),
                                   (2, 1, 130, 8), (1, 2, 70, 64), (1, 1, 130, 128)])
@pytest.mark.parametrize("p", [0.1, 0.5])
@pytest.mark.parametrize("seed0", [77, 2**63 + 12345])  # the key's high half zero and not
def test_attention_dropout_forward_backward(backend, rng, shape, causal, p, seed0):
    be = backend
    B, H, T, D = shape
    q, k, v = inputs(rng, B, H, T, D)
    seed = seed0 + T
    z = attention_mask(B, H, T, T, p, seed)
    out, lse = ops.attention(be.put(q), be.put(k), be.put(v), causal=causal, dropout=p, dropout_seed=seed)
    r_out, r_lse, _ = ref_attention(q, k, v, z, causal)
    n_out, n_lse, _ = ref_attention(q, k, v, z, causal, np.float32)
    assert_error_bound(be.get(out), r_out, n_out, name="out")
    assert_error_bound(be.get(lse), r_lse, n_lse, name="lse")
    dout = rng.standard_normal(q.shape).astype(np.float32)
    grads = ops.attention_backward(be.put(dout), be.put(q), be.put(k), be.put(v), out, lse, causal=causal,
                                   dropout=p, dropout_seed=seed)
    grads = [be.get(g) for g in grads]
    refs = ref_attention_backward(dout, q, k, v, z, causal)
    naive = ref_attention_backward(dout, q, k, v, z, causal, np.float32)
    for name, g, r, n in zip(("dq", "dk", "dv"), grads, refs, naive):
        if T == 1 and name != "dv":
            # One key: dq and dk are 0 exactly; the kernel's delta = dO . O
            # rounds otherwise than dO . V z, leaving float32 noise.
            assert np.abs(g).max() < 1e-6 * np.abs(refs[2]).max() + 1e-30
            continue
        assert_error_bound(g, r, n, name=name)


@pytest.mark.parametrize("causal", [True, False])
def test_attention_dropout_fewer_queries(backend, rng, causal):
    B = backend
    q, k, v = inputs(rng, 2, 2, 40, 24, Tk=100)
    z = attention_mask(2, 2, 40, 100, 0.3, 99)
    out, _ = ops.attention(B.put(q), B.put(k), B.put(v), causal=causal, dropout=0.3, dropout_seed=99)
    assert_error_bound(B.get(out), ref_attention(q, k, v, z, causal)[0],
                       ref_attention(q, k, v, z, causal, np.float32)[0], name="out")


@pytest.mark.parametrize("Tk", [40, 100])
def test_attention_dropout_zero_is_bit_identical(backend, rng, Tk):
    B = backend
    q, k, v = (B.put(x) for x in inputs(rng, 2, 2, 40, 16, Tk=Tk))
    a = ops.attention(q, k, v)
    b = ops.attention(q, k, v, dropout=0.0, dropout_seed=5)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(B.get(x), B.get(y))


@pytest.mark.parametrize("p", [0.2])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("B,H,T,D", [(1, 1, 1, 32), (2, 3, 17, 64), (1, 2, 127, 128), (1, 1, 200, 96),
                                     (1, 1, 130, 33), (1, 2, 300, 64)])
def test_attention_dropout_bfloat16(gpu_backend, rng, B, H, T, D, causal, p):
    be = gpu_backend
    q, k, v = (bf16_round(x) for x in inputs(rng, B, H, T, D))
    dout = bf16_round(rng.standard_normal(q.shape))
    seed = 7 + T
    z = attention_mask(B, H, T, T, p, seed)
    dq_, dk_, dv_ = (be.put(x, "bfloat16") for x in (q, k, v))
    out, lse = ops.attention(dq_, dk_, dv_, causal=causal, dropout=p, dropout_seed=seed)
    r_out, r_lse, _ = ref_attention(q, k, v, z, causal)
    n_out, n_dq, n_dk, n_dv = naive_bf16_attention(q, k, v, dout, causal, z)
    assert_error_bound(be.get(out), r_out, n_out, name="out")
    assert_error_bound(be.get(lse), r_lse, ref_attention(q, k, v, z, causal, np.float32)[1],
                       name="lse")
    grads = ops.attention_backward(be.put(dout, "bfloat16"), dq_, dk_, dv_, out, lse, causal=causal,
                                   dropout=p, dropout_seed=seed)
    refs = ref_attention_backward(dout, q, k, v, z, causal)
    for name, g, r, n in zip(("dq", "dk", "dv"), grads, refs, (n_dq, n_dk, n_dv)):
        if T == 1 and name != "dv":
            assert np.abs(be.get(g)).max() <= 1e-5 * np.abs(dout).max() * np.abs(q).max(), name
            continue
        assert_error_bound(be.get(g), r, n, name=name)

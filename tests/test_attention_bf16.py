"""precision="bf16" attention on the CPU (the mixed-precision table's): the
products on bfloat16 operands with float32 accumulation, float32 softmax
statistics. Judged against float64 on the bfloat16-rounded operands, the bound
set by a naive float32 computation on the same operands that rounds the
probabilities P (and the backward's dS) to bfloat16 before their products,
as the kernels do."""
from __future__ import annotations

import numpy as np
import pytest

import fastlm
from fastlm import _C, ops
from conftest import assert_error_bound, num_threads
from reference.attention import inputs
from reference.bf16 import bf16_round as to_bf16
from reference.dropout import attention_mask, ref_attention as ref_forward, \
    ref_attention_backward as ref_backward

# (B, H, T, D): awkward against the 64 x 64 tiles, the vector width and the
# bfloat16 pairs (odd T, odd D), plus head dims 64 and many key blocks.
SHAPES = [(1, 1, 1, 1), (2, 3, 17, 31), (1, 2, 33, 64), (1, 1, 127, 17), (2, 1, 130, 64),
          (1, 2, 201, 33)]


def rounded(*xs):
    return tuple(to_bf16(x) for x in xs)


def check(q, k, v, causal, p=0.0, seed=0, rng=None, backward=True):
    B, H, T, D = q.shape
    Tk = k.shape[2]
    z = attention_mask(B, H, T, Tk, p, seed) if p > 0 else np.ones((B, H, T, Tk))
    # One query without dropout (decoding) runs in float32.
    one_query = T == 1 and p == 0
    qr, kr, vr = (q, k, v) if one_query else rounded(q, k, v)
    out, lse = ops.attention(q, k, v, causal=causal, dropout=p, dropout_seed=seed, precision="bf16")
    assert out.dtype == np.float32 and out.shape == q.shape and lse.shape == q.shape[:3]
    r_out, r_lse, _ = ref_forward(qr, kr, vr, z, causal)
    n_out, n_lse, _ = ref_forward(qr, kr, vr, z, causal, np.float32, round_p=not one_query)
    assert_error_bound(out, r_out, n_out, name="out")
    assert_error_bound(lse, r_lse, n_lse, name="lse")
    if not backward:
        return
    dout = rng.standard_normal(q.shape).astype(np.float32)
    qr, kr, vr, dr = rounded(q, k, v, dout)
    r_out, r_lse, _ = ref_forward(qr, kr, vr, z, causal)
    # The reference's out and lse, so that only the backward is judged.
    grads = ops.attention_backward(dout, q, k, v, r_out.astype(np.float32), r_lse.astype(np.float32),
                                   causal=causal, dropout=p, dropout_seed=seed, precision="bf16")
    refs = ref_backward(dr, qr, kr, vr, z, causal)
    naive = ref_backward(dr, qr, kr, vr, z, causal, np.float32, round_p=True)
    for name, g, r, n in zip(("dq", "dk", "dv"), grads, refs, naive):
        assert g.dtype == np.float32 and g.shape == q.shape
        if T == 1 and name != "dv":  # one key: dq, dk are 0 up to float32 noise
            assert np.abs(g).max() < 1e-5 * np.abs(refs[2]).max() + 1e-30
            continue
        assert_error_bound(g, r, n, name=name)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_backward(bf16, rng, shape, causal):
    check(*inputs(rng, *shape), causal, rng=rng)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("B,H,T,Tk,D", [(2, 2, 5, 77, 13), (1, 1, 70, 130, 33), (1, 3, 2, 100, 64)])
def test_forward_fewer_queries_than_keys(bf16, rng, B, H, T, Tk, D, causal):
    check(*inputs(rng, B, H, T, D, Tk), causal, backward=False)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("shape", [(2, 3, 17, 31), (1, 1, 130, 64), (2, 1, 65, 9)])
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout(bf16, rng, shape, causal, p):
    check(*inputs(rng, *shape), causal, p=p, seed=77 + shape[2], rng=rng)


def test_large_scores_stay_finite(bf16, rng):
    check(*inputs(rng, 1, 2, 100, 32, scale=8.0), True, rng=rng)


def test_rounds_operands(bf16, rng):
    """bf16 differs from fp32 by about bfloat16's rounding, and inputs already
    bfloat16 give the float32 kernel's result up to the rounding of P."""
    q, k, v = inputs(rng, 1, 2, 40, 16)
    o32, _ = ops.attention(q, k, v)
    o16, _ = ops.attention(q, k, v, precision="bf16")
    d = np.abs(o16 - o32).max()
    assert 1e-5 < d < 3e-2


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("shape", [(1, 1, 300, 64), (3, 1, 130, 24), (1, 4, 90, 16)])
def test_threads_deterministic_and_accurate(bf16, rng, shape, threads):
    """Fewer heads than threads (or not a multiple) share each head's key
    blocks in the backward; every thread count repeats its bits."""
    with num_threads(threads):
        q, k, v = inputs(rng, *shape)
        dout = rng.standard_normal(q.shape).astype(np.float32)
        runs = []
        for _ in range(2):
            out, lse = ops.attention(q, k, v, precision="bf16")
            runs.append((out, lse) + ops.attention_backward(dout, q, k, v, out, lse, precision="bf16"))
        check(q, k, v, True, rng=rng)
    for x, y in zip(*runs):
        assert np.array_equal(x, y)


def test_bad_precision(rng):
    q, k, v = inputs(rng, 1, 1, 4, 4)
    with pytest.raises(ValueError, match="precision"):
        ops.attention(q, k, v, precision="fp16")
    with pytest.raises(TypeError, match="precision"):
        ops.attention(q, k, v, precision=None)
    out, lse = ops.attention(q, k, v)
    with pytest.raises(ValueError, match="precision"):
        ops.attention_backward(q, q, k, v, out, lse, precision="tf32")


@pytest.mark.parametrize("isa", [i for i in fastlm.available_cpu_isas() if i != "avx512bf16"])
def test_refused_without_avx512bf16(rng, isa):
    q, k, v = inputs(rng, 1, 1, 4, 4)
    out, lse = ops.attention(q, k, v)
    before = fastlm.cpu_isa()
    _C._set_cpu_isa(isa)
    try:
        with pytest.raises(ValueError, match="precision 'bf16' needs the avx512bf16"):
            ops.attention(q, k, v, precision="bf16")
        with pytest.raises(ValueError, match="precision 'bf16' needs the avx512bf16"):
            ops.attention_backward(q, q, k, v, out, lse, precision="bf16")
    finally:
        _C._set_cpu_isa(before)

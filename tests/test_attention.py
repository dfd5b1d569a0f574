"""fastlm.ops.attention / attention_backward against float64 NumPy references, on
every backend (each CPU ISA, the emulated device, CUDA); bfloat16 device
operands on a GPU.

The references materialise the full (T, Tk) probability matrix, which the
flash kernels never do; the naive float32 error of that same formula sets the
error bound (see conftest.assert_error_bound).
"""
from __future__ import annotations

import numpy as np
import pytest

from fastlm import ops
from conftest import HOST, assert_error_bound, finite_difference, num_threads, torch_or_skip
from reference.attention import inputs, naive_bf16_attention, ref_backward, ref_backward_from_lse, ref_forward
from reference.bf16 import bf16_round

# (B, H, T, D): not multiples of the 64 x 64 tiles nor of any vector width,
# plus one sequence long enough for many key blocks.
SHAPES = [(1, 1, 1, 1), (2, 3, 17, 31), (1, 2, 33, 64), (1, 1, 127, 17), (2, 1, 1000, 8),
          # the GPU kernels' head dims and tiles
          (1, 2, 70, 128), (2, 1, 65, 100), (1, 1, 300, 64), (2, 2, 33, 32)]


def check_forward(B, q, k, v, causal):
    """Runs the forward on B, checks it, and returns (out, lse) as B holds them."""
    out, lse = ops.attention(B.put(q), B.put(k), B.put(v), causal=causal)
    r_out, r_lse, _ = ref_forward(q, k, v, causal)
    n_out, n_lse, _ = ref_forward(q, k, v, causal, np.float32)
    o, s = B.get(out), B.get(lse)
    assert o.dtype == np.float32 and o.shape == q.shape
    assert s.dtype == np.float32 and s.shape == q.shape[:3]
    assert_error_bound(o, r_out, n_out, name="out")
    assert_error_bound(s, r_lse, n_lse, name="lse")
    if B.device:  # the device and the CPU agree to float32 rounding
        np.testing.assert_allclose(o, ops.attention(q, k, v, causal=causal)[0], rtol=1e-4, atol=1e-5)
    return out, lse


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_forward(backend, rng, shape, causal):
    check_forward(backend, *inputs(rng, *shape), causal)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("B,H,T,Tk,D", [(2, 2, 5, 77, 13), (1, 3, 1, 100, 64),
                                         (1, 1, 70, 130, 33), (1, 1, 1, 1, 7), (1, 2, 40, 300, 128)])
def test_forward_fewer_queries_than_keys(backend, rng, B, H, T, Tk, D, causal):
    # The KV-cache shape: the queries are the last T of Tk positions.
    check_forward(backend, *inputs(rng, B, H, T, D, Tk), causal)


@pytest.mark.parametrize("causal", [True, False])
def test_forward_large_scores_stay_finite(backend, rng, causal):
    # Scores of several thousand: exp overflows unless the running max is subtracted.
    q, k, v = inputs(rng, 1, 2, 150, 16, scale=30.0)
    check_forward(backend, q, k, v, causal)


def test_forward_rows_without_keys(backend, rng):
    # Causal with T > Tk: the first T - Tk queries see no key; they get 0 and
    # lse -inf rather than NaN, the others as usual.
    B = backend
    q, k, v = inputs(rng, 1, 1, 9, 5, Tk=4)
    out, lse = (B.get(t) for t in ops.attention(B.put(q), B.put(k), B.put(v), causal=True))
    assert np.all(out[:, :, :5] == 0) and np.all(lse[:, :, :5] == -np.inf)
    r_out, r_lse, _ = ref_forward(q[:, :, 5:], k, v, True)
    np.testing.assert_allclose(out[:, :, 5:], r_out, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lse[:, :, 5:], r_lse, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("causal", [True, False])
def test_forward_nan_query_gives_nan_lse(backend, rng, causal):
    # A NaN query row is NaN through and through: its lse too, not the -inf of
    # a row that saw no keys; the other rows are untouched.
    B = backend
    q, k, v = inputs(rng, 1, 2, 70, 8)
    q[0, 1, 40, 3] = np.nan
    out, lse = (B.get(t) for t in ops.attention(B.put(q), B.put(k), B.put(v), causal=causal))
    assert np.all(np.isnan(out[0, 1, 40])) and np.isnan(lse[0, 1, 40])
    keep = np.ones(lse.shape, bool)
    keep[0, 1, 40] = False
    assert np.all(np.isfinite(lse[keep])) and np.all(np.isfinite(out[keep]))


def run_backward(B, dout, q, k, v, out, lse, causal):
    """attention_backward on B (out, lse as B holds them); (dq, dk, dv) as NumPy."""
    grads = ops.attention_backward(B.put(dout), B.put(q), B.put(k), B.put(v), out, lse, causal=causal)
    return [B.get(g) for g in grads]


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_backward(backend, rng, shape, causal):
    q, k, v = inputs(rng, *shape)
    dout = rng.standard_normal(q.shape).astype(np.float32)
    out, lse = ops.attention(backend.put(q), backend.put(k), backend.put(v), causal=causal)
    grads = run_backward(backend, dout, q, k, v, out, lse, causal)
    ref = ref_backward(dout, q, k, v, causal)
    naive = ref_backward(dout, q, k, v, causal, np.float32)
    for name, g, r, n in zip(("dq", "dk", "dv"), grads, ref, naive):
        assert g.dtype == np.float32
        assert_error_bound(g, r, n, name=name)


@pytest.mark.parametrize("causal", [True, False])
def test_backward_reference_matches_finite_differences(causal):
    rng = np.random.default_rng(7)
    q, k, v = (x.astype(np.float64) for x in inputs(rng, 1, 2, 6, 5))
    dout = rng.standard_normal(q.shape)
    dq, dk, dv = ref_backward(dout, q, k, v, causal)
    fns = {"q": (lambda x: ref_forward(x, k, v, causal)[0], q, dq),
           "k": (lambda x: ref_forward(q, x, v, causal)[0], k, dk),
           "v": (lambda x: ref_forward(q, k, x, causal)[0], v, dv)}
    for name, (f, x, analytic) in fns.items():
        numeric, idx = finite_difference(f, x, dout, rng=rng)
        np.testing.assert_allclose([analytic[i] for i in idx], numeric, rtol=1e-6, atol=1e-8,
                                   err_msg=name)


@pytest.mark.parametrize("causal", [True, False])
def test_backward_large_scores(backend, rng, causal):
    # Scores of several thousand: P = exp(s - lse) then hangs on a float32 lse
    # whose ulp is ~2e-4, an error no float32-lse backward (FlashAttention,
    # PyTorch's) avoids; the bound takes the larger of the naive error and
    # that of an exact backward fed the correctly rounded lse.
    B = backend
    q, k, v = inputs(rng, 1, 1, 70, 9, scale=30.0)
    dout = rng.standard_normal(q.shape).astype(np.float32)
    out, lse = ops.attention(B.put(q), B.put(k), B.put(v), causal=causal)
    assert np.all(np.isfinite(B.get(out)))
    grads = run_backward(B, dout, q, k, v, out, lse, causal)
    ref = ref_backward(dout, q, k, v, causal)
    naive = ref_backward(dout, q, k, v, causal, np.float32)
    lse32 = ref_forward(q, k, v, causal)[1].astype(np.float32)
    from_lse = ref_backward_from_lse(dout, q, k, v, causal, lse32)
    for name, g, r, n, f in zip(("dq", "dk", "dv"), grads, ref, naive, from_lse):
        worse = n if np.abs(n - r).max() > np.abs(f - r).max() else f
        assert_error_bound(g, r, worse, name=name)


@pytest.mark.parametrize("causal", [True, False])
def test_matches_torch(isa, rng, causal):
    torch = torch_or_skip()
    F = torch.nn.functional
    q, k, v = inputs(rng, 2, 3, 70, 24)
    dout = rng.standard_normal(q.shape).astype(np.float32)
    out, lse = ops.attention(q, k, v, causal=causal)
    dq, dk, dv = ops.attention_backward(dout, q, k, v, out, lse, causal=causal)
    tq, tk, tv = (torch.from_numpy(x.copy()).requires_grad_() for x in (q, k, v))
    t_out = F.scaled_dot_product_attention(tq, tk, tv, is_causal=causal)
    t_out.backward(torch.from_numpy(dout))
    for ours, theirs in ((out, t_out), (dq, tq.grad), (dk, tk.grad), (dv, tv.grad)):
        theirs = theirs.detach().numpy()
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5 * np.abs(theirs).max())
    # Fewer queries than keys: torch's is_causal aligns the mask top-left, ours
    # bottom-right (KV cache), so pass the mask explicitly.
    q2 = q[:, :, -9:].copy()
    mask = torch.from_numpy(np.tril(np.ones((9, 70), bool), 70 - 9))
    t_out2 = F.scaled_dot_product_attention(torch.from_numpy(q2), torch.from_numpy(k),
                                            torch.from_numpy(v), attn_mask=mask)
    np.testing.assert_allclose(ops.attention(q2, k, v, causal=True)[0], t_out2.numpy(),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("shape", [(1, 1, 300, 40), (3, 1, 130, 8), (1, 1, 200, 32)])
def test_threads_share_heads(isa, rng, shape, threads):
    # Fewer heads than threads (or not a multiple): the backward splits each
    # head's key blocks over the threads and sums per-thread dq partials.
    # head_dim 32 is whole vectors on every ISA (rows read in place); 40 and 8
    # are not on some (rows copied to padded scratch).
    with num_threads(threads):
        q, k, v = inputs(rng, *shape)
        dout = rng.standard_normal(q.shape).astype(np.float32)
        out, lse = check_forward(HOST, q, k, v, True)
        grads = ops.attention_backward(dout, q, k, v, out, lse, causal=True)
    ref = ref_backward(dout, q, k, v, True)
    naive = ref_backward(dout, q, k, v, True, np.float32)
    for name, g, r, n in zip(("dq", "dk", "dv"), grads, ref, naive):
        assert_error_bound(g, r, n, name=name)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", [(1, 1, 300, 40), (3, 4, 90, 16)])
def test_deterministic(isa, rng, shape, threads):
    # (1, 1, ...) makes the threads share one head's key blocks in the backward.
    with num_threads(threads):
        q, k, v = inputs(rng, *shape)
        dout = rng.standard_normal(q.shape).astype(np.float32)
        a = ops.attention(q, k, v, causal=True)
        b = ops.attention(q, k, v, causal=True)
        ga = ops.attention_backward(dout, q, k, v, *a, causal=True)
        gb = ops.attention_backward(dout, q, k, v, *a, causal=True)
    for x, y in zip(a + ga, b + gb):
        assert np.array_equal(x, y)


def test_backward_deterministic(backend, rng):
    B = backend
    q, k, v = (B.put(x) for x in inputs(rng, 2, 3, 130, 64))
    dout = B.put(rng.standard_normal((2, 3, 130, 64)).astype(np.float32))
    out, lse = ops.attention(q, k, v)
    a = [B.get(t) for t in ops.attention_backward(dout, q, k, v, out, lse)]
    b = [B.get(t) for t in ops.attention_backward(dout, q, k, v, out, lse)]
    for x, y in zip(a, b):
        assert np.array_equal(x, y)


def test_empty_sequence(backend):
    B = backend
    q = B.put(np.zeros((2, 3, 0, 8), np.float32))
    out, lse = ops.attention(q, q, q)
    assert B.get(out).shape == (2, 3, 0, 8) and B.get(lse).shape == (2, 3, 0)
    grads = ops.attention_backward(q, q, q, q, out, lse)
    assert all(B.get(g).shape == (2, 3, 0, 8) for g in grads)


def test_bad_inputs(rng):
    q, k, v = inputs(rng, 1, 2, 5, 4)
    with pytest.raises(TypeError, match="q"):
        ops.attention(q.astype(np.float64), k, v)
    with pytest.raises(TypeError, match="v"):
        ops.attention(q, k, v.astype(np.float16))
    with pytest.raises(ValueError, match="q"):
        ops.attention(q[0], k, v)
    with pytest.raises(ValueError, match="k"):
        ops.attention(q, k[..., :3].copy(), v[..., :3].copy())
    with pytest.raises(ValueError, match="v"):
        ops.attention(q, k, v[:, :, :4].copy())
    with pytest.raises(ValueError, match="q"):
        ops.attention(np.asfortranarray(q), k, v)
    with pytest.raises(ValueError, match="k"):
        ops.attention(q, k[:, :, :0].copy(), v[:, :, :0].copy())

    out, lse = ops.attention(q, k, v)
    dout = np.ones_like(out)
    with pytest.raises(ValueError, match="lse"):
        ops.attention_backward(dout, q, k, v, out, lse[:, :, :4].copy())
    with pytest.raises(ValueError, match="lse"):
        ops.attention_backward(dout, q, k, v, out, lse[..., None].copy())
    with pytest.raises(TypeError, match="lse"):
        ops.attention_backward(dout, q, k, v, out, lse.astype(np.float64))
    with pytest.raises(ValueError, match="dout"):
        ops.attention_backward(dout[:, :1].copy(), q, k, v, out, lse)
    with pytest.raises(ValueError, match="out"):
        ops.attention_backward(dout, q, k, v, out[:, :, ::2], lse)
    with pytest.raises(TypeError, match="dout"):
        ops.attention_backward(dout.tolist(), q, k, v, out, lse)
    k_long, v_long = inputs(rng, 1, 2, 7, 4)[1:]
    with pytest.raises(ValueError, match="k"):
        ops.attention_backward(dout, q, k_long, v_long, out, lse)


# ---- bfloat16 device operands (a GPU) ---------------------------------------------

@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("B,H,T,D", [(1, 1, 1, 32), (2, 3, 17, 64), (1, 2, 127, 128),
                                     (1, 1, 200, 96), (2, 2, 65, 40), (1, 1, 64, 16),
                                     (1, 2, 300, 64)])
def test_attention_bfloat16(gpu_backend, rng, B, H, T, D, causal):
    be = gpu_backend
    q, k, v = (bf16_round(x) for x in inputs(rng, B, H, T, D))
    dout = bf16_round(rng.standard_normal(q.shape))
    dq_, dk_, dv_ = (be.put(x, "bfloat16") for x in (q, k, v))
    out, lse = ops.attention(dq_, dk_, dv_, causal=causal)
    assert out.dtype == "bfloat16" and lse.dtype == "float32"
    r_out, r_lse, _ = ref_forward(q, k, v, causal)
    n_out, n_dq, n_dk, n_dv = naive_bf16_attention(q, k, v, dout, causal)
    assert_error_bound(be.get(out), r_out, n_out, name="out")
    assert_error_bound(be.get(lse), r_lse, ref_forward(q, k, v, causal, np.float32)[1], name="lse")
    grads = ops.attention_backward(be.put(dout, "bfloat16"), dq_, dk_, dv_, out, lse, causal=causal)
    assert all(g.dtype == "bfloat16" for g in grads)
    ref = ref_backward(dout, q, k, v, causal)
    for name, g, r, n in zip(("dq", "dk", "dv"), grads, ref, (n_dq, n_dk, n_dv)):
        if not np.any(r):  # T = 1: dq, dk vanish; ours are float32 rounding residues
            assert np.abs(be.get(g)).max() <= 1e-5 * np.abs(dout).max() * np.abs(q).max(), name
            continue
        assert_error_bound(be.get(g), r, n, name=name)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("B,H,T,Tk,D", [(1, 2, 5, 77, 64), (1, 1, 200, 129, 64), (2, 1, 129, 300, 128),
                                         (1, 1, 1, 1, 8), (1, 1, 130, 130, 33), (1, 2, 257, 256, 72)])
def test_attention_bfloat16_lengths(gpu_backend, rng, B, H, T, Tk, D, causal):
    """Query and key lengths that differ (causal rows that see no key get 0 and
    lse -inf), several 128-query tiles, and rows of D = 33 that are not 16-byte
    multiples (plain loads and stores)."""
    be = gpu_backend
    q, k, v = (bf16_round(x) for x in inputs(rng, B, H, T, D, Tk))
    out, lse = (be.get(t) for t in ops.attention(*(be.put(x, "bfloat16") for x in (q, k, v)),
                                                 causal=causal))
    with np.errstate(invalid="ignore"):  # the references' rows without keys are NaN
        r_out, r_lse, _ = ref_forward(q, k, v, causal)
        n_out = naive_bf16_attention(q, k, v, np.zeros_like(q), causal)[0]
        n_lse = ref_forward(q, k, v, causal, np.float32)[1]
    seen = np.isfinite(r_lse)
    assert np.all(out[~seen] == 0) and np.all(lse[~seen] == -np.inf)
    assert_error_bound(out[seen], r_out[seen], n_out[seen], name="out")
    assert_error_bound(lse[seen], r_lse[seen], n_lse[seen], name="lse")


@pytest.mark.parametrize("D", [8, 64, 72, 128])
@pytest.mark.parametrize("causal", [True, False])
def test_small_attention(backend, rng, D, causal):
    """Every attention kernel (with and without dropout; bfloat16 where the backend has
    it) once at a small size (compute-sanitizer runs the test_small_* set)."""
    B = backend
    q, k, v = inputs(rng, 1, 2, 70, D)
    dout = rng.standard_normal(q.shape).astype(np.float32)
    out, lse = ops.attention(B.put(q), B.put(k), B.put(v), causal=causal)
    np.testing.assert_allclose(B.get(out), ref_forward(q, k, v, causal)[0], rtol=1e-4, atol=1e-5)
    ops.attention_backward(B.put(dout), B.put(q), B.put(k), B.put(v), out, lse, causal=causal)
    drop = dict(dropout=0.1, dropout_seed=3)  # the kernels' dropout instances
    out, lse = ops.attention(B.put(q), B.put(k), B.put(v), causal=causal, **drop)
    ops.attention_backward(B.put(dout), B.put(q), B.put(k), B.put(v), out, lse, causal=causal, **drop)
    if B.supports("bfloat16"):
        qb, kb, vb = (B.put(z, "bfloat16") for z in (q, k, v))
        out, lse = ops.attention(qb, kb, vb, causal=causal)
        np.testing.assert_allclose(B.get(out), ref_forward(q, k, v, causal)[0], rtol=5e-2,
                                   atol=5e-2)
        ops.attention_backward(B.put(dout, "bfloat16"), qb, kb, vb, out, lse, causal=causal)
        out, lse = ops.attention(qb, kb, vb, causal=causal, **drop)
        ops.attention_backward(B.put(dout, "bfloat16"), qb, kb, vb, out, lse, causal=causal, **drop)

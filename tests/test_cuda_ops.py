"""Every CUDA op against the float64 references the CPU tests use (imported from
them), at awkward sizes, in float32 and, where the op takes it, bfloat16; CUDA
against CPU; bad inputs, including host and device arrays mixed in one call.

Skipped without a GPU. The error bound is the CPU tests' (conftest.
assert_error_bound: at most a few times the error of a naive computation in
the same precision); for bfloat16 the naive yardstick rounds where a bfloat16
kernel must (inputs, probabilities, outputs).

The test_small_* functions run every kernel once at tiny sizes, for the
compute-sanitizer runs:
    FASTLM_CUDA_SYNC=1 compute-sanitizer --tool memcheck python -m pytest tests/test_cuda_ops.py -k small
    FASTLM_CUDA_SYNC=1 compute-sanitizer --tool racecheck python -m pytest tests/test_cuda_ops.py -k small

FASTLM_CUDA_TESTS_ON_CPU=1 runs the float32 tests with NumPy arrays in place of
device arrays (the CPU kernels then answer): a check of the tests themselves
on a machine without a GPU, not of the CUDA kernels.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import fastlm
from fastlm import _C, ops
from conftest import assert_error_bound
from test_adamw import HP as ADAM_HP, adamw_ref
from test_attention import SHAPES as ATT_SHAPES, inputs as att_inputs, ref_backward, \
    ref_backward_from_lse, ref_forward
from test_cross_entropy import ce_ref
from test_dropout import attention_mask, ref_attention, ref_attention_backward
from test_gelu import gelu_erf_grad_ref, gelu_erf_ref, gelu_grad_ref, gelu_ref
from test_gru_cell import gru_ref, gru_ref_backward, make as gru_make
from test_layernorm import ln_backward_ref, ln_ref, make as ln_make
from test_lstm_cell import lstm_backward_ref, lstm_ref, make as lstm_make, upstream
from test_matmul import SIZES as MM_SIZES, operands
from test_softmax import softmax_backward_ref, softmax_ref

GPU = fastlm.cuda_available()
ON_CPU = not GPU and os.environ.get("FASTLM_CUDA_TESTS_ON_CPU") == "1"

pytestmark = pytest.mark.skipif(not (GPU or ON_CPU),
                                reason="needs a CUDA GPU (fastlm.cuda_available() is False)")
gpu_only = pytest.mark.skipif(not GPU, reason="needs a CUDA GPU")


def dev(x, dtype=None):
    """x on the GPU (as given on the CPU in a FASTLM_CUDA_TESTS_ON_CPU run)."""
    if ON_CPU:
        assert dtype in (None, "float32", "int64", "int32")
        return np.array(x, order="C", copy=True)  # a copy, as to_device makes
    return fastlm.to_device(x, dtype)


def host(y):
    """A device output as NumPy; checks that an op returned a DeviceArray."""
    if ON_CPU:
        return np.asarray(y)
    assert isinstance(y, fastlm.DeviceArray), f"expected a DeviceArray, got {type(y).__name__}"
    return y.numpy()


def bf16_round(x):
    """x rounded to bfloat16 (nearest even), as float32."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    return u.astype(np.uint32).view(np.float32)


# ---- matmul -------------------------------------------------------------------

MM_GPU_SIZES = MM_SIZES + [(128, 256, 64), (130, 260, 68), (257, 129, 300), (64, 128, 16)]


def mm_refs(a, b, bias, trans_a, trans_b):
    opa, opb = (a.T if trans_a else a), (b.T if trans_b else b)
    ref = opa.astype(np.float64) @ opb.astype(np.float64) + bias
    naive = np.zeros(ref.shape, np.float32)
    for p in range(opa.shape[1]):
        naive += np.outer(opa[:, p], opb[p, :]).astype(np.float32)
    return opa, opb, ref, naive + bias


@pytest.mark.parametrize("m,n,k", MM_GPU_SIZES)
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_matmul_float32(rng, m, n, k, trans_a, trans_b):
    a, b = operands(rng, m, n, k, trans_a, trans_b)
    bias = rng.standard_normal(n).astype(np.float32)
    _, _, ref, naive = mm_refs(a, b, bias, trans_a, trans_b)
    c = host(ops.matmul(dev(a), dev(b), trans_a=trans_a, trans_b=trans_b, bias=dev(bias)))
    assert c.dtype == np.float32 and c.shape == (m, n)
    assert_error_bound(c, ref, naive, name=f"{m}x{n}x{k}")
    c0 = host(ops.matmul(dev(a), dev(b), trans_a=trans_a, trans_b=trans_b))
    assert_error_bound(c0, ref - bias, naive - bias, name="no bias")
    # CUDA and CPU agree to float32 rounding.
    cpu = ops.matmul(a, b, trans_a=trans_a, trans_b=trans_b, bias=bias)
    np.testing.assert_allclose(c, cpu, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(cpu).max(initial=0)))


@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (17, 33, 3), (127, 31, 1000), (130, 260, 68),
                                   (256, 256, 256), (64, 64, 0), (1096, 2000, 520),
                                   (3336, 1032, 520)])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_matmul_tf32(rng, m, n, k, trans_a, trans_b):
    a, b = operands(rng, m, n, k, trans_a, trans_b)
    bias = rng.standard_normal(n).astype(np.float32)
    opa, opb, ref, _ = mm_refs(a, b, bias, trans_a, trans_b)
    c = host(ops.matmul(dev(a), dev(b), trans_a=trans_a, trans_b=trans_b, bias=dev(bias),
                        precision="tf32"))
    # TF32 keeps 10 mantissa bits: each product is off by < 2^-10 relative.
    bound = 2.0 ** -9 * (np.abs(opa).astype(np.float64) @ np.abs(opb)) + 1e-6 * np.abs(ref) + 1e-6
    assert np.all(np.abs(c - ref) <= bound), np.max(np.abs(c - ref) - bound)


@gpu_only
@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (17, 33, 3), (127, 31, 1000), (128, 256, 64),
                                   (130, 260, 72), (512, 384, 1024), (64, 64, 0)])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_matmul_bfloat16(rng, m, n, k, trans_a, trans_b):
    a, b = (bf16_round(x) for x in operands(rng, m, n, k, trans_a, trans_b))
    bias = bf16_round(rng.standard_normal(n))
    opa, opb, ref, _ = mm_refs(a, b, bias, trans_a, trans_b)
    c = ops.matmul(dev(a, "bfloat16"), dev(b, "bfloat16"), trans_a=trans_a, trans_b=trans_b,
                   bias=dev(bias, "bfloat16"))
    assert c.dtype == "bfloat16" and c.shape == (m, n)
    # Exact bfloat16 products summed in float32, then rounded once to bfloat16.
    bound = 2.0 ** -8 * np.abs(ref) + 1e-5 * (np.abs(opa).astype(np.float64) @ np.abs(opb)) + 1e-30
    got = host(c)
    assert np.all(np.abs(got - ref) <= bound), np.max(np.abs(got - ref) - bound)


def _hopper_gemm_built() -> bool:
    if not GPU or _C.cuda_compute_capability() != "9.0":
        return False
    return any(a.startswith("90a") for a in fastlm.build_info()["cuda_archs"])


@pytest.mark.skipif(not _hopper_gemm_built(), reason="needs an sm_90 GPU and a build with 90a code")
@pytest.mark.parametrize("path", ["wgmma"])
def test_matmul_bfloat16_gemm_path(path):
    """The bfloat16 tests again with another GEMM kernel asked for (FASTLM_CUDA_GEMM is read
    once per process, hence a child pytest): matmul.cu's kernel is the default, "wgmma"
    asks for the Hopper kernel. The opt-in "wgmma-next" kernel is tested by running this file
    with FASTLM_CUDA_GEMM=wgmma-next -k matmul (bench/gpu_check.sh's tests-wgmma-next)."""
    env = dict(os.environ, FASTLM_CUDA_GEMM=path)
    r = subprocess.run([sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider",
                        "-k", "test_matmul_bfloat16 and not gemm_path and not many_tiles or "
                              "test_small_matmul"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and "skipped" not in r.stdout.splitlines()[-1]


def strided_gemm(rng, m, n, k, trans_a, trans_b, c_dtype, accumulate, layout):
    """One _C._cuda_gemm call on matrices stored with row strides and base offsets (in
    elements) inside larger arrays: layout "tight" (ld = columns, offset 0), "padded" (ld
    rounded up past the next multiple of 8, offset 8: 16-byte-aligned rows, as TMA needs)
    or "misaligned" (ld = columns + 1, offset 1: what TMA refuses, so another kernel must
    answer). The padding of a and b is NaN, so reading it shows; c's padding must come back
    untouched, and a c that is not accumulated into starts as NaN. Returns (got, ref, scale):
    c as float64 and its float64 reference from the operands as stored, and the sum of the
    magnitudes of each element's terms (for error bounds)."""
    def store(rows, cols, values):
        ld = {"tight": max(cols, 1), "padded": (cols + 15) // 8 * 8,
              "misaligned": cols + 1}[layout]
        off = {"tight": 0, "padded": 8, "misaligned": 1}[layout]
        buf = np.full(off + rows * ld + 5, np.nan, np.float32)
        view = buf[off:off + rows * ld].reshape(rows, ld)[:, :cols]
        view[...] = values
        return buf, view, ld, off

    a, b = (bf16_round(x) for x in operands(rng, m, n, k, trans_a, trans_b))
    bias = rng.standard_normal(n).astype(np.float32)
    c0 = rng.standard_normal((m, n)).astype(np.float32) if accumulate else \
        np.full((m, n), np.nan, np.float32)
    if c_dtype == "bfloat16":
        bias, c0 = bf16_round(bias), bf16_round(c0)
    abuf, a, lda, oa = store(*a.shape, a)
    bbuf, b, ldb, ob = store(*b.shape, b)
    cbuf, c0, ldc, oc = store(m, n, c0)
    pad = np.ones(cbuf.shape, bool)
    pad[oc:oc + m * ldc].reshape(m, ldc)[:, :n] = False
    cbuf[pad] = 7.0  # c's padding: must stay 7
    dc = dev(cbuf, c_dtype)
    _C._cuda_gemm(dev(abuf, "bfloat16"), dev(bbuf, "bfloat16"), dc, dev(bias, c_dtype), m, n, k,
                  lda, ldb, ldc, trans_a, trans_b, accumulate, False, oa, ob, oc)
    out = host(dc).astype(np.float64)
    assert np.all(out[pad] == 7.0), "c's padding was written"
    got = out[oc:oc + m * ldc].reshape(m, ldc)[:, :n]
    opa, opb = (a.T if trans_a else a).astype(np.float64), (b.T if trans_b else b).astype(np.float64)
    ref = opa @ opb + bias
    scale = np.abs(opa) @ np.abs(opb) + np.abs(bias)
    if accumulate:
        ref, scale = ref + c0, scale + np.abs(c0)
    return got, ref, scale


@gpu_only
@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (17, 33, 3), (64, 128, 16), (130, 260, 72),
                                   (257, 129, 300), (127, 31, 1000)])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("c_dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("layout", ["tight", "padded", "misaligned"])
def test_matmul_bfloat16_strided(rng, m, n, k, trans_a, trans_b, c_dtype, accumulate, layout):
    check_strided(rng, m, n, k, trans_a, trans_b, c_dtype, accumulate, layout)


# Shapes for the persistent Hopper kernel (on 132 SMs): 243 tiles of 128 x 128 (it keeps
# those here), 209 of 128 x 256, and 72 of 128 x 256 (one round); k blocks past its stages.
MANY_TILES = [(3336, 1032, 520), (2312, 2568, 264), (1096, 2000, 520)]


@gpu_only
@pytest.mark.parametrize("m,n,k", MANY_TILES)
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("c_dtype,layout,accumulate", [("float32", "tight", False),
                                                       ("bfloat16", "padded", True)])
def test_matmul_bfloat16_many_tiles(rng, m, n, k, trans_a, trans_b, c_dtype, layout, accumulate):
    """More tiles than an H200 has SMs, so a persistent kernel's blocks take two or more, and
    more k blocks than stages; every row 16-byte aligned, so the TMA kernels answer."""
    check_strided(rng, m, n, k, trans_a, trans_b, c_dtype, accumulate, layout)


def check_strided(rng, m, n, k, trans_a, trans_b, c_dtype, accumulate, layout):
    got, ref, scale = strided_gemm(rng, m, n, k, trans_a, trans_b, c_dtype, accumulate, layout)
    # Exact bfloat16 products summed in float32 (any order: at most (k + 2) roundings of
    # 2^-24 relative to the sum of magnitudes, doubled for safety), then, for a bfloat16 c,
    # rounded once. A float32 c must be far closer than a bfloat16 one could be.
    bound = 2.0 * (k + 2) * 2.0 ** -24 * scale + 1e-30
    if c_dtype == "bfloat16":
        bound += 2.0 ** -8 * np.abs(ref)
    err = np.abs(got - ref)
    assert np.all(err <= bound), (np.max(err - bound), f"{m}x{n}x{k}")


def test_matmul_deterministic(rng):
    a, b = operands(rng, 300, 200, 700, False, True)
    da, db = dev(a), dev(b)
    for precision in ("highest", "tf32"):
        x = host(ops.matmul(da, db, trans_b=True, precision=precision))
        y = host(ops.matmul(da, db, trans_b=True, precision=precision))
        assert np.array_equal(x, y)


# ---- softmax, layernorm, gelu --------------------------------------------------

SIZES = (1, 3, 17, 31, 33, 127, 1000)


@pytest.mark.parametrize("cols", SIZES + (50304,))
def test_softmax(rng, cols):
    for rows in SIZES:
        if rows * cols > 300_000:
            continue
        x = rng.standard_normal((rows, cols), dtype=np.float32) * 3
        y = host(ops.softmax(dev(x)))
        assert_error_bound(y, softmax_ref(x), softmax_ref(x, np.float32), name="y")
        dy = rng.standard_normal((rows, cols), dtype=np.float32)
        dx = host(ops.softmax_backward(dev(dy), dev(y)))
        assert_error_bound(dx, softmax_backward_ref(dy, y), softmax_backward_ref(dy, y, np.float32),
                           name="dx")
        np.testing.assert_allclose(y, ops.softmax(x), rtol=1e-5, atol=1e-7)


def test_softmax_special_rows(rng):
    x = (rng.standard_normal((17, 127)) * 1e4).astype(np.float32)
    x[2] += 1e30
    x[3] = 8e4
    x[4, ::3] = -np.inf
    x[5] = -np.inf
    x[5, 1] = 2.0
    x[6] = -np.inf
    y = host(ops.softmax(dev(x)))
    np.testing.assert_allclose(y[3], 1 / 127, rtol=1e-6)
    assert np.all(y[4, ::3] == 0) and y[5, 1] == 1 and np.all(np.isnan(y[6]))
    keep = np.arange(17) != 6
    np.testing.assert_allclose(y[keep], softmax_ref(x[keep]), rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("rows", [1, 3, 17, 127, 1000])
@pytest.mark.parametrize("cols", SIZES + (768, 6001, 8192))
def test_layernorm(rng, rows, cols):
    if rows * cols > 2_000_000:
        pytest.skip("large enough elsewhere")
    x, w, b, dy = ln_make(rng, rows, cols)
    y, mean, rstd = ops.layernorm(dev(x), dev(w), dev(b), 1e-5)
    naive = list(ln_ref(x, w, b, dtype=np.float32))
    # NumPy's float32 mean sums pairwise; a plain float32 loop is the fairer
    # yardstick for a mean near 0 over thousands of columns.
    naive[1] = np.cumsum(x, axis=-1, dtype=np.float32)[..., -1] / np.float32(cols)
    for name, ours, r, n in zip(("y", "mean", "rstd"), (y, mean, rstd), ln_ref(x, w, b), naive):
        assert_error_bound(host(ours), r, n, name=name)
    grads = ops.layernorm_backward(dev(dy), dev(x), dev(w), mean, rstd)
    for name, ours, r, n in zip(("dx", "dweight", "dbias"), grads, ln_backward_ref(dy, x, w),
                                ln_backward_ref(dy, x, w, dtype=np.float32)):
        assert_error_bound(host(ours), r, n, name=name)


@pytest.mark.parametrize("offset", [1e3, -3e4])
def test_layernorm_large_offset(rng, offset):
    x, w, b, dy = ln_make(rng, 17, 1000, offset)
    y, mean, rstd = ops.layernorm(dev(x), dev(w), dev(b))
    assert_error_bound(host(y), ln_ref(x, w, b)[0], ln_ref(x, w, b, dtype=np.float32)[0])
    dx = ops.layernorm_backward(dev(dy), dev(x), dev(w), mean, rstd)[0]
    assert_error_bound(host(dx), ln_backward_ref(dy, x, w)[0],
                       ln_backward_ref(dy, x, w, dtype=np.float32)[0])


def test_layernorm_constant_rows_and_leading_dims(rng):
    x = np.full((3, 31), 7.25, np.float32)
    w, b = np.ones(31, np.float32), np.arange(31, dtype=np.float32)
    y, mean, rstd = (host(t) for t in ops.layernorm(dev(x), dev(w), dev(b), 1e-5))
    np.testing.assert_array_equal(mean, 7.25)
    np.testing.assert_array_equal(y, np.broadcast_to(b, y.shape))
    x = rng.standard_normal((2, 3, 17)).astype(np.float32)
    w, b = np.ones(17, np.float32), np.zeros(17, np.float32)
    y, mean, rstd = ops.layernorm(dev(x), dev(w), dev(b))
    assert host(y).shape == x.shape and host(mean).shape == (2, 3)


def test_layernorm_deterministic(rng):
    x, w, b, dy = ln_make(rng, 1000, 768)
    y, mean, rstd = ops.layernorm(dev(x), dev(w), dev(b))
    a = [host(t) for t in ops.layernorm_backward(dev(dy), dev(x), dev(w), mean, rstd)]
    c = [host(t) for t in ops.layernorm_backward(dev(dy), dev(x), dev(w), mean, rstd)]
    for u, v in zip(a, c):
        assert np.array_equal(u, v)


@pytest.mark.parametrize("n", [1, 3, 17, 31, 33, 127, 1000, 100_003])
def test_gelu(rng, n):
    x = (rng.standard_normal(n) * 3).astype(np.float32)
    dy = rng.standard_normal(n).astype(np.float32)
    y = host(ops.gelu(dev(x)))
    dx = host(ops.gelu_backward(dev(dy), dev(x)))
    assert_error_bound(y, gelu_ref(x), gelu_ref(x, np.float32), name="y")
    assert_error_bound(dx, gelu_grad_ref(dy, x), gelu_grad_ref(dy, x, np.float32), name="dx")
    np.testing.assert_allclose(y, ops.gelu(x), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("n", [1, 3, 17, 127, 100_003])
def test_gelu_erf(rng, n):
    x = (rng.standard_normal(n) * 3).astype(np.float32)
    dy = rng.standard_normal(n).astype(np.float32)
    y = host(ops.gelu(dev(x), approximate="none"))
    dx = host(ops.gelu_backward(dev(dy), dev(x), approximate="none"))
    assert_error_bound(y, gelu_erf_ref(x), gelu_erf_ref(x, np.float32), name="y")
    assert_error_bound(dx, gelu_erf_grad_ref(dy, x), gelu_erf_grad_ref(dy, x, np.float32),
                       name="dx")
    np.testing.assert_allclose(y, ops.gelu(x, approximate="none"), rtol=1e-5, atol=1e-7)


def test_gelu_erf_special_values():
    x = np.array([0.0, -0.0, np.inf, np.nan, -np.inf, -1e4, -14.5, 14.5, 1e4], np.float32)
    y = host(ops.gelu(dev(x), approximate="none"))
    dx = host(ops.gelu_backward(dev(np.ones_like(x)), dev(x), approximate="none"))
    assert y[0] == 0 and y[1] == 0 and y[2] == np.inf and np.isnan(y[3]) and y[4] == 0
    assert dx[0] == 0.5 and dx[1] == 0.5 and dx[2] == 1 and np.isnan(dx[3]) and dx[4] == 0
    np.testing.assert_array_equal(y[5:7], 0)
    np.testing.assert_array_equal(y[7:], x[7:])
    np.testing.assert_array_equal(dx[7:], 1)


def test_gelu_special_values():
    x = np.concatenate([[0.0, -0.0, np.inf, np.nan, -np.inf], np.linspace(-20, 20, 4001),
                        [-1e4, -300, 300, 1e4]]).astype(np.float32)
    y = host(ops.gelu(dev(x)))
    dx = host(ops.gelu_backward(dev(np.ones_like(x)), dev(x)))
    assert y[0] == 0 and y[1] == 0 and y[2] == np.inf and np.isnan(y[3]) and y[4] == 0
    assert dx[0] == 0.5 and dx[1] == 0.5 and dx[2] == 1 and np.isnan(dx[3]) and dx[4] == 0
    rest = slice(5, None)
    assert np.all(np.isfinite(y[rest])) and np.all(np.isfinite(dx[rest]))
    xr = x[rest]
    assert_error_bound(y[rest], gelu_ref(xr), gelu_ref(xr, np.float32), name="y")
    pos = xr >= 10
    np.testing.assert_array_equal(y[rest][pos], xr[pos])
    np.testing.assert_array_equal(dx[rest][pos], 1)


# ---- attention ---------------------------------------------------------------

ATT_GPU_SHAPES = ATT_SHAPES + [(1, 2, 70, 128), (2, 1, 65, 100), (1, 1, 300, 64), (2, 2, 33, 32)]


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("shape", ATT_GPU_SHAPES)
def test_attention_float32(rng, shape, causal):
    q, k, v = att_inputs(rng, *shape)
    out, lse = ops.attention(dev(q), dev(k), dev(v), causal=causal)
    r_out, r_lse, _ = ref_forward(q, k, v, causal)
    n_out, n_lse, _ = ref_forward(q, k, v, causal, np.float32)
    assert_error_bound(host(out), r_out, n_out, name="out")
    assert_error_bound(host(lse), r_lse, n_lse, name="lse")
    cpu_out, cpu_lse = ops.attention(q, k, v, causal=causal)
    np.testing.assert_allclose(host(out), cpu_out, rtol=1e-4, atol=1e-5)
    dout = rng.standard_normal(q.shape).astype(np.float32)
    grads = ops.attention_backward(dev(dout), dev(q), dev(k), dev(v), out, lse, causal=causal)
    ref = ref_backward(dout, q, k, v, causal)
    naive = ref_backward(dout, q, k, v, causal, np.float32)
    for name, g, r, n in zip(("dq", "dk", "dv"), grads, ref, naive):
        assert_error_bound(host(g), r, n, name=name)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("B,H,T,Tk,D", [(2, 2, 5, 77, 13), (1, 3, 1, 100, 64),
                                         (1, 1, 70, 130, 33), (1, 1, 1, 1, 7), (1, 2, 40, 300, 128)])
def test_attention_fewer_queries(rng, B, H, T, Tk, D, causal):
    q, k, v = att_inputs(rng, B, H, T, D, Tk)
    out, lse = ops.attention(dev(q), dev(k), dev(v), causal=causal)
    r_out, r_lse, _ = ref_forward(q, k, v, causal)
    n_out, n_lse, _ = ref_forward(q, k, v, causal, np.float32)
    assert_error_bound(host(out), r_out, n_out, name="out")
    assert_error_bound(host(lse), r_lse, n_lse, name="lse")


def test_attention_rows_without_keys(rng):
    q, k, v = att_inputs(rng, 1, 1, 9, 5, Tk=4)
    out, lse = (host(t) for t in ops.attention(dev(q), dev(k), dev(v), causal=True))
    assert np.all(out[:, :, :5] == 0) and np.all(lse[:, :, :5] == -np.inf)
    r_out, r_lse, _ = ref_forward(q[:, :, 5:], k, v, True)
    np.testing.assert_allclose(out[:, :, 5:], r_out, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("causal", [True, False])
def test_attention_large_scores(rng, causal):
    q, k, v = att_inputs(rng, 1, 1, 70, 9, scale=30.0)
    dout = rng.standard_normal(q.shape).astype(np.float32)
    out, lse = ops.attention(dev(q), dev(k), dev(v), causal=causal)
    assert np.all(np.isfinite(host(out)))
    grads = ops.attention_backward(dev(dout), dev(q), dev(k), dev(v), out, lse, causal=causal)
    ref = ref_backward(dout, q, k, v, causal)
    naive = ref_backward(dout, q, k, v, causal, np.float32)
    lse32 = ref_forward(q, k, v, causal)[1].astype(np.float32)
    from_lse = ref_backward_from_lse(dout, q, k, v, causal, lse32)
    for name, g, r, n, f in zip(("dq", "dk", "dv"), grads, ref, naive, from_lse):
        worse = n if np.abs(n - r).max() > np.abs(f - r).max() else f
        assert_error_bound(host(g), r, worse, name=name)


def test_attention_deterministic(rng):
    q, k, v = (dev(x) for x in att_inputs(rng, 2, 3, 130, 64))
    dout = dev(rng.standard_normal((2, 3, 130, 64)).astype(np.float32))
    out, lse = ops.attention(q, k, v)
    a = [host(t) for t in ops.attention_backward(dout, q, k, v, out, lse)]
    b = [host(t) for t in ops.attention_backward(dout, q, k, v, out, lse)]
    for x, y in zip(a, b):
        assert np.array_equal(x, y)


def naive_bf16_attention(q, k, v, dout, causal, z=None):
    """Attention in float32 from bfloat16 inputs, rounding to bfloat16 where a
    bfloat16 flash kernel must: probabilities and dS before their products,
    and every output. The yardstick of the bfloat16 error bound. z: dropout
    factors (test_dropout.attention_mask), applied to P and to dP."""
    q, k, v, dout = (np.asarray(x, np.float32) for x in (q, k, v, dout))
    out, _, p = ref_forward(q, k, v, causal, np.float32)
    p = p.astype(np.float32)
    z = np.float32(1) if z is None else np.asarray(z, np.float32)
    scale = np.float32(1 / np.sqrt(q.shape[3]))
    out_b = bf16_round(bf16_round(p * z) @ v)
    dv = bf16_round(np.swapaxes(bf16_round(p * z), -1, -2) @ dout)
    dp = dout @ np.swapaxes(v, -1, -2) * z
    delta = np.sum(dout * out_b, -1, keepdims=True)
    ds = bf16_round(p * (dp - delta))
    dq = bf16_round(ds @ k * scale)
    dk = bf16_round(np.swapaxes(ds, -1, -2) @ q * scale)
    return out_b, dq, dk, dv


@gpu_only
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("B,H,T,D", [(1, 1, 1, 32), (2, 3, 17, 64), (1, 2, 127, 128),
                                     (1, 1, 200, 96), (2, 2, 65, 40), (1, 1, 64, 16),
                                     (1, 2, 300, 64)])
def test_attention_bfloat16(rng, B, H, T, D, causal):
    q, k, v = (bf16_round(x) for x in att_inputs(rng, B, H, T, D))
    dout = bf16_round(rng.standard_normal(q.shape))
    dq_, dk_, dv_ = (dev(x, "bfloat16") for x in (q, k, v))
    out, lse = ops.attention(dq_, dk_, dv_, causal=causal)
    assert out.dtype == "bfloat16" and lse.dtype == "float32"
    r_out, r_lse, _ = ref_forward(q, k, v, causal)
    n_out, n_dq, n_dk, n_dv = naive_bf16_attention(q, k, v, dout, causal)
    assert_error_bound(host(out), r_out, n_out, name="out")
    assert_error_bound(host(lse), r_lse, ref_forward(q, k, v, causal, np.float32)[1], name="lse")
    grads = ops.attention_backward(dev(dout, "bfloat16"), dq_, dk_, dv_, out, lse, causal=causal)
    assert all(g.dtype == "bfloat16" for g in grads)
    ref = ref_backward(dout, q, k, v, causal)
    for name, g, r, n in zip(("dq", "dk", "dv"), grads, ref, (n_dq, n_dk, n_dv)):
        if not np.any(r):  # T = 1: dq, dk vanish; ours are float32 rounding residues
            assert np.abs(host(g)).max() <= 1e-5 * np.abs(dout).max() * np.abs(q).max(), name
            continue
        assert_error_bound(host(g), r, n, name=name)


@gpu_only
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("B,H,T,Tk,D", [(1, 2, 5, 77, 64), (1, 1, 200, 129, 64), (2, 1, 129, 300, 128),
                                         (1, 1, 1, 1, 8), (1, 1, 130, 130, 33), (1, 2, 257, 256, 72)])
def test_attention_bfloat16_lengths(rng, B, H, T, Tk, D, causal):
    """Query and key lengths that differ (causal rows that see no key get 0 and
    lse -inf), several 128-query tiles, and rows of D = 33 that are not 16-byte
    multiples (plain loads and stores)."""
    q, k, v = (bf16_round(x) for x in att_inputs(rng, B, H, T, D, Tk))
    out, lse = (host(t) for t in ops.attention(*(dev(x, "bfloat16") for x in (q, k, v)),
                                               causal=causal))
    with np.errstate(invalid="ignore"):  # the references' rows without keys are NaN
        r_out, r_lse, _ = ref_forward(q, k, v, causal)
        n_out = naive_bf16_attention(q, k, v, np.zeros_like(q), causal)[0]
        n_lse = ref_forward(q, k, v, causal, np.float32)[1]
    seen = np.isfinite(r_lse)
    assert np.all(out[~seen] == 0) and np.all(lse[~seen] == -np.inf)
    assert_error_bound(out[seen], r_out[seen], n_out[seen], name="out")
    assert_error_bound(lse[seen], r_lse[seen], n_lse[seen], name="lse")


@pytest.mark.parametrize("p", [0.1, 0.5])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("B,H,T,D", [(1, 1, 1, 1), (2, 3, 17, 31), (1, 2, 70, 64), (1, 1, 130, 128)])
def test_attention_dropout_float32(rng, B, H, T, D, causal, p):
    """Probability dropout against float64 references that apply the CPU's mask
    (same key per (batch, head), index i * T + j), forward and backward."""
    q, k, v = att_inputs(rng, B, H, T, D)
    seed = 2**63 + 12345 + T
    z = attention_mask(B, H, T, T, p, seed)
    out, lse = ops.attention(dev(q), dev(k), dev(v), causal=causal, dropout=p, dropout_seed=seed)
    r_out, r_lse, _ = ref_attention(q, k, v, z, causal)
    n_out, n_lse, _ = ref_attention(q, k, v, z, causal, np.float32)
    assert_error_bound(host(out), r_out, n_out, name="out")
    assert_error_bound(host(lse), r_lse, n_lse, name="lse")
    dout = rng.standard_normal(q.shape).astype(np.float32)
    grads = ops.attention_backward(dev(dout), dev(q), dev(k), dev(v), out, lse, causal=causal,
                                   dropout=p, dropout_seed=seed)
    refs = ref_attention_backward(dout, q, k, v, z, causal)
    naive = ref_attention_backward(dout, q, k, v, z, causal, np.float32)
    for name, g, r, n in zip(("dq", "dk", "dv"), grads, refs, naive):
        if T == 1 and name != "dv":  # one key: dq, dk are 0 but for float32 residues
            assert np.abs(host(g)).max() < 1e-6 * np.abs(refs[2]).max() + 1e-30, name
            continue
        assert_error_bound(host(g), r, n, name=name)


@pytest.mark.parametrize("causal", [True, False])
def test_attention_dropout_fewer_queries_and_zero_p(rng, causal):
    q, k, v = att_inputs(rng, 2, 2, 40, 24, Tk=100)
    z = attention_mask(2, 2, 40, 100, 0.3, 99)
    out, _ = ops.attention(dev(q), dev(k), dev(v), causal=causal, dropout=0.3, dropout_seed=99)
    assert_error_bound(host(out), ref_attention(q, k, v, z, causal)[0],
                       ref_attention(q, k, v, z, causal, np.float32)[0], name="out")
    a = ops.attention(dev(q), dev(k), dev(v), causal=causal)
    b = ops.attention(dev(q), dev(k), dev(v), causal=causal, dropout=0.0, dropout_seed=5)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(host(x), host(y))


@gpu_only
@pytest.mark.parametrize("p", [0.2])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("B,H,T,D", [(1, 1, 1, 32), (2, 3, 17, 64), (1, 2, 127, 128), (1, 1, 200, 96),
                                     (1, 1, 130, 33), (1, 2, 300, 64)])
def test_attention_dropout_bfloat16(rng, B, H, T, D, causal, p):
    q, k, v = (bf16_round(x) for x in att_inputs(rng, B, H, T, D))
    dout = bf16_round(rng.standard_normal(q.shape))
    seed = 7 + T
    z = attention_mask(B, H, T, T, p, seed)
    dq_, dk_, dv_ = (dev(x, "bfloat16") for x in (q, k, v))
    out, lse = ops.attention(dq_, dk_, dv_, causal=causal, dropout=p, dropout_seed=seed)
    r_out, r_lse, _ = ref_attention(q, k, v, z, causal)
    n_out, n_dq, n_dk, n_dv = naive_bf16_attention(q, k, v, dout, causal, z)
    assert_error_bound(host(out), r_out, n_out, name="out")
    assert_error_bound(host(lse), r_lse, ref_attention(q, k, v, z, causal, np.float32)[1],
                       name="lse")
    grads = ops.attention_backward(dev(dout, "bfloat16"), dq_, dk_, dv_, out, lse, causal=causal,
                                   dropout=p, dropout_seed=seed)
    refs = ref_attention_backward(dout, q, k, v, z, causal)
    for name, g, r, n in zip(("dq", "dk", "dv"), grads, refs, (n_dq, n_dk, n_dv)):
        if T == 1 and name != "dv":
            assert np.abs(host(g)).max() <= 1e-5 * np.abs(dout).max() * np.abs(q).max(), name
            continue
        assert_error_bound(host(g), r, n, name=name)


# ---- cross-entropy -------------------------------------------------------------

def check_ce(x, t, ignore_index=-100, **kw):
    loss, g = ops.cross_entropy(dev(x), dev(t), ignore_index=ignore_index, **kw)
    l64, g64 = ce_ref(x, t, ignore_index)
    l32, g32 = ce_ref(x, t, ignore_index, np.float32)
    assert isinstance(loss, float)
    assert_error_bound(loss, l64, l32, name="loss")
    if g is not None:
        assert_error_bound(host(g), g64, g32, name="dlogits")
    return loss, g


@pytest.mark.parametrize("vocab", SIZES + (50304,))
def test_cross_entropy(rng, vocab):
    for rows in SIZES:
        if rows * vocab > 300_000:
            continue
        x = rng.standard_normal((rows, vocab), dtype=np.float32) * 3
        t = rng.integers(0, vocab, rows)
        loss, g = check_ce(x, t)
        cpu_loss, cpu_g = ops.cross_entropy(x, t)
        np.testing.assert_allclose(loss, cpu_loss, rtol=1e-6)
        np.testing.assert_allclose(host(g), cpu_g, rtol=1e-5, atol=1e-9)


def test_cross_entropy_variants(rng):
    x = rng.standard_normal((31, 33), dtype=np.float32)
    t = rng.integers(0, 33, 31)
    t[[0, 5, 6, 30]] = -100
    l64, g64 = ops.cross_entropy(dev(x), dev(t.astype(np.int64)))
    l32, g32 = ops.cross_entropy(dev(x), dev(t.astype(np.int32)))
    assert l64 == l32
    np.testing.assert_array_equal(host(g64), host(g32))
    assert np.all(host(g64)[[0, 5, 6, 30]] == 0)
    check_ce(x, np.where(t == -100, 7, t), ignore_index=7)
    # loss only
    loss, g = ops.cross_entropy(dev(x), dev(t), compute_grad=False)
    assert g is None and loss == l64
    # in place and into a separate array
    xi = dev(x)
    loss_i, gi = ops.cross_entropy(xi, dev(t), out=xi)
    assert gi is xi and loss_i == l64
    np.testing.assert_array_equal(host(xi), host(g64))
    out = dev(np.zeros_like(x))
    loss_o, go = ops.cross_entropy(dev(x), dev(t), out=out)
    assert go is out
    np.testing.assert_array_equal(host(out), host(g64))


def test_cross_entropy_edge_rows(rng):
    x = rng.standard_normal((17, 31), dtype=np.float32)
    t = np.full(17, -1, dtype=np.int64)
    loss, g = ops.cross_entropy(dev(x), dev(t), ignore_index=-1)
    assert np.isnan(loss) and np.all(host(g) == 0)
    loss, g = ops.cross_entropy(dev(np.zeros((0, 5), np.float32)), dev(np.zeros(0, np.int64)))
    assert np.isnan(loss) and host(g).shape == (0, 5)
    # large logits and -inf logits
    x = (rng.standard_normal((17, 127)) * 1e4).astype(np.float32)
    x[3] += 3e4
    check_ce(x, rng.integers(0, 127, 17))
    x = rng.standard_normal((17, 33), dtype=np.float32)
    x[:, ::3] = -np.inf
    x[4, :32] = -np.inf
    t = rng.integers(0, 11, 17) * 3 + 1
    t[4] = 32
    loss, g = ops.cross_entropy(dev(x), dev(t))
    l64, g64 = ce_ref(x, t)
    np.testing.assert_allclose(loss, l64, rtol=1e-5)
    assert np.all(host(g)[:, ::3] == 0)
    np.testing.assert_allclose(host(g), g64, rtol=1e-5, atol=1e-8)


def test_cross_entropy_deterministic(rng):
    x = rng.standard_normal((1000, 1000), dtype=np.float32)
    t = rng.integers(0, 1000, 1000)
    a = ops.cross_entropy(dev(x), dev(t))
    b = ops.cross_entropy(dev(x), dev(t))
    assert a[0] == b[0]
    np.testing.assert_array_equal(host(a[1]), host(b[1]))


# ---- LSTM, GRU, AdamW -------------------------------------------------------------

@pytest.mark.parametrize("n,inp,hid", [(1, 1, 1), (3, 13, 29), (17, 33, 33), (64, 40, 130)])
@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_lstm_cell(rng, n, inp, hid, scale):
    a = lstm_make(rng, n, inp, hid, scale)
    dh, dc = upstream(rng, n, hid)
    d = {key: dev(val) for key, val in a.items()}
    h_next, c_next, gates = ops.lstm_cell(**d)
    for name, ours, r, q in zip(("h_next", "c_next", "gates"), (h_next, c_next, gates),
                                lstm_ref(**a), lstm_ref(**a, dtype=np.float32)):
        assert_error_bound(host(ours), r, q, name=name)
    grads = ops.lstm_cell_backward(dev(dh), dev(dc), d["x"], d["h"], d["c"], c_next, gates,
                                   d["w_ih"], d["w_hh"])
    ref = lstm_backward_ref(dh, dc, **a)
    naive = lstm_backward_ref(dh, dc, **a, dtype=np.float32)
    for name, ours, r, q in zip(("dx", "dh", "dc", "dw_ih", "dw_hh", "db"), grads, ref, naive):
        assert_error_bound(host(ours), r, q, name=name)


@pytest.mark.parametrize("n,i,hdim", [(1, 1, 1), (3, 13, 29), (17, 33, 33), (5, 1, 17)])
def test_gru_cell(rng, n, i, hdim):
    args = gru_make(rng, n, i, hdim)
    a64 = [x.astype(np.float64) for x in args]
    h_next, gates = ops.gru_cell(*(dev(x) for x in args))
    ref, parts = gru_ref(*a64)
    naive, nparts = gru_ref(*args)
    assert_error_bound(host(h_next), ref, naive, name="h_next")
    assert_error_bound(host(gates), np.concatenate(parts, 1), np.concatenate(nparts, 1))
    dy = rng.standard_normal((n, hdim)).astype(np.float32)
    got = ops.gru_cell_backward(dev(dy), dev(args[0]), dev(args[1]), gates, dev(args[2]),
                                dev(args[3]))
    want = gru_ref_backward(dy.astype(np.float64), *a64)
    naive = gru_ref_backward(dy, *args)
    for name, g, w, nv in zip(["dx", "dh", "dw_ih", "dw_hh", "db_ih", "db_hh"], got, want, naive):
        assert_error_bound(host(g), w, nv, name=name)


@pytest.mark.parametrize("n", [1, 3, 17, 31, 33, 127, 1000, 100_003])
def test_adamw(rng, n):
    p0 = rng.standard_normal(n).astype(np.float32)
    p, m, v = dev(p0), dev(np.zeros(n, np.float32)), dev(np.zeros(n, np.float32))
    ref64 = [p0.astype(np.float64), np.zeros(n), np.zeros(n)]
    ref32 = [p0.copy(), np.zeros(n, np.float32), np.zeros(n, np.float32)]
    for step in range(1, 6):
        g = (rng.standard_normal(n) * 10 ** rng.uniform(-3, 1)).astype(np.float32)
        assert ops.adamw_step(p, dev(g), m, v, step=step, **ADAM_HP) is None
        ref64 = list(adamw_ref(ref64[0], g, ref64[1], ref64[2], step, **ADAM_HP))
        ref32 = list(adamw_ref(ref32[0], g, ref32[1], ref32[2], step, **ADAM_HP,
                               dtype=np.float32))
    for name, ours, r, q in zip(("param", "m", "v"), (p, m, v), ref64, ref32):
        assert_error_bound(host(ours), r, q, name=name)


# ---- kernels of the table without an op ------------------------------------------

@gpu_only
def test_table_kernels(rng):
    b, t, c, vocab, block, pos0 = 3, 5, 33, 11, 9, 2
    idx = rng.integers(0, vocab, (b, t))
    idx[0, :3] = 4  # repeated tokens
    wte = rng.standard_normal((vocab, c)).astype(np.float32)
    wpe = rng.standard_normal((block, c)).astype(np.float32)
    out = _C._cuda_embedding_forward(dev(idx), dev(wte), dev(wpe), b, t, pos0)
    np.testing.assert_array_equal(host(out), wte[idx] + wpe[pos0:pos0 + t][None])
    np.testing.assert_array_equal(host(_C._cuda_embedding_forward(dev(idx), dev(wte), None, b, t,
                                                                   0)), wte[idx])
    dout = rng.standard_normal((b, t, c)).astype(np.float32)
    dwte0 = rng.standard_normal((vocab, c)).astype(np.float32)
    dwpe0 = rng.standard_normal((block, c)).astype(np.float32)
    dwte, dwpe = dev(dwte0), dev(dwpe0)
    _C._cuda_embedding_backward(dev(dout), dev(idx), dwte, dwpe, pos0)
    want_te = dwte0.copy()
    np.add.at(want_te, idx.ravel(), dout.reshape(-1, c))  # token order, as the kernel
    np.testing.assert_allclose(host(dwte), want_te, rtol=1e-6, atol=1e-6)
    want_pe = dwpe0.astype(np.float64)
    want_pe[pos0:pos0 + t] += dout.sum(0)
    np.testing.assert_allclose(host(dwpe), want_pe, rtol=1e-6, atol=1e-6)

    for n in (1, 3, 17, 1000, 100_003):
        x = rng.standard_normal(n).astype(np.float32)
        y = rng.standard_normal(n).astype(np.float32)
        np.testing.assert_array_equal(host(_C._cuda_residual(dev(x), dev(y))), x + y)
        ss = _C._cuda_sum_squares(dev(x))
        np.testing.assert_allclose(ss, np.sum(x.astype(np.float64) ** 2), rtol=1e-12)
        assert ss == _C._cuda_sum_squares(dev(x))
        z = dev(x)
        _C._cuda_zero(z)
        assert np.all(host(z) == 0)
        _C._cuda_copy(z, dev(y))
        np.testing.assert_array_equal(host(z), y)

    for rows, cols in ((1, 1), (3, 17), (1000, 33), (5000, 7)):
        d = rng.standard_normal((rows, cols)).astype(np.float32)
        db0 = rng.standard_normal(cols).astype(np.float32)
        db = dev(db0)
        _C._cuda_bias_backward(dev(d), db)
        naive = db0 + np.cumsum(d, axis=0, dtype=np.float32)[-1]
        assert_error_bound(host(db), db0 + d.astype(np.float64).sum(0), naive)

    p0, g, buf0 = (rng.standard_normal(1000).astype(np.float32) for _ in range(3))
    p, buf = dev(p0), dev(buf0)
    _C._cuda_sgd(p, dev(g), buf, 0.1, 0.9, 0.01, 0.5, False)
    gg = np.float32(0.01) * p0 + g * np.float32(0.5)
    bb = np.float32(0.9) * buf0 + gg
    np.testing.assert_allclose(host(buf), bb, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(host(p), p0 - np.float32(0.1) * bb, rtol=1e-6, atol=1e-7)


# ---- DeviceArray, interop and bad inputs -----------------------------------------

@gpu_only
def test_device_array_round_trip(rng):
    for x in (rng.standard_normal((3, 5)).astype(np.float32), np.arange(7, dtype=np.int64),
              np.arange(6, dtype=np.int32).reshape(2, 3), np.zeros((0, 4), np.float32)):
        d = fastlm.to_device(x)
        assert d.shape == x.shape and d.dtype == x.dtype.name and d.size == x.size
        np.testing.assert_array_equal(d.numpy(), x)
        cai = d.__cuda_array_interface__
        assert cai["shape"] == x.shape and cai["version"] == 3
    x = rng.standard_normal(100).astype(np.float32)
    b = fastlm.to_device(x, dtype="bfloat16")
    assert b.dtype == "bfloat16"
    np.testing.assert_array_equal(b.numpy(), bf16_round(x))
    np.testing.assert_array_equal(b.astype("float32").numpy(), bf16_round(x))
    np.testing.assert_array_equal(fastlm.to_device(x).astype("bfloat16").numpy(), bf16_round(x))
    assert not hasattr(b, "__cuda_array_interface__")
    d = fastlm.to_device(x)
    np.testing.assert_array_equal(d.reshape(10, -1).numpy(), x.reshape(10, 10))
    np.testing.assert_array_equal(d.reshape((-1, 4, 5)).numpy(), x.reshape(-1, 4, 5))
    with pytest.raises(ValueError, match=r"cannot reshape an array of size 100 into shape \(3, -1\)"):
        d.reshape(3, -1)
    with pytest.raises(TypeError, match="numpy"):
        np.asarray(fastlm.to_device(x))
    with pytest.raises(TypeError, match="float64"):
        fastlm.to_device(x.astype(np.float64))
    np.testing.assert_array_equal(fastlm.to_device(x.astype(np.float64), "float32").numpy(), x)


@gpu_only
def test_torch_interop(rng):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    F = torch.nn.functional
    x = torch.randn(5, 7, device="cuda")
    y = ops.gelu(x)
    assert isinstance(y, fastlm.DeviceArray)
    ty = torch.as_tensor(y, device="cuda")
    torch.testing.assert_close(ty, F.gelu(x, approximate="tanh"), rtol=1e-5, atol=1e-6)
    a = torch.randn(64, 48, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(48, 40, device="cuda", dtype=torch.bfloat16)
    c = ops.matmul(a, b)
    assert c.dtype == "bfloat16"
    want = (a.float() @ b.float()).cpu().numpy()
    np.testing.assert_allclose(c.numpy(), want, rtol=2 ** -7, atol=1e-2)
    logits = torch.randn(6, 10, device="cuda")
    t = torch.randint(0, 10, (6,), device="cuda")
    want_loss = F.cross_entropy(logits, t).item()
    loss, g = ops.cross_entropy(logits, t, out=logits)
    assert g is logits and abs(loss - want_loss) < 1e-5
    big = torch.randn(5, 6, device="cuda")
    with pytest.raises(ValueError, match="out"):
        ops.cross_entropy(big[:4], t[:4], out=big[1:])
    with pytest.raises(ValueError, match="contiguous"):
        ops.gelu(torch.randn(4, 6, device="cuda").T)


@gpu_only
def test_bad_inputs(rng):
    x = dev(rng.standard_normal((4, 6)).astype(np.float32))
    xi = dev(np.zeros((4, 6), np.int32))
    with pytest.raises(TypeError, match="x must have dtype float32"):
        ops.gelu(xi)
    with pytest.raises(TypeError, match="x must have dtype float32"):
        ops.softmax(dev(np.zeros((4, 6), np.float32), "bfloat16"))
    with pytest.raises(ValueError, match="inner dimensions"):
        ops.matmul(x, x)
    with pytest.raises(TypeError, match="b must have the dtype of a"):
        ops.matmul(x, dev(np.zeros((6, 2), np.float32), "bfloat16"))
    with pytest.raises(ValueError, match="bias must have shape"):
        ops.matmul(x, x, trans_b=True, bias=dev(np.zeros(3, np.float32)))
    with pytest.raises(ValueError, match=r"a does not hold a \(4, 6\) matrix with row stride 7"):
        _C._cuda_gemm(x, x, x, None, 4, 4, 6, 7, 6, 4, False, True, False, False, 0, 0, 0)
    with pytest.raises(ValueError, match="weight must have shape"):
        ops.layernorm(x, dev(np.ones(5, np.float32)), dev(np.zeros(6, np.float32)))
    with pytest.raises(ValueError, match="dy must have shape"):
        ops.gelu_backward(dev(np.zeros((4, 5), np.float32)), x)
    q = dev(np.zeros((1, 1, 4, 129), np.float32))
    with pytest.raises(ValueError, match="head dim"):
        ops.attention(q, q, q)
    q = dev(np.zeros((1, 1, 4, 8), np.float32))
    for p in (1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="dropout"):
            ops.attention(q, q, q, dropout=p)
        if GPU:  # the binding checks too, for callers that skip ops.py
            with pytest.raises(ValueError, match="attention: dropout must be in"):
                _C.cuda_attention(q, q, q, True, p, 0)
    t = np.array([0, 1, 6, 2])
    with pytest.raises(ValueError, match=r"targets\[2\]"):
        ops.cross_entropy(x, dev(t))
    with pytest.raises(TypeError, match="targets"):
        ops.cross_entropy(x, dev(t.astype(np.float32)))
    with pytest.raises(ValueError, match="out must have shape"):
        ops.cross_entropy(x, dev(np.array([0, 1, 5, 2])), out=dev(np.zeros((4, 5), np.float32)))
    with pytest.raises(ValueError, match="on the GPU but .* on the host"):
        ops.layernorm(x, np.ones(6, np.float32), dev(np.zeros(6, np.float32)))
    with pytest.raises(ValueError, match="step"):
        ops.adamw_step(x, x, dev(np.zeros((4, 6), np.float32)), dev(np.zeros((4, 6), np.float32)),
                       lr=1e-3, step=0)


# ---- one pass over every kernel at tiny sizes (for compute-sanitizer) ------------

@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_small_matmul(rng, trans_a, trans_b):
    for m, n, k in ((3, 5, 7), (130, 9, 16), (16, 136, 40)):
        a, b = operands(rng, m, n, k, trans_a, trans_b)
        bias = rng.standard_normal(n).astype(np.float32)
        ref = mm_refs(a, b, bias, trans_a, trans_b)[2]
        for precision, tol in (("highest", 1e-4), ("tf32", 2e-2)):
            c = host(ops.matmul(dev(a), dev(b), trans_a=trans_a, trans_b=trans_b, bias=dev(bias),
                                precision=precision))
            np.testing.assert_allclose(c, ref, rtol=tol, atol=tol * 10)
        if GPU:
            c = ops.matmul(dev(a, "bfloat16"), dev(b, "bfloat16"), trans_a=trans_a,
                           trans_b=trans_b, bias=dev(bias, "bfloat16"))
            np.testing.assert_allclose(host(c), ref, rtol=5e-2, atol=0.5)


@gpu_only
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_small_matmul_strided(rng, trans_a, trans_b):
    for layout in ("padded", "misaligned"):
        for m, n, k in ((3, 5, 7), (130, 9, 72)):
            got, ref, scale = strided_gemm(rng, m, n, k, trans_a, trans_b, "float32", True, layout)
            assert np.all(np.abs(got - ref) <= 1e-5 * scale + 1e-30)


def test_small_pointwise_and_rows(rng):
    x = rng.standard_normal((5, 37)).astype(np.float32)
    dy = rng.standard_normal((5, 37)).astype(np.float32)
    w, b = np.ones(37, np.float32), np.zeros(37, np.float32)
    y = ops.softmax(dev(x))
    ops.softmax_backward(dev(dy), y)
    _, mean, rstd = ops.layernorm(dev(x), dev(w), dev(b))
    ops.layernorm_backward(dev(dy), dev(x), dev(w), mean, rstd)
    ops.gelu_backward(dev(dy), dev(x))
    np.testing.assert_allclose(host(ops.gelu(dev(x))), gelu_ref(x), rtol=1e-5, atol=1e-6)
    t = np.array([0, 36, -100, 5, 1])
    loss, g = ops.cross_entropy(dev(x), dev(t.astype(np.int32)))
    np.testing.assert_allclose(loss, ce_ref(x, t)[0], rtol=1e-5)
    xi = dev(x)
    ops.cross_entropy(xi, dev(t), out=xi)
    p, gr, m, v = (dev(rng.standard_normal(37).astype(np.float32)) for _ in range(4))
    ops.adamw_step(p, gr, m, dev(np.zeros(37, np.float32)), lr=1e-3, step=1)
    a = lstm_make(rng, 3, 5, 7)
    h_next, c_next, gates = ops.lstm_cell(**{key: dev(val) for key, val in a.items()})
    dh, dc = upstream(rng, 3, 7)
    ops.lstm_cell_backward(dev(dh), dev(dc), dev(a["x"]), dev(a["h"]), dev(a["c"]), c_next, gates,
                           dev(a["w_ih"]), dev(a["w_hh"]))
    args = gru_make(rng, 3, 5, 7)
    h_next, gates = ops.gru_cell(*(dev(z) for z in args))
    ops.gru_cell_backward(dev(dh), dev(args[0]), dev(args[1]), gates, dev(args[2]), dev(args[3]))
    np.testing.assert_allclose(host(h_next), gru_ref(*args)[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("D", [8, 64, 72, 128])
@pytest.mark.parametrize("causal", [True, False])
def test_small_attention(rng, D, causal):
    q, k, v = att_inputs(rng, 1, 2, 70, D)
    dout = rng.standard_normal(q.shape).astype(np.float32)
    out, lse = ops.attention(dev(q), dev(k), dev(v), causal=causal)
    np.testing.assert_allclose(host(out), ref_forward(q, k, v, causal)[0], rtol=1e-4, atol=1e-5)
    ops.attention_backward(dev(dout), dev(q), dev(k), dev(v), out, lse, causal=causal)
    drop = dict(dropout=0.1, dropout_seed=3)  # the kernels' dropout instances
    out, lse = ops.attention(dev(q), dev(k), dev(v), causal=causal, **drop)
    ops.attention_backward(dev(dout), dev(q), dev(k), dev(v), out, lse, causal=causal, **drop)
    if GPU:
        qb, kb, vb = (dev(z, "bfloat16") for z in (q, k, v))
        out, lse = ops.attention(qb, kb, vb, causal=causal)
        np.testing.assert_allclose(host(out), ref_forward(q, k, v, causal)[0], rtol=5e-2,
                                   atol=5e-2)
        ops.attention_backward(dev(dout, "bfloat16"), qb, kb, vb, out, lse, causal=causal)
        out, lse = ops.attention(qb, kb, vb, causal=causal, **drop)
        ops.attention_backward(dev(dout, "bfloat16"), qb, kb, vb, out, lse, causal=causal, **drop)


@gpu_only
def test_small_table_kernels(rng):
    idx = rng.integers(0, 5, (2, 3))
    wte, wpe = (dev(rng.standard_normal((5, 9)).astype(np.float32)) for _ in range(2))
    _C._cuda_embedding_forward(dev(idx), wte, wpe, 2, 3, 1)
    _C._cuda_embedding_backward(dev(rng.standard_normal((2, 3, 9)).astype(np.float32)), dev(idx),
                                wte, wpe, 1)
    x = dev(rng.standard_normal(37).astype(np.float32))
    _C._cuda_residual(x, x)
    _C._cuda_sum_squares(x)
    _C._cuda_bias_backward(dev(rng.standard_normal((300, 7)).astype(np.float32)),
                           dev(np.zeros(7, np.float32)))
    _C._cuda_sgd(x, x, dev(np.zeros(37, np.float32)), 0.1, 0.9, 0.0, 1.0, True)
    _C.cuda_synchronize()
    with pytest.raises(TypeError, match="_cuda_embedding_forward: idx must have dtype int64, got int32"):
        _C._cuda_embedding_forward(dev(idx.astype(np.int32)), wte, wpe, 2, 3, 1)


@gpu_only
def test_sum_squares_op_on_device(rng):
    # ops.sum_squares routes a device array to the CUDA reduction: the float64 sum, the same on a rerun.
    for n in (1, 3, 17, 100_003):
        x = rng.standard_normal(n).astype(np.float32)
        got = ops.sum_squares(dev(x))
        assert isinstance(got, float) and got == ops.sum_squares(dev(x))
        np.testing.assert_allclose(got, np.sum(x.astype(np.float64) ** 2), rtol=1e-12)

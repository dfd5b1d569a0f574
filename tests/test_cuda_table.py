"""What only a device shows (skipped without a GPU, but for what the emulated
device runs): the CUDA tables' matmul as the models call it (decoding's
few-row products, gemv.cu, in float32 and bfloat16, packed bfloat16 weights,
the mixed-precision and TF32 products), the strided bfloat16 GEMM behind the
test-only binding _C._cuda_gemm, the table kernels without an op
(_C._cuda_*), DeviceArray itself, torch interop, and bad device inputs (host
and device arrays mixed). Each against float64 of the operands as the
precision rounds them, at awkward sizes.

The op tests themselves run on the GPU through the ``backend`` fixture of the
per-op files (test_matmul.py, test_attention.py, ...); their test_small_*
functions, and those here, run every kernel once at tiny sizes for the
compute-sanitizer runs of bench/gpu_check.sh:
    FASTLM_TEST_BACKENDS=cuda FASTLM_CUDA_SYNC=1 compute-sanitizer --tool memcheck \
        python -m pytest <the op test files> tests/test_cuda_table.py -k small
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
from reference.bf16 import bf16_round
from reference.matmul import operands

GPU = fastlm.cuda_available()
gpu_only = pytest.mark.skipif(not GPU, reason="needs a CUDA GPU")


def run(a, b, bias, c0, precision, trans_b, packed):
    c = fastlm.to_device(c0)
    _C._cuda_table_matmul(fastlm.to_device(a), fastlm.to_device(b),
                          None if bias is None else fastlm.to_device(bias), c, precision, trans_b, packed)
    return c.numpy()


@gpu_only
@pytest.mark.parametrize("m", [1, 2, 3, 5, 8, 9, 33])
@pytest.mark.parametrize("n,k", [(1, 1), (7, 3), (17, 33), (130, 768), (64, 1001)])
@pytest.mark.parametrize("precision,packed", [("fp32", False), ("tf32", False), ("bf16", False), ("bf16", True)])
@pytest.mark.parametrize("trans_b", [True, False])
def test_table_matmul(m, n, k, precision, packed, trans_b):
    rng = np.random.default_rng(m * 1000 + n + k)
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32) if n % 2 else None
    c0 = rng.standard_normal((m, n)).astype(np.float32)
    got = run(a, b, bias, c0, precision, trans_b, packed)
    aa, bb = a.astype(np.float64), b.astype(np.float64)
    if precision == "bf16":
        aa, bb = bf16_round(a).astype(np.float64), bf16_round(b).astype(np.float64)
    want = c0 + aa @ (bb.T if trans_b else bb) + (0 if bias is None else bias)
    scale = np.abs(aa) @ np.abs(bb.T if trans_b else bb) + np.abs(c0) + 1
    tol = 2e-3 if (precision == "tf32" and not (m <= 8 and trans_b)) else 1e-5
    assert np.all(np.abs(got - want) <= tol * scale), (np.abs(got - want) / scale).max()


@gpu_only
def test_table_matmul_is_deterministic():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((3, 4099)).astype(np.float32), rng.standard_normal((50, 4099)).astype(np.float32)
    c0 = np.zeros((3, 50), np.float32)
    first = run(a, b, None, c0, "fp32", True, False)
    assert all(np.array_equal(first, run(a, b, None, c0, "fp32", True, False)) for _ in range(3))


def _hopper_gemm_built() -> bool:
    if not GPU or _C.cuda_compute_capability() != "9.0":
        return False
    return any(a.startswith("90a") for a in fastlm.build_info()["cuda_archs"])


@pytest.mark.skipif(not _hopper_gemm_built(), reason="needs an sm_90 GPU and a build with 90a code")
@pytest.mark.parametrize("path", ["wgmma"])
def test_matmul_bfloat16_gemm_path(path):
    """The bfloat16 GEMM tests again with another GEMM kernel asked for (FASTLM_CUDA_GEMM is
    read once per process, hence a child pytest, on the GPU backend alone): matmul.cu's kernel
    is the default, "wgmma" asks for the Hopper kernel. The opt-in "wgmma-next" kernel is
    tested by running the matmul tests with FASTLM_CUDA_GEMM=wgmma-next (bench/gpu_check.sh's
    tests-wgmma-next)."""
    env = dict(os.environ, FASTLM_CUDA_GEMM=path, FASTLM_TEST_BACKENDS="cuda")
    here = os.path.dirname(os.path.abspath(__file__))
    files = [os.path.join(here, f) for f in ("test_matmul.py", "test_matmul_bf16.py", "test_cuda_table.py")]
    r = subprocess.run([sys.executable, "-m", "pytest", *files, "-q", "-p", "no:cacheprovider",
                        "-k", "test_matmul_bfloat16 and not gemm_path and not many_tiles or "
                              "test_small_matmul"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and "skipped" not in r.stdout.splitlines()[-1]


def strided_gemm(B, rng, m, n, k, trans_a, trans_b, c_dtype, accumulate, layout):
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
    dc = B.put(cbuf, c_dtype)
    _C._cuda_gemm(B.put(abuf, "bfloat16"), B.put(bbuf, "bfloat16"), dc, B.put(bias, c_dtype), m, n, k,
                  lda, ldb, ldc, trans_a, trans_b, accumulate, False, oa, ob, oc)
    out = B.get(dc).astype(np.float64)
    assert np.all(out[pad] == 7.0), "c's padding was written"
    got = out[oc:oc + m * ldc].reshape(m, ldc)[:, :n]
    opa, opb = (a.T if trans_a else a).astype(np.float64), (b.T if trans_b else b).astype(np.float64)
    ref = opa @ opb + bias
    scale = np.abs(opa) @ np.abs(opb) + np.abs(bias)
    if accumulate:
        ref, scale = ref + c0, scale + np.abs(c0)
    return got, ref, scale


@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (17, 33, 3), (64, 128, 16), (130, 260, 72),
                                   (257, 129, 300), (127, 31, 1000)])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("c_dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("layout", ["tight", "padded", "misaligned"])
def test_matmul_bfloat16_strided(gpu_backend, rng, m, n, k, trans_a, trans_b, c_dtype, accumulate,
                                 layout):
    check_strided(gpu_backend, rng, m, n, k, trans_a, trans_b, c_dtype, accumulate, layout)


# Shapes for the persistent Hopper kernel (on 132 SMs): 243 tiles of 128 x 128 (it keeps
# those here), 209 of 128 x 256, and 72 of 128 x 256 (one round); k blocks past its stages.
MANY_TILES = [(3336, 1032, 520), (2312, 2568, 264), (1096, 2000, 520)]


@pytest.mark.parametrize("m,n,k", MANY_TILES)
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("c_dtype,layout,accumulate", [("float32", "tight", False),
                                                       ("bfloat16", "padded", True)])
def test_matmul_bfloat16_many_tiles(gpu_backend, rng, m, n, k, trans_a, trans_b, c_dtype, layout,
                                    accumulate):
    """More tiles than an H200 has SMs, so a persistent kernel's blocks take two or more, and
    more k blocks than stages; every row 16-byte aligned, so the TMA kernels answer."""
    B = gpu_backend
    check_strided(B, rng, m, n, k, trans_a, trans_b, c_dtype, accumulate, layout)


def check_strided(B, rng, m, n, k, trans_a, trans_b, c_dtype, accumulate, layout):
    got, ref, scale = strided_gemm(B, rng, m, n, k, trans_a, trans_b, c_dtype, accumulate, layout)
    # Exact bfloat16 products summed in float32 (any order: at most (k + 2) roundings of
    # 2^-24 relative to the sum of magnitudes, doubled for safety), then, for a bfloat16 c,
    # rounded once. A float32 c must be far closer than a bfloat16 one could be.
    bound = 2.0 * (k + 2) * 2.0 ** -24 * scale + 1e-30
    if c_dtype == "bfloat16":
        bound += 2.0 ** -8 * np.abs(ref)
    err = np.abs(got - ref)
    assert np.all(err <= bound), (np.max(err - bound), f"{m}x{n}x{k}")


@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_small_matmul_strided(gpu_backend, rng, trans_a, trans_b):
    """The strided GEMM's kernels once at tiny sizes (for compute-sanitizer)."""
    B = gpu_backend
    for layout in ("padded", "misaligned"):
        for m, n, k in ((3, 5, 7), (130, 9, 72)):
            got, ref, scale = strided_gemm(B, rng, m, n, k, trans_a, trans_b, "float32", True, layout)
            assert np.all(np.abs(got - ref) <= 1e-5 * scale + 1e-30)


def test_table_kernels(gpu_backend, rng):
    """The kernels of the CUDA table without an op (embedding, residual, sum of squares, zero,
    copy, bias backward, SGD) through their test-only bindings."""
    B = gpu_backend
    b, t, c, vocab, block, pos0 = 3, 5, 33, 11, 9, 2
    idx = rng.integers(0, vocab, (b, t))
    idx[0, :3] = 4  # repeated tokens
    wte = rng.standard_normal((vocab, c)).astype(np.float32)
    wpe = rng.standard_normal((block, c)).astype(np.float32)
    out = _C._cuda_embedding_forward(B.put(idx), B.put(wte), B.put(wpe), b, t, pos0)
    np.testing.assert_array_equal(B.get(out), wte[idx] + wpe[pos0:pos0 + t][None])
    np.testing.assert_array_equal(B.get(_C._cuda_embedding_forward(B.put(idx), B.put(wte), None, b, t,
                                                                   0)), wte[idx])
    dout = rng.standard_normal((b, t, c)).astype(np.float32)
    dwte0 = rng.standard_normal((vocab, c)).astype(np.float32)
    dwpe0 = rng.standard_normal((block, c)).astype(np.float32)
    dwte, dwpe = B.put(dwte0), B.put(dwpe0)
    _C._cuda_embedding_backward(B.put(dout), B.put(idx), dwte, dwpe, pos0)
    want_te = dwte0.copy()
    np.add.at(want_te, idx.ravel(), dout.reshape(-1, c))  # token order, as the kernel
    np.testing.assert_allclose(B.get(dwte), want_te, rtol=1e-6, atol=1e-6)
    want_pe = dwpe0.astype(np.float64)
    want_pe[pos0:pos0 + t] += dout.sum(0)
    np.testing.assert_allclose(B.get(dwpe), want_pe, rtol=1e-6, atol=1e-6)

    for n in (1, 3, 17, 1000, 100_003):
        x = rng.standard_normal(n).astype(np.float32)
        y = rng.standard_normal(n).astype(np.float32)
        np.testing.assert_array_equal(B.get(_C._cuda_residual(B.put(x), B.put(y))), x + y)
        ss = _C._cuda_sum_squares(B.put(x))
        np.testing.assert_allclose(ss, np.sum(x.astype(np.float64) ** 2), rtol=1e-12)
        assert ss == _C._cuda_sum_squares(B.put(x))
        z = B.put(x)
        _C._cuda_zero(z)
        assert np.all(B.get(z) == 0)
        _C._cuda_copy(z, B.put(y))
        np.testing.assert_array_equal(B.get(z), y)

    for rows, cols in ((1, 1), (3, 17), (1000, 33), (5000, 7)):
        d = rng.standard_normal((rows, cols)).astype(np.float32)
        db0 = rng.standard_normal(cols).astype(np.float32)
        db = B.put(db0)
        _C._cuda_bias_backward(B.put(d), db)
        naive = db0 + np.cumsum(d, axis=0, dtype=np.float32)[-1]
        assert_error_bound(B.get(db), db0 + d.astype(np.float64).sum(0), naive)

    p0, g, buf0 = (rng.standard_normal(1000).astype(np.float32) for _ in range(3))
    p, buf = B.put(p0), B.put(buf0)
    _C._cuda_sgd(p, B.put(g), buf, 0.1, 0.9, 0.01, 0.5, False)
    gg = np.float32(0.01) * p0 + g * np.float32(0.5)
    bb = np.float32(0.9) * buf0 + gg
    np.testing.assert_allclose(B.get(buf), bb, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(B.get(p), p0 - np.float32(0.1) * bb, rtol=1e-6, atol=1e-7)


def test_small_table_kernels(gpu_backend, rng):
    """Every table kernel without an op once at tiny sizes (for compute-sanitizer)."""
    B = gpu_backend
    idx = rng.integers(0, 5, (2, 3))
    wte, wpe = (B.put(rng.standard_normal((5, 9)).astype(np.float32)) for _ in range(2))
    _C._cuda_embedding_forward(B.put(idx), wte, wpe, 2, 3, 1)
    _C._cuda_embedding_backward(B.put(rng.standard_normal((2, 3, 9)).astype(np.float32)), B.put(idx),
                                wte, wpe, 1)
    x = B.put(rng.standard_normal(37).astype(np.float32))
    _C._cuda_residual(x, x)
    _C._cuda_sum_squares(x)
    _C._cuda_bias_backward(B.put(rng.standard_normal((300, 7)).astype(np.float32)),
                           B.put(np.zeros(7, np.float32)))
    _C._cuda_sgd(x, x, B.put(np.zeros(37, np.float32)), 0.1, 0.9, 0.0, 1.0, True)
    _C.cuda_synchronize()
    with pytest.raises(TypeError, match="_cuda_embedding_forward: idx must have dtype int64, got int32"):
        _C._cuda_embedding_forward(B.put(idx.astype(np.int32)), wte, wpe, 2, 3, 1)


def test_device_array_round_trip(device_backend, rng):
    B = device_backend
    for x in (rng.standard_normal((3, 5)).astype(np.float32), np.arange(7, dtype=np.int64),
              np.arange(6, dtype=np.int32).reshape(2, 3), np.zeros((0, 4), np.float32)):
        d = B.put(x)
        assert d.shape == x.shape and d.dtype == x.dtype.name and d.size == x.size
        np.testing.assert_array_equal(B.get(d), x)
        if B.gpu:
            cai = d.__cuda_array_interface__
            assert cai["shape"] == x.shape and cai["version"] == 3
    x = rng.standard_normal(100).astype(np.float32)
    if B.supports("bfloat16"):
        b = B.put(x, "bfloat16")
        assert b.dtype == "bfloat16"
        np.testing.assert_array_equal(b.numpy(), bf16_round(x))
        np.testing.assert_array_equal(b.astype("float32").numpy(), bf16_round(x))
        np.testing.assert_array_equal(B.put(x).astype("bfloat16").numpy(), bf16_round(x))
        assert not hasattr(b, "__cuda_array_interface__")
    d = B.put(x)
    np.testing.assert_array_equal(d.reshape(10, -1).numpy(), x.reshape(10, 10))
    np.testing.assert_array_equal(d.reshape((-1, 4, 5)).numpy(), x.reshape(-1, 4, 5))
    with pytest.raises(ValueError, match=r"cannot reshape an array of size 100 into shape \(3, -1\)"):
        d.reshape(3, -1)
    with pytest.raises(TypeError, match="numpy"):
        np.asarray(fastlm.to_device(x))
    with pytest.raises(TypeError, match="float64"):
        fastlm.to_device(x.astype(np.float64))
    np.testing.assert_array_equal(B.put(x.astype(np.float64), "float32").numpy(), x)


def test_torch_interop(gpu_backend, rng):
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


def test_device_bad_inputs(device_backend, rng):
    """Bad device arguments, and host and device arrays mixed in one call."""
    B = device_backend
    x = B.put(rng.standard_normal((4, 6)).astype(np.float32))
    xi = B.put(np.zeros((4, 6), np.int32))
    with pytest.raises(TypeError, match="x must have dtype float32"):
        ops.gelu(xi)
    if B.supports("bfloat16"):
        with pytest.raises(TypeError, match="x must have dtype float32"):
            ops.softmax(B.put(np.zeros((4, 6), np.float32), "bfloat16"))
        with pytest.raises(TypeError, match="b must have the dtype of a"):
            ops.matmul(x, B.put(np.zeros((6, 2), np.float32), "bfloat16"))
    with pytest.raises(ValueError, match="inner dimensions"):
        ops.matmul(x, x)
    with pytest.raises(ValueError, match="bias must have shape"):
        ops.matmul(x, x, trans_b=True, bias=B.put(np.zeros(3, np.float32)))
    if B.gpu:  # the test-only binding of the strided GEMM
        with pytest.raises(ValueError, match=r"a does not hold a \(4, 6\) matrix with row stride 7"):
            _C._cuda_gemm(x, x, x, None, 4, 4, 6, 7, 6, 4, False, True, False, False, 0, 0, 0)
    with pytest.raises(ValueError, match="weight must have shape"):
        ops.layernorm(x, B.put(np.ones(5, np.float32)), B.put(np.zeros(6, np.float32)))
    with pytest.raises(ValueError, match="dy must have shape"):
        ops.gelu_backward(B.put(np.zeros((4, 5), np.float32)), x)
    q = B.put(np.zeros((1, 1, 4, 129), np.float32))
    with pytest.raises(ValueError, match="head dim"):
        ops.attention(q, q, q)
    q = B.put(np.zeros((1, 1, 4, 8), np.float32))
    for p in (1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="dropout"):
            ops.attention(q, q, q, dropout=p)
        if B.gpu:  # the binding checks too, for callers that skip ops.py
            with pytest.raises(ValueError, match="attention: dropout must be in"):
                _C.cuda_attention(q, q, q, True, p, 0)
    t = np.array([0, 1, 6, 2])
    with pytest.raises(ValueError, match=r"targets\[2\]"):
        ops.cross_entropy(x, B.put(t))
    with pytest.raises(TypeError, match="targets"):
        ops.cross_entropy(x, B.put(t.astype(np.float32)))
    with pytest.raises(ValueError, match="out must have shape"):
        ops.cross_entropy(x, B.put(np.array([0, 1, 5, 2])), out=B.put(np.zeros((4, 5), np.float32)))
    with pytest.raises(ValueError, match="on the GPU but .* on the host"):
        ops.layernorm(x, np.ones(6, np.float32), B.put(np.zeros(6, np.float32)))
    with pytest.raises(ValueError, match="step"):
        ops.adamw_step(x, x, B.put(np.zeros((4, 6), np.float32)), B.put(np.zeros((4, 6), np.float32)),
                       lr=1e-3, step=0)

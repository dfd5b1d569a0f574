"""ops.matmul against a float64 reference on every backend (each CPU ISA, the
emulated device, CUDA), every transpose, awkward sizes; TF32; the GEMM's
thread and ISA invariants on the CPU."""
import numpy as np
import pytest

from fastlm import ops
from conftest import assert_error_bound, same_on_thread_counts, torch_or_skip
from reference.matmul import mm_refs, operands

SIZES = [(1, 1, 1), (3, 17, 31), (17, 33, 3), (31, 1, 127), (33, 127, 17), (127, 31, 1000),
         (1000, 3, 33), (64, 64, 0), (13, 45, 300), (200, 70, 520),
         # whole and ragged GPU tiles
         (128, 256, 64), (130, 260, 68), (257, 129, 300), (64, 128, 16)]


@pytest.mark.parametrize("m,n,k", SIZES)
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_matmul_matches_float64(backend, rng, m, n, k, trans_a, trans_b):
    B = backend
    a, b = operands(rng, m, n, k, trans_a, trans_b)
    bias = rng.standard_normal(n).astype(np.float32)
    _, _, ref, naive = mm_refs(a, b, bias, trans_a, trans_b)
    c = B.get(ops.matmul(B.put(a), B.put(b), trans_a=trans_a, trans_b=trans_b, bias=B.put(bias)))
    assert c.dtype == np.float32 and c.shape == (m, n)
    assert_error_bound(c, ref, naive, name=f"{B.name} {m}x{n}x{k}")
    c0 = B.get(ops.matmul(B.put(a), B.put(b), trans_a=trans_a, trans_b=trans_b))
    assert_error_bound(c0, ref - bias, naive - bias, name="no bias")
    if B.device:  # the device and the CPU agree to float32 rounding
        cpu = ops.matmul(a, b, trans_a=trans_a, trans_b=trans_b, bias=bias)
        np.testing.assert_allclose(c, cpu, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(cpu).max(initial=0)))


@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (17, 33, 3), (127, 31, 1000), (130, 260, 68),
                                   (256, 256, 256), (64, 64, 0), (1096, 2000, 520),
                                   (3336, 1032, 520)])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_matmul_tf32(backend, rng, m, n, k, trans_a, trans_b):
    """precision="tf32": operands may be rounded to TF32 (the CPU computes in float32)."""
    B = backend
    if not B.device and m * n * k > 10**8:
        pytest.skip("sized for the GPU's persistent tiles; test_matmul_large_blocks covers the CPU's")
    a, b = operands(rng, m, n, k, trans_a, trans_b)
    bias = rng.standard_normal(n).astype(np.float32)
    opa, opb = (a.T if trans_a else a), (b.T if trans_b else b)
    ref = opa.astype(np.float64) @ opb.astype(np.float64) + bias
    c = B.get(ops.matmul(B.put(a), B.put(b), trans_a=trans_a, trans_b=trans_b, bias=B.put(bias),
                         precision="tf32"))
    # TF32 keeps 10 mantissa bits: each product is off by < 2^-10 relative.
    bound = 2.0 ** -9 * (np.abs(opa).astype(np.float64) @ np.abs(opb)) + 1e-6 * np.abs(ref) + 1e-6
    assert np.all(np.abs(c - ref) <= bound), np.max(np.abs(c - ref) - bound)


@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_small_matmul(backend, rng, trans_a, trans_b):
    """Every GEMM path once at tiny sizes (compute-sanitizer runs the test_small_* set)."""
    B = backend
    for m, n, k in ((3, 5, 7), (130, 9, 16), (16, 136, 40)):
        a, b = operands(rng, m, n, k, trans_a, trans_b)
        bias = rng.standard_normal(n).astype(np.float32)
        ref = mm_refs(a, b, bias, trans_a, trans_b)[2]
        for precision, tol in (("highest", 1e-4), ("tf32", 2e-2)):
            c = B.get(ops.matmul(B.put(a), B.put(b), trans_a=trans_a, trans_b=trans_b,
                                 bias=B.put(bias), precision=precision))
            np.testing.assert_allclose(c, ref, rtol=tol, atol=tol * 10)
        if B.supports("bfloat16"):
            c = ops.matmul(B.put(a, "bfloat16"), B.put(b, "bfloat16"), trans_a=trans_a,
                           trans_b=trans_b, bias=B.put(bias, "bfloat16"))
            np.testing.assert_allclose(B.get(c), ref, rtol=5e-2, atol=0.5)


def test_matmul_large_blocks(isa, rng):
    # spans several K blocks, N panels and M blocks with ragged edges
    a, b = operands(rng, 397, 211, 613, False, True)
    ref = a.astype(np.float64) @ b.T.astype(np.float64)
    naive = a @ b.T  # float32 BLAS is a fair "plain float32" yardstick here
    assert_error_bound(ops.matmul(a, b, trans_b=True), ref, naive, factor=8, name=isa)


def test_matmul_deterministic(backend, rng):
    B = backend
    a, b = operands(rng, 300, 200, 700, False, True)
    da, db = B.put(a), B.put(b)
    for precision in ("highest", "tf32"):
        x = B.get(ops.matmul(da, db, trans_b=True, precision=precision))
        assert np.array_equal(x, B.get(ops.matmul(da, db, trans_b=True, precision=precision)))


@pytest.mark.parametrize("trans_a", [False, True])
def test_matmul_same_bits_on_any_thread_count(isa, rng, trans_a):
    # M splits into panel-balanced blocks (and N into slices) differently per
    # thread count; K blocks do not, so every element sums in the same order.
    for m, n, k in [(2048 + 5, 97, 600), (40, 300, 1100)]:
        a, b = operands(rng, m, n, k, trans_a, False)
        assert same_on_thread_counts(lambda: ops.matmul(a, b, trans_a=trans_a)), f"{m}x{n}x{k}"


@pytest.mark.parametrize("rows,cols", [(1, 1), (3, 17), (1000, 33), (5000, 7), (257, 100)])
def test_bias_backward_adds_column_sums(isa, rng, rows, cols):
    from fastlm import _C
    d = rng.standard_normal((rows, cols)).astype(np.float32)
    db0 = rng.standard_normal(cols).astype(np.float32)
    db = db0.copy()
    _C._bias_backward(d, db)
    naive = db0 + np.cumsum(d, axis=0, dtype=np.float32)[-1]
    assert_error_bound(db, db0 + d.astype(np.float64).sum(0), naive, name=isa)


def test_bias_backward_same_bits_on_any_thread_count(isa, rng):
    from fastlm import _C
    d = rng.standard_normal((3001, 77)).astype(np.float32)

    def column_sums():
        db = np.zeros(77, np.float32)
        _C._bias_backward(d, db)
        return db
    assert same_on_thread_counts(column_sums)


def test_matmul_isas_agree_closely(rng):
    a, b = operands(rng, 50, 60, 70, False, False)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    import fastlm
    from fastlm import _C
    before = fastlm.cpu_isa()
    try:
        for isa in fastlm.available_cpu_isas():
            _C._set_cpu_isa(isa)
            assert np.max(np.abs(ops.matmul(a, b) - ref)) < 1e-4
    finally:
        _C._set_cpu_isa(before)


def test_matmul_against_torch(rng):
    torch = torch_or_skip()
    a, b = operands(rng, 77, 91, 130, True, True)
    bias = rng.standard_normal(91).astype(np.float32)
    want = torch.nn.functional.linear(torch.from_numpy(a.T.copy()), torch.from_numpy(b),
                                      torch.from_numpy(bias)).numpy()
    np.testing.assert_allclose(ops.matmul(a, b, trans_a=True, trans_b=True, bias=bias), want,
                               rtol=1e-4, atol=1e-4)


def test_matmul_bad_inputs():
    a = np.zeros((3, 4), np.float32)
    b = np.zeros((4, 5), np.float32)
    with pytest.raises(TypeError, match="a must have dtype float32"):
        ops.matmul(a.astype(np.float64), b)
    with pytest.raises(TypeError, match="b must be a numpy.ndarray"):
        ops.matmul(a, [[1.0]])
    with pytest.raises(ValueError, match="inner dimensions"):
        ops.matmul(a, b.T.copy())
    with pytest.raises(ValueError, match="a must be 2-D"):
        ops.matmul(np.zeros(4, np.float32), b)
    with pytest.raises(ValueError, match="b must be C-contiguous"):
        ops.matmul(a, np.zeros((5, 4), np.float32).T)
    with pytest.raises(ValueError, match="bias must have shape"):
        ops.matmul(a, b, bias=np.zeros(4, np.float32))
    with pytest.raises(TypeError, match="bias must have dtype float32"):
        ops.matmul(a, b, bias=np.zeros(5, np.int32))

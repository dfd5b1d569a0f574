"""bfloat16 GEMMs: precision="bf16" on the CPU (float32 arrays, operands rounded
to bfloat16, float32 accumulation) and bfloat16 device arrays on a GPU, judged
against float64 on the same rounded operands."""
import os
import subprocess
import sys

import numpy as np
import pytest

import fastlm
from fastlm import _C, ops
from conftest import assert_error_bound, bf16_engine, bf16_engines, needs_bf16, same_on_thread_counts
from reference.bf16 import bf16_round, matmul_refs
from reference.matmul import operands


# Awkward against every tile (MR 8/12, NR 32; AMX: 16 x 16 tiles in 32 x 32
# blocks, 32 k a step, A blocks of 128 rows), the few-rows path (M <= 4), the
# k pairs (odd K) and the K blocks (K > 512 splits into even blocks).
SIZES = [(1, 1, 1), (3, 17, 31), (4, 33, 3), (17, 33, 3), (31, 1, 127), (33, 127, 17),
         (127, 31, 1000), (1000, 3, 33), (64, 64, 0), (13, 45, 300), (200, 70, 520), (2, 40, 1025),
         (40, 97, 1025), (129, 65, 33), (128, 32, 64), (300, 48, 97)]


@pytest.mark.parametrize("m,n,k", SIZES)
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_bf16_matmul_matches_float64(bf16, rng, m, n, k, trans_a, trans_b):
    a, b = operands(rng, m, n, k, trans_a, trans_b)
    bias = rng.standard_normal(n).astype(np.float32)
    ref, naive = matmul_refs(a, b, trans_a, trans_b, np.broadcast_to(bias, (m, n)))
    c = ops.matmul(a, b, trans_a=trans_a, trans_b=trans_b, bias=bias, precision="bf16")
    assert c.dtype == np.float32 and c.shape == (m, n)
    assert_error_bound(c, ref, naive, name=f"{m}x{n}x{k}")
    c0 = ops.matmul(a, b, trans_a=trans_a, trans_b=trans_b, precision="bf16")
    assert_error_bound(c0, ref - bias, naive - bias, name="no bias")


@pytest.mark.parametrize("m,n,k", [(1, 33, 17), (3, 64, 1025), (4, 100, 2), (9, 31, 600),
                                   (300, 70, 129)])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("prepack", [False, True])
@pytest.mark.parametrize("precision", ["highest", "bf16"])
def test_accumulate_and_prepacked(isa, rng, m, n, k, trans_a, trans_b, prepack, precision):
    """c += op(a) op(b) + bias, with B packed beforehand (as the models decode) or
    not, in float32 on every ISA and in bf16 where it runs."""
    if precision == "bf16" and isa != "avx512bf16":
        pytest.skip("bf16 runs on avx512bf16 only")
    a, b = operands(rng, m, n, k, trans_a, trans_b)
    bias = rng.standard_normal(n).astype(np.float32)
    c0 = rng.standard_normal((m, n)).astype(np.float32)
    ref, naive = matmul_refs(a, b, trans_a, trans_b, c0 + bias, rounded=precision == "bf16")
    for engine in bf16_engines() if precision == "bf16" else ["fma"]:
        with bf16_engine(engine):
            c = c0.copy()
            _C._matmul_into(c, a, b, trans_a, trans_b, bias, precision, True, prepack)
            assert_error_bound(c, ref, naive, name=f"{isa} {engine} {m}x{n}x{k}")
            c = np.full((m, n), np.nan, np.float32)  # overwritten, not read
            _C._matmul_into(c, a, b, trans_a, trans_b, None, precision, False, prepack)
            assert_error_bound(c, ref - c0 - bias, naive - c0 - bias, name=f"{engine} overwrite")


def test_bf16_rounds_to_nearest_even(bf16):
    # bfloat16 keeps 8 significant bits: 1 + 2^-8 is halfway between 1 and
    # 1 + 2^-7 (ties go to the even 1), 1 + 3 * 2^-8 halfway to 1 + 2^-6.
    a = np.array([[1 + 2.0**-8, 1 + 3 * 2.0**-8, 1 + 2.0**-8 + 2.0**-20]], np.float32)
    eye = np.eye(3, dtype=np.float32)
    c = ops.matmul(a, eye, precision="bf16")
    np.testing.assert_array_equal(c, [[1.0, 1 + 2.0**-6, 1 + 2.0**-7]])
    np.testing.assert_array_equal(ops.matmul(a, eye), a)  # float32 keeps every bit


def test_bf16_specials(bf16):
    a = np.array([[np.inf, 1.0], [np.nan, 1.0], [3e38, 3e38]], np.float32)
    c = ops.matmul(a, np.ones((2, 1), np.float32), precision="bf16")
    assert c[0, 0] == np.inf and np.isnan(c[1, 0]) and c[2, 0] == np.inf


def test_bf16_large_blocks(bf16, rng):
    a, b = operands(rng, 397, 211, 1613, False, True)
    ref, _ = matmul_refs(a, b, False, True, np.zeros((397, 211)))
    naive = bf16_round(a) @ bf16_round(b).T  # float32 BLAS on the rounded operands
    assert_error_bound(ops.matmul(a, b, trans_b=True, precision="bf16"), ref, naive, factor=8)


@pytest.mark.parametrize("trans_a", [False, True])
def test_bf16_same_bits_on_any_thread_count(bf16, rng, trans_a):
    for m, n, k in [(2048 + 5, 97, 600), (40, 300, 1100)]:
        a, b = operands(rng, m, n, k, trans_a, False)
        assert same_on_thread_counts(lambda: ops.matmul(a, b, trans_a=trans_a, precision="bf16"))


def test_bf16_differs_from_float32(bf16, rng):
    """The rounding happens: bf16 is not float32 in disguise."""
    a, b = operands(rng, 50, 40, 30, False, False)
    exact = a.astype(np.float64) @ b
    e32 = np.abs(ops.matmul(a, b) - exact).max()
    e16 = np.abs(ops.matmul(a, b, precision="bf16") - exact).max()
    assert e16 > 100 * e32


@pytest.mark.parametrize("isa", [i for i in fastlm.available_cpu_isas() if i != "avx512bf16"])
def test_bf16_refused_without_avx512bf16(rng, isa):
    before = fastlm.cpu_isa()
    _C._set_cpu_isa(isa)
    try:
        a, b = operands(rng, 5, 6, 7, False, False)
        with pytest.raises(ValueError, match=f"avx512bf16 CPU ISA.*active CPU ISA is '{isa}'"):
            ops.matmul(a, b, precision="bf16")
        with pytest.raises(ValueError, match="avx512bf16"):
            _C._matmul_into(np.zeros((5, 6), np.float32), a, b, False, False, None, "bf16", False, True)
        np.testing.assert_allclose(ops.matmul(a, b), a.astype(np.float64) @ b, rtol=1e-5, atol=1e-5)
    finally:
        _C._set_cpu_isa(before)


@needs_bf16
def test_forced_avx512_runs_float32_and_refuses_bf16():
    code = ("import fastlm, numpy as np; from fastlm import ops; a = np.ones((3, 3), np.float32)\n"
            "print(fastlm.cpu_isa(), ops.matmul(a, a)[0, 0])\n"
            "try: ops.matmul(a, a, precision='bf16')\n"
            "except ValueError as e: print('refused', e)")
    r = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, FASTLM_CPU_ISA="avx512"),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    first, second = r.stdout.splitlines()
    assert first == "avx512 3.0"
    assert second.startswith("refused matmul: precision 'bf16' needs the avx512bf16 CPU ISA")


@pytest.mark.parametrize("precision, err", [("bfloat16", ValueError), ("BF16", ValueError),
                                            (16, TypeError), (None, TypeError)])
def test_bad_precision(rng, precision, err):
    a, b = operands(rng, 2, 2, 2, False, False)
    with pytest.raises(err, match="precision"):
        ops.matmul(a, b, precision=precision)
    if err is ValueError:
        with pytest.raises(ValueError, match="precision"):
            _C._matmul_into(np.zeros((2, 2), np.float32), a, b, False, False, None, precision, False,
                            False)


def test_matmul_into_checks_c(rng):
    a, b = operands(rng, 2, 3, 4, False, False)
    with pytest.raises(ValueError, match="c"):
        _C._matmul_into(np.zeros((3, 2), np.float32), a, b, False, False, None, "highest", False, False)


@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (17, 33, 3), (127, 31, 1000), (128, 256, 64),
                                   (130, 260, 72), (512, 384, 1024), (64, 64, 0)])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_matmul_bfloat16(gpu_backend, rng, m, n, k, trans_a, trans_b):
    """bfloat16 device operands (a, b, bias) give a bfloat16 c."""
    B = gpu_backend
    a, b = (bf16_round(x) for x in operands(rng, m, n, k, trans_a, trans_b))
    bias = bf16_round(rng.standard_normal(n))
    opa, opb = (a.T if trans_a else a), (b.T if trans_b else b)
    ref = opa.astype(np.float64) @ opb.astype(np.float64) + bias
    c = ops.matmul(B.put(a, "bfloat16"), B.put(b, "bfloat16"), trans_a=trans_a, trans_b=trans_b,
                   bias=B.put(bias, "bfloat16"))
    assert c.dtype == "bfloat16" and c.shape == (m, n)
    # Exact bfloat16 products summed in float32, then rounded once to bfloat16.
    bound = 2.0 ** -8 * np.abs(ref) + 1e-5 * (np.abs(opa).astype(np.float64) @ np.abs(opb)) + 1e-30
    got = B.get(c)
    assert np.all(np.abs(got - ref) <= bound), np.max(np.abs(got - ref) - bound)


def test_amx_switch(rng):
    """FASTLM_CPU_AMX=0 keeps the tiles off (availability still reported);
    turning them on where the CPU has none is refused by name."""
    if not _C.cpu_amx_available():
        with pytest.raises(ValueError, match="AMX"):
            _C._set_cpu_amx(True)
        assert not _C.cpu_amx()
    code = "from fastlm import _C; print(_C.cpu_amx(), _C.cpu_amx_available())"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "FASTLM_CPU_AMX": "0"},
                         capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "False" and out[1] == str(_C.cpu_amx_available())
    assert fastlm.cpu_amx() == _C.cpu_amx()

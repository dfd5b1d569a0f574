"""The CUDA tables' matmul as the models call it (skipped without a GPU):
decoding's few-row products (gemv.cu) in float32 and bfloat16, packed
bfloat16 weights, the mixed-precision (bf16 operands, float32 c) and TF32
products, each against float64 of the operands as the precision rounds them,
at awkward sizes, with bias and accumulation."""
from __future__ import annotations

import numpy as np
import pytest

import fastlm
from fastlm import _C
from test_cuda_ops import bf16_round

pytestmark = pytest.mark.skipif(not fastlm.cuda_available(), reason="needs a CUDA GPU")


def run(a, b, bias, c0, precision, trans_b, packed):
    c = fastlm.to_device(c0)
    _C._cuda_table_matmul(fastlm.to_device(a), fastlm.to_device(b),
                          None if bias is None else fastlm.to_device(bias), c, precision, trans_b, packed)
    return c.numpy()


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


def test_table_matmul_is_deterministic():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((3, 4099)).astype(np.float32), rng.standard_normal((50, 4099)).astype(np.float32)
    c0 = np.zeros((3, 50), np.float32)
    first = run(a, b, None, c0, "fp32", True, False)
    assert all(np.array_equal(first, run(a, b, None, c0, "fp32", True, False)) for _ in range(3))

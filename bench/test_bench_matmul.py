"""GEMM: fastlm.ops.matmul against NumPy (OpenBLAS) and PyTorch, side by side, in GFLOP/s.

Square 512-2048 and the Transformer shapes of issue #2 (M x K) @ (K x N), plus the
transposed-weight form a Linear layer uses (x @ W^T)."""
from __future__ import annotations

import pytest

from fastlm.bench import matmul_case

from conftest import run

SHAPES = [(512, 512, 512), (1024, 1024, 1024), (2048, 2048, 2048),
          (768, 128, 384), (768, 128, 512), (768, 512, 128)]


@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("trans_b", [False, True], ids=["a@b", "a@bT"])
def test_bench_matmul(benchmark, m, k, n, trans_b):
    run(benchmark, matmul_case(m, k, n, trans_b))

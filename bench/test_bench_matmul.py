"""GEMM: fastlm.ops.matmul against NumPy (OpenBLAS) and PyTorch, side by side.

Square 512-2048 and the Transformer shapes of issue #2 (M x K) @ (K x N), plus the
transposed-weight form a Linear layer uses (x @ W^T)."""
from __future__ import annotations

import numpy as np
import pytest

from fastlm import ops
from conftest import medians, report, torch_or_none

SHAPES = [(512, 512, 512), (1024, 1024, 1024), (2048, 2048, 2048),
          (768, 128, 384), (768, 128, 512), (768, 512, 128)]


@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("trans_b", [False, True], ids=["a@b", "a@bT"])
def test_bench_matmul(benchmark, m, k, n, trans_b):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((n, k) if trans_b else (k, n), dtype=np.float32)
    bb = b.T if trans_b else b
    benchmark.pedantic(lambda: ops.matmul(a, b, trans_b=trans_b), rounds=3, iterations=1,
                       warmup_rounds=1)
    contenders = {"fastlm": lambda: ops.matmul(a, b, trans_b=trans_b), "numpy": lambda: a @ bb}
    torch = torch_or_none()
    if torch is not None:
        at, bt = torch.from_numpy(a), torch.from_numpy(b)
        contenders["torch"] = ((lambda: torch.nn.functional.linear(at, bt)) if trans_b
                               else (lambda: at @ bt))
    rounds = 3 if m >= 2048 else 10 if m >= 1024 else 30
    ratios = report("matmul" + (" (x @ W^T)" if trans_b else ""), f"{m}x{k} @ {k}x{n}",
                    2.0 * m * n * k, medians(contenders, rounds), unit="GFLOP/s")
    benchmark.extra_info.update(ratios)

"""Benchmark cases of the bfloat16 GEMM (``ops.matmul(..., precision="bf16")``),
for ``bench/``: fastlm bf16 against fastlm's and NumPy's float32 GEMM and
PyTorch's bfloat16 (autocast: float32 in, operands rounded, float32 out,
as fastlm's bf16 path)."""
from __future__ import annotations

from typing import Dict

import numpy as np

from fastlm import ops
from fastlm.bench import Case, Contender, F, torch

__all__ = ["matmul_bf16_case"]


def matmul_bf16_case(m: int, k: int, n: int, trans_b: bool = False) -> Case:
    """(m, k) @ (k, n) float32, or x @ W^T with W (n, k) when trans_b. "fastlm"
    is the bf16 GEMM; "fp32 fastlm" is a reference here, so the ratio
    fp32 fastlm / fastlm is bf16's speedup over fastlm's float32."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((n, k) if trans_b else (k, n), dtype=np.float32)
    bb = b.T if trans_b else b
    cs: Dict[str, Contender] = {
        "fastlm": lambda: ops.matmul(a, b, trans_b=trans_b, precision="bf16"),
        "fp32 fastlm": lambda: ops.matmul(a, b, trans_b=trans_b),
        "fp32 numpy": lambda: a @ bb,
    }
    if torch is not None:
        at, bt = torch.from_numpy(a), torch.from_numpy(b)

        def autocast():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return F.linear(at, bt) if trans_b else at @ bt
        cs["bf16 torch autocast"] = autocast
    size = m * n * k
    return Case(f"matmul bf16{' (x @ W^T)' if trans_b else ''} {m}x{k} @ {k}x{n}", "GFLOP/s",
                2.0 * size, cs, rounds=3 if size >= 1 << 33 else 5,
                block=2 if size >= 1 << 33 else 3 if size >= 1 << 30 else 10)

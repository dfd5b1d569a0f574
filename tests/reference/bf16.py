"""bfloat16 rounding, as the kernels round (nearest, ties to even)."""
from __future__ import annotations

import numpy as np


def bf16_round(x) -> np.ndarray:
    """x rounded to the nearest bfloat16 (ties to even), as float32 of x's shape."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return u.astype(np.uint32).view(np.float32).reshape(np.shape(x))


def matmul_refs(a, b, trans_a, trans_b, c0, rounded=True):
    """float64 and naive float32 (in order over k) of c0 + op(a) op(b) on the
    bfloat16-rounded operands (as they are, unless rounded)."""
    opa = a.T if trans_a else a
    opb = b.T if trans_b else b
    if rounded:
        opa, opb = bf16_round(opa), bf16_round(opb)
    ref = c0.astype(np.float64) + opa.astype(np.float64) @ opb.astype(np.float64)
    naive = c0.astype(np.float32).copy()
    for p in range(opa.shape[1]):
        naive += np.outer(opa[:, p], opb[p, :]).astype(np.float32)
    return ref, naive

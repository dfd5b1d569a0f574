"""op(a) @ op(b) + bias in float64, and the naive float32 product (summed over
k in order)."""
from __future__ import annotations

import numpy as np


def operands(rng, m, n, k, trans_a, trans_b):
    """float32 a (M, K) or (K, M) and b (K, N) or (N, K), standard normal."""
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    return a, b


def mm_refs(a, b, bias, trans_a, trans_b):
    """(op(a), op(b), float64 reference, naive float32) of op(a) op(b) + bias (N,) or 0."""
    opa, opb = (a.T if trans_a else a), (b.T if trans_b else b)
    ref = opa.astype(np.float64) @ opb.astype(np.float64) + bias
    naive = np.zeros(ref.shape, np.float32)
    for p in range(opa.shape[1]):
        naive += np.outer(opa[:, p], opb[p, :]).astype(np.float32)
    return opa, opb, ref, naive + bias

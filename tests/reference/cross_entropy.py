"""Softmax cross-entropy: mean loss over the rows not ignored, and d loss / d logits."""
from __future__ import annotations

import numpy as np


def ce_ref(x, t, ignore_index=-100, dtype=np.float64):
    """(mean loss, dlogits) evaluated plainly in `dtype`."""
    x = np.asarray(x, dtype=dtype)
    t = np.asarray(t, dtype=np.int64)
    n = x.shape[0]
    keep = t != ignore_index
    count = int(keep.sum())
    m = x.max(axis=1, keepdims=True)
    e = np.exp(x - m)
    s = e.sum(axis=1, keepdims=True)
    p = e / s
    lse = (m + np.log(s))[:, 0]
    rows = np.arange(n)
    losses = lse - x[rows, np.where(keep, t, 0)]
    loss = losses[keep].sum(dtype=dtype) / dtype(count) if count else dtype(np.nan)
    g = p.copy()
    g[rows[keep], t[keep]] -= dtype(1)
    g = g / dtype(max(count, 1))
    g[~keep] = 0
    return loss, g

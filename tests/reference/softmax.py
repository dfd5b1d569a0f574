"""Softmax over the last axis and its backward."""
from __future__ import annotations

import numpy as np


def softmax_ref(x, dtype=np.float64):
    x = np.asarray(x, dtype=dtype)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def softmax_backward_ref(dy, y, dtype=np.float64):
    dy = np.asarray(dy, dtype=dtype)
    y = np.asarray(y, dtype=dtype)
    return y * (dy - (dy * y).sum(axis=-1, keepdims=True))

"""LayerNorm (the llm.c formulas) forward and backward, and its test inputs."""
from __future__ import annotations

import numpy as np

EPS = 1e-5


def ln_ref(x, w, b, eps=EPS, dtype=np.float64):
    """The llm.c formulas in `dtype`: float64 is the reference, float32 the naive baseline."""
    x, w, b = (np.asarray(a, dtype=dtype) for a in (x, w, b))
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    rstd = 1 / np.sqrt(var + dtype(eps))
    y = (x - mean) * rstd * w + b
    return y, mean[..., 0], rstd[..., 0]


def ln_backward_ref(dy, x, w, eps=EPS, dtype=np.float64):
    dy, x, w = (np.asarray(a, dtype=dtype) for a in (dy, x, w))
    mean = x.mean(-1, keepdims=True)
    rstd = 1 / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + dtype(eps))
    norm = (x - mean) * rstd
    dnorm = dy * w
    dx = (dnorm - dnorm.mean(-1, keepdims=True)
          - norm * (dnorm * norm).mean(-1, keepdims=True)) * rstd
    axes = tuple(range(x.ndim - 1))
    return dx, (dy * norm).sum(axes), dy.sum(axes)


def make(rng, rows, cols, offset=0.0):
    """(x, weight, bias, dy), float32; x (rows, cols) around offset."""
    x = (rng.standard_normal((rows, cols)) * 2 + offset).astype(np.float32)
    w = (1 + 0.5 * rng.standard_normal(cols)).astype(np.float32)
    b = rng.standard_normal(cols).astype(np.float32)
    dy = rng.standard_normal((rows, cols)).astype(np.float32)
    return x, w, b, dy

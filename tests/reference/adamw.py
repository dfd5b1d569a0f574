"""AdamW (torch.optim.AdamW's update) and the hyperparameters the tests use."""
from __future__ import annotations

import numpy as np

HP = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1)


def adamw_ref(p, g, m, v, step, lr, beta1, beta2, eps, weight_decay, dtype=np.float64):
    """torch.optim.AdamW's update, in `dtype`; returns new (p, m, v)."""
    p, g, m, v = (np.asarray(a, dtype=dtype) for a in (p, g, m, v))
    c = lambda s: dtype(s)  # noqa: E731  (scalars rounded to dtype, as torch does)
    p = p * c(1 - lr * weight_decay)
    m = m + c(1 - beta1) * (g - m)
    v = v * c(beta2) + c(1 - beta2) * g * g
    bc1, bc2 = 1 - beta1 ** step, 1 - beta2 ** step
    denom = np.sqrt(v) / c(np.sqrt(bc2)) + c(eps)
    p = p - c(lr / bc1) * m / denom
    return p, m, v

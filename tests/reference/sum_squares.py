"""Sum of squares (the gradient-norm reduction): the naive float32 yardstick."""
from __future__ import annotations

import numpy as np


def naive32(x):
    """Sequential float32 accumulation, the plain way."""
    sq = np.square(x.reshape(-1), dtype=np.float32)
    return float(np.cumsum(sq, dtype=np.float32)[-1]) if sq.size else 0.0

"""bfloat16 rounding, as the kernels round (nearest, ties to even)."""
from __future__ import annotations

import numpy as np


def bf16_round(x) -> np.ndarray:
    """x rounded to the nearest bfloat16 (ties to even), as float32 of x's shape."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return u.astype(np.uint32).view(np.float32).reshape(np.shape(x))

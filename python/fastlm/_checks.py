"""Argument checks shared by the Python layer: each raises ``TypeError`` for a
wrong type and ``ValueError`` for a wrong value, naming the argument."""
from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np


# The largest size a model argument may take: every tensor extent then fits
# int32, and the C++ core's sizes (int64) cannot overflow from one product.
MAX_SIZE = 2**31 - 1


# What the C++ core's int64_t arguments hold.
INT64_MIN, INT64_MAX = -2**63, 2**63 - 1


def check_int(v: Any, name: str, minimum: Optional[int] = None, maximum: Optional[int] = None) -> int:
    """``v`` as an int (bools, floats and strings rejected) within [minimum, maximum]."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    v = int(v)
    if minimum is not None and v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    if maximum is not None and v > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {v}")
    return v


def check_bool(v: Any, name: str) -> bool:
    """``v`` as a bool: a bool or NumPy bool only, never read by its truth value
    (``trans_a="False"`` would transpose)."""
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(v).__name__}")
    return bool(v)


def check_float(v: Any, name: str, minimum: Optional[float] = None, *, strict: bool = False,
                below: Optional[float] = None) -> float:
    """``v`` as a finite float (bools and strings rejected), >= minimum (> minimum
    when ``strict``) and < below."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(v).__name__}")
    try:
        f = float(v)
    except OverflowError:  # an int beyond float's range
        f = math.inf
    if not math.isfinite(f):
        raise ValueError(f"{name} must be finite, got {v!r}")
    if minimum is not None and (f < minimum or (strict and f == minimum)):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum}, got {v!r}")
    if below is not None and not f < below:
        raise ValueError(f"{name} must be < {below}, got {v!r}")
    return f

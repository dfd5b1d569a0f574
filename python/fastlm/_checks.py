"""Argument checks shared by the Python layer: each raises ``TypeError`` for a
wrong type and ``ValueError`` for a wrong value, naming the argument."""
from __future__ import annotations

import math
from typing import Any, List, Mapping, Optional

import numpy as np

from . import _C


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


def host_copy(x: Any) -> Any:
    """A NumPy copy of a torch tensor (any device) or a fastlm DeviceArray;
    anything else as it is. The models take ids and weights from any device
    this way: they upload to their own device themselves."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor
        return x.detach().cpu().numpy()
    if isinstance(x, _C.DeviceArray):  # the GPU's or the emulated device's
        return x.numpy()
    if hasattr(x, "__cuda_array_interface__") and callable(getattr(x, "numpy", None)):
        return x.numpy()
    return x


def as_ids(x: Any, name: str, vocab_size: int, *, ndim: Optional[int] = 2,
            ignore_index: Optional[int] = None) -> np.ndarray:
    """``x`` as a C-contiguous int64 array with every entry in ``[0, vocab_size)``
    (or equal to ``ignore_index``). Lists and CPU tensors are accepted."""
    if isinstance(x, (str, bytes, bytearray)):
        raise TypeError(f"{name} must be an integer array, got {type(x).__name__}")
    x = host_copy(x)
    if not isinstance(x, np.ndarray):
        try:
            x = np.asarray(x)
        except (ValueError, TypeError) as e:
            raise TypeError(f"{name} must be a rectangular integer array ({e})") from None
        if x.dtype == object:
            raise TypeError(f"{name} must be a rectangular integer array, got ragged or non-integer data")
        if x.size == 0 and x.dtype.kind == "f":
            x = x.astype(np.int64)
    if x.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array (int32/int64), got dtype {x.dtype}")
    if ndim is not None and x.ndim != ndim:
        hint = " (a batch of sequences (B, T); use x[None] for one sequence)" if ndim == 2 and x.ndim == 1 else ""
        raise ValueError(f"{name} must be {ndim}-D, got shape {x.shape}{hint}")
    if x.size:
        bad = (x < 0) | (x >= vocab_size)
        if ignore_index is not None:
            bad &= x != ignore_index
        if bad.any():
            pos = tuple(int(i) for i in np.argwhere(bad)[0])
            allowed = f"[0, {vocab_size})" + (f" or {ignore_index}" if ignore_index is not None else "")
            raise ValueError(f"{name}{list(pos)} = {int(x[pos])} is out of range {allowed}")
    return np.ascontiguousarray(x, dtype=np.int64)


def nonfinite(arrays: Mapping[str, np.ndarray]) -> List[str]:
    """Names of the arrays holding NaN or inf."""
    return [n for n, a in arrays.items() if not np.isfinite(a).all()]

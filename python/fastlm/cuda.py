"""GPU arrays for :mod:`fastlm.ops`.

Every op in :mod:`fastlm.ops` runs on the GPU when its arrays are device
arrays: :class:`DeviceArray` (``fastlm.to_device(np_array)``) or any object
exporting ``__cuda_array_interface__`` (CuPy arrays, PyTorch CUDA tensors;
PyTorch bfloat16 tensors are taken directly, as the interface has no bfloat16
type). Foreign arrays are borrowed, never copied; outputs are new
:class:`DeviceArray` objects, which export the interface in turn
(``torch.as_tensor(out, device="cuda")`` views them).

``fastlm._C`` routes each op call: it asks :func:`is_device_array` about an
argument that is neither a NumPy array nor a DeviceArray, and views such
arrays through :func:`as_device_array`.

fastlm queues all its GPU work on the legacy default stream. A foreign array
that names another stream in its interface is waited for before use.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np

from . import _C

__all__ = ["DeviceArray", "cuda_available", "to_device", "is_device_array", "as_device_array", "memory_usage",
           "synchronize", "device_name"]

DeviceArray = _C.DeviceArray

_TYPESTRS = {"<f4": "float32", "<i4": "int32", "<i8": "int64"}
_TORCH_DTYPES = {"torch.float32": "float32", "torch.bfloat16": "bfloat16",
                 "torch.int32": "int32", "torch.int64": "int64"}
_DTYPE_NAMES = {"float32": "float32", "bfloat16": "bfloat16", "int32": "int32", "int64": "int64"}


def cuda_available() -> bool:
    """True when this build has CUDA kernels and a usable NVIDIA GPU and driver are present."""
    return bool(_C.cuda_available())


def _require(what: str) -> None:
    if not _C.cuda_available():
        raise RuntimeError(f"{what}: CUDA is not available ({_C.cuda_unavailable_reason()})")


def _require_arrays(what: str) -> None:
    """Device arrays exist on a GPU, or on the emulated device (FASTLM_EMULATE_CUDA=1)."""
    if not _C.cuda_emulated():
        _require(what)


def device_name() -> str:
    """Name of the GPU fastlm runs on (RuntimeError without one)."""
    _require("device_name")
    return _C.cuda_device_name()


def synchronize() -> None:
    """Wait until all GPU work fastlm has queued is done (for timing)."""
    _require("synchronize")
    _C.cuda_synchronize()


def memory_usage(reset_peak: bool = False) -> tuple:
    """(bytes, peak bytes) of GPU memory fastlm holds: its models' buffers, its
    arrays and kernel scratch, now and at most since the start or the last
    ``reset_peak=True``."""
    _require("memory_usage")
    now, peak = _C.cuda_memory_usage(reset_peak)
    return int(now), int(peak)


def _dtype_name(dtype: Any) -> str:
    if isinstance(dtype, str) and dtype in _DTYPE_NAMES:
        return dtype
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = str(dtype)
    if name not in _DTYPE_NAMES:
        raise TypeError(f"dtype must be float32, bfloat16, int32 or int64, got {dtype!r}")
    return name


def to_device(x: Any, dtype: Optional[Any] = None) -> DeviceArray:
    """Copy an array to the GPU as a :class:`DeviceArray`.

    x: a NumPy array (or anything ``numpy.asarray`` takes) of float32, int32 or
    int64, or a device array. dtype: ``"float32"``, ``"bfloat16"`` (rounded to
    nearest even), ``"int32"`` or ``"int64"``; by default the dtype of x, which
    must then be one of float32, int32, int64 (float64 data needs an explicit
    ``dtype="float32"``). Raises RuntimeError when CUDA is not available.
    With ``FASTLM_EMULATE_CUDA=1`` the copy goes to the emulated device (host
    memory that ops on it treat as device memory; no GPU needed).
    """
    _require_arrays("to_device")
    want = None if dtype is None else _dtype_name(dtype)
    if is_device_array(x):
        d = as_device_array(x, "to_device", "x")
        return d if want is None or want == d.dtype else d.astype(want)
    a = np.asarray(x)
    if want is None:
        if a.dtype.name not in ("float32", "int32", "int64"):
            raise TypeError(f"to_device: dtype {a.dtype} is not supported on the GPU; pass "
                            "dtype='float32' (or 'bfloat16', 'int32', 'int64') to convert")
        want = a.dtype.name
    src = np.float32 if want in ("float32", "bfloat16") else np.dtype(want)
    a = np.ascontiguousarray(a, dtype=src)
    return DeviceArray._from_numpy(a, want)


def _is_torch_tensor(obj: Any) -> bool:
    return type(obj).__module__.split(".")[0] == "torch" and hasattr(obj, "is_cuda")


def is_device_array(obj: Any) -> bool:
    """True for a DeviceArray, a CUDA torch tensor, or an object exporting
    ``__cuda_array_interface__``."""
    if obj is None:
        return False
    if isinstance(obj, DeviceArray):
        return True
    if _is_torch_tensor(obj):
        return bool(obj.is_cuda)
    try:
        obj.__cuda_array_interface__
    except AttributeError:
        return False
    return True


def _c_contiguous(shape, strides, itemsize: int) -> bool:
    if strides is None or any(d == 0 for d in shape):
        return True
    want = itemsize
    for d, s in zip(reversed(shape), reversed(strides)):
        if d != 1 and s != want:
            return False
        want *= d
    return True


def _from_torch(t: Any, op: str, name: str) -> DeviceArray:
    dtype = _TORCH_DTYPES.get(str(t.dtype))
    if dtype is None:
        raise TypeError(f"{op}: {name} has dtype {t.dtype}, which fastlm does not take on the GPU "
                        "(float32, bfloat16, int32, int64)")
    if not t.is_contiguous():
        raise ValueError(f"{op}: {name} must be C-contiguous (use .contiguous())")
    import torch  # present: t is a torch tensor

    if t.device.index is not None and t.device.index != torch.cuda.current_device():
        raise ValueError(f"{op}: {name} is on cuda:{t.device.index}, fastlm runs on the current "
                         f"device cuda:{torch.cuda.current_device()}")
    stream = torch.cuda.current_stream(t.device)
    if stream.cuda_stream not in (0, 1, 2):
        stream.synchronize()  # our work goes on the legacy default stream
    return DeviceArray._borrow(t.data_ptr(), tuple(t.shape), dtype, t, False, f"{op}: {name}")


def as_device_array(obj: Any, op: str = "as_device_array", name: str = "x") -> DeviceArray:
    """View a device array as a DeviceArray without copying (a DeviceArray is
    returned as is). Errors name ``op`` and the argument ``name``."""
    if isinstance(obj, DeviceArray):
        return obj
    _require_arrays(op)
    if _is_torch_tensor(obj):
        return _from_torch(obj, op, name)
    try:
        cai: Dict[str, Any] = obj.__cuda_array_interface__
    except AttributeError:
        raise TypeError(f"{op}: {name} must be a device array (fastlm.DeviceArray or an object "
                        f"exporting __cuda_array_interface__), got {type(obj).__name__}") from None
    shape, dtype, ptr, readonly, stream = _parse_interface(cai, f"{op}: {name}")
    if stream not in (None, 1, 2):
        _C._cuda_wait_stream(stream)
    return DeviceArray._borrow(ptr, shape, dtype, obj, readonly, f"{op}: {name}")


def _interface_int(v: Any, what: str, low: int = 0) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or not low <= v < 2**63:
        raise ValueError(f"{what} must be an integer in [{low}, 2**63), got {v!r}")
    return int(v)


def _parse_interface(cai: Any, who: str) -> tuple:
    """(shape, dtype name, pointer, readonly, stream) of a __cuda_array_interface__
    dict (version 2 or 3), every field checked before the memory is touched:
    ValueError or TypeError naming ``who`` and the field."""
    if not isinstance(cai, dict):
        raise TypeError(f"{who}: __cuda_array_interface__ must be a dict, got {type(cai).__name__}")
    for key in ("shape", "typestr", "data"):
        if key not in cai:
            raise ValueError(f"{who}: __cuda_array_interface__ has no {key!r}")
    if not isinstance(cai["shape"], (tuple, list)):
        raise ValueError(f"{who}: __cuda_array_interface__ 'shape' must be a tuple, got {cai['shape']!r}")
    shape = tuple(_interface_int(d, f"{who}: a dimension of 'shape'") for d in cai["shape"])
    typestr = cai["typestr"]
    dtype = _TYPESTRS.get(typestr) if isinstance(typestr, str) else None
    if dtype is None:
        raise TypeError(f"{who} has typestr {typestr!r}, which fastlm does not take on the GPU "
                        f"({', '.join(_TYPESTRS)}: float32, int32, int64; bfloat16 through fastlm or torch)")
    itemsize = np.dtype(typestr).itemsize
    if int(np.prod(shape, dtype=object)) * itemsize >= 2**62:
        raise ValueError(f"{who}: __cuda_array_interface__ 'shape' {shape} is too large")
    if cai.get("mask") is not None:
        raise ValueError(f"{who} has a mask, which fastlm does not support")
    strides = cai.get("strides")
    if strides is not None:
        if not isinstance(strides, (tuple, list)) or len(strides) != len(shape):
            raise ValueError(f"{who}: __cuda_array_interface__ 'strides' must be None or one int per dimension, "
                             f"got {strides!r}")
        strides = tuple(_interface_int(st, f"{who}: a stride", -2**62) for st in strides)
    if not _c_contiguous(shape, strides, itemsize):
        raise ValueError(f"{who} must be C-contiguous")
    data = cai["data"]
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise ValueError(f"{who}: __cuda_array_interface__ 'data' must be (pointer, readonly), got {data!r}")
    ptr = _interface_int(data[0] or 0, f"{who}: the data pointer")
    if ptr == 0 and 0 not in shape:
        raise ValueError(f"{who}: __cuda_array_interface__ has a null data pointer for a non-empty array")
    stream = cai.get("stream")
    if stream is not None:
        # Version 3 of the interface: 1 and 2 are the default streams, 0 is forbidden.
        stream = _interface_int(stream, f"{who}: __cuda_array_interface__ 'stream'", 1)
    return shape, dtype, ptr, bool(data[1]), stream

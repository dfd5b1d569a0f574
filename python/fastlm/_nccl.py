"""NCCL all-reduce of device buffers, through ctypes.

NCCL is loaded at run time, never linked: from the ``nvidia-nccl-cu12`` wheel
(``nvidia/nccl/lib/libnccl.so.2``), ``FASTLM_NCCL_LIBRARY``, or the system's
``libnccl.so.2``. The communicator's unique id is made on rank 0 and sent to
the others over MPI, as llm.c does. Work is queued on the legacy default
stream, which is where fastlm queues its kernels, so it is ordered with them.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Any, List, Optional

_NCCL_FLOAT32 = 7  # ncclDataType_t
_NCCL_SUM, _NCCL_AVG = 0, 4  # ncclRedOp_t (ncclAvg since NCCL 2.10)
_UNIQUE_ID_BYTES = 128


class _UniqueId(ctypes.Structure):
    _fields_ = [("internal", ctypes.c_char * _UNIQUE_ID_BYTES)]


def library_candidates() -> List[str]:
    """Where libnccl is looked for, in order."""
    found: List[str] = []
    env = os.environ.get("FASTLM_NCCL_LIBRARY")
    if env:
        found.append(env)
    try:
        import nvidia.nccl  # the nvidia-nccl-cu12 wheel: a namespace package holding lib/
        for root in getattr(nvidia.nccl, "__path__", []):
            found.append(os.path.join(root, "lib", "libnccl.so.2"))
    except ImportError:
        pass
    system = ctypes.util.find_library("nccl")
    if system:
        found.append(system)
    found.append("libnccl.so.2")
    return found


def load_library(candidates: Optional[List[str]] = None) -> ctypes.CDLL:
    """The first loadable libnccl among ``candidates`` (default:
    :func:`library_candidates`); ``RuntimeError`` listing what was tried."""
    tried = []
    for path in library_candidates() if candidates is None else candidates:
        try:
            return ctypes.CDLL(path)
        except OSError as e:
            tried.append(f"{path} ({e})")
    raise RuntimeError("NCCL is needed to all-reduce device buffers, but no libnccl could be loaded; "
                       "pip install nvidia-nccl-cu12, or set FASTLM_NCCL_LIBRARY to libnccl.so.2. Tried: "
                       + "; ".join(tried))


class NcclCommunicator:
    """One NCCL communicator over the ranks of a :class:`fastlm.distributed.World`."""

    def __init__(self, world: Any) -> None:
        from .cuda import cuda_available
        from . import _C
        if not cuda_available():
            raise RuntimeError(f"all_reduce of a device buffer needs a GPU: {_C.cuda_unavailable_reason()}")
        self.lib = load_library()
        self.lib.ncclGetErrorString.restype = ctypes.c_char_p
        uid = _UniqueId()
        if world.rank == 0:
            self._check(self.lib.ncclGetUniqueId(ctypes.byref(uid)), "ncclGetUniqueId")
        raw = world.broadcast_object(bytes(uid.internal) if world.rank == 0 else None)
        ctypes.memmove(ctypes.byref(uid), raw, _UNIQUE_ID_BYTES)
        self.comm = ctypes.c_void_p()
        self._check(self.lib.ncclCommInitRank(ctypes.byref(self.comm), world.size, uid, world.rank),
                    "ncclCommInitRank")
        self.size = world.size

    def _check(self, rc: int, what: str) -> None:
        if rc != 0:
            raise RuntimeError(f"{what} failed: NCCL error {rc} ({self.lib.ncclGetErrorString(rc).decode()})")

    def all_reduce(self, buf: Any, op: str) -> None:
        """Reduce the float32 device buffer ``buf`` in place (``"mean"`` or ``"sum"``)."""
        from .cuda import as_device_array
        arr = as_device_array(buf, "all_reduce", "buf")
        cai = arr.__cuda_array_interface__
        if cai["typestr"] != "<f4":
            raise TypeError(f"all_reduce: a device buffer must be float32, got {cai['typestr']}")
        count = 1
        for d in cai["shape"]:
            count *= int(d)
        ptr = ctypes.c_void_p(cai["data"][0])
        self._check(self.lib.ncclAllReduce(ptr, ptr, ctypes.c_size_t(count), _NCCL_FLOAT32,
                                           _NCCL_AVG if op == "mean" else _NCCL_SUM, self.comm,
                                           ctypes.c_void_p(0)), "ncclAllReduce")

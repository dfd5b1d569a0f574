"""fastlm: train and sample small language models on hand-written kernels.

The compiled core (``fastlm._C``) holds CPU kernels built three times
(generic x86-64, AVX2+FMA, AVX-512), one of which is chosen at import;
``FASTLM_CPU_ISA=generic|avx2|avx512`` forces a lower one. Builds with CUDA
also hold GPU kernels, used by :mod:`fastlm.ops` for device arrays (see
:mod:`fastlm.cuda`); ``cuda_available()`` tells whether a GPU can run them.
"""
from __future__ import annotations

from typing import Any, Dict, List

from . import _C
from . import data, ops
from .cuda import DeviceArray, cuda_available, to_device
from .lm import LanguageModel
from .model import Transformer
from .rnn import GRULM, LSTMLM
from .tokenizers import ByteTokenizer, CharTokenizer, load_tokenizer
from .train import History

__version__: str = _C.build_info()["version"]

__all__ = [
    "__version__",
    "ByteTokenizer",
    "CharTokenizer",
    "DeviceArray",
    "GRULM",
    "History",
    "LSTMLM",
    "LanguageModel",
    "Transformer",
    "data",
    "load_tokenizer",
    "available_cpu_isas",
    "build_info",
    "cpu_isa",
    "cuda_available",
    "get_num_threads",
    "ops",
    "set_num_threads",
    "to_device",
]


def cpu_isa() -> str:
    """Name of the active CPU kernel table: ``"generic"``, ``"avx2"`` or ``"avx512"``."""
    return _C.cpu_isa()


def available_cpu_isas() -> List[str]:
    """ISAs this CPU and its OS can run, lowest first (always starts with ``"generic"``)."""
    return list(_C.available_cpu_isas())


def set_num_threads(n: int) -> None:
    """Set the number of OpenMP threads the kernels use (``n >= 1``)."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"set_num_threads: n must be an int, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"set_num_threads: n must be >= 1, got {n}")
    _C.set_num_threads(n)


def get_num_threads() -> int:
    """Number of OpenMP threads the kernels use."""
    return _C.get_num_threads()


def build_info() -> Dict[str, Any]:
    """How this build was made: ``version``, ``compiler``, ``cpu_isas`` (compiled in),
    ``cuda`` (whether CUDA kernels are compiled in), ``cuda_archs`` (the GPU
    architectures they were compiled for, CMake style, e.g. ``"80-real"``; empty
    without CUDA), ``openmp``; plus the active ``cpu_isa`` and ``num_threads``."""
    info = dict(_C.build_info())
    info["cpu_isa"] = cpu_isa()
    info["num_threads"] = get_num_threads()
    return info

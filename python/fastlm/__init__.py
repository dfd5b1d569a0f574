"""fastlm: train and sample small language models on hand-written kernels.

The compiled core (``fastlm._C``) holds CPU kernels built three times
(generic x86-64, AVX2+FMA, AVX-512) plus AVX-512 with a bfloat16 GEMM
(avx512bf16, AVX512_BF16), one of which is chosen at import;
``FASTLM_CPU_ISA=generic|avx2|avx512|avx512bf16`` forces a lower one. Builds with CUDA
also hold GPU kernels, used by :mod:`fastlm.ops` for device arrays (see
:mod:`fastlm.cuda`); ``cuda_available()`` tells whether a GPU can run them.
"""
from __future__ import annotations

from typing import Any, Dict, List

from . import _C
from ._checks import check_int
from . import corpus, data, distributed, ops
from .bpe import BPETokenizer
from .cuda import DeviceArray, cuda_available, to_device
from .lm import LanguageModel
from .model import Transformer
from .pipeline import pipeline
from .rnn import GRULM, LSTMLM
from .tokenizers import ByteTokenizer, CharTokenizer, load_tokenizer
from .train import History

__version__: str = _C.build_info()["version"]

__all__ = [
    "__version__",
    "MAX_THREADS",
    "BPETokenizer",
    "ByteTokenizer",
    "CharTokenizer",
    "DeviceArray",
    "GRULM",
    "History",
    "LSTMLM",
    "LanguageModel",
    "Transformer",
    "data",
    "distributed",
    "load_tokenizer",
    "available_cpu_isas",
    "build_info",
    "cpu_amx",
    "cpu_isa",
    "corpus",
    "cuda_available",
    "get_num_threads",
    "ops",
    "pipeline",
    "set_num_threads",
    "to_device",
]


def cpu_isa() -> str:
    """Name of the active CPU kernel table: ``"generic"``, ``"avx2"``, ``"avx512"`` or
    ``"avx512bf16"`` (avx512 plus the bfloat16 GEMM of ``precision="bf16"``)."""
    return _C.cpu_isa()


def cpu_amx() -> bool:
    """Whether ``precision="bf16"`` GEMMs run on Intel AMX tiles (AMX-BF16, Sapphire
    Rapids and later): where the CPU and OS offer them, unless the environment
    variable ``FASTLM_CPU_AMX=0`` turned them off (then ``vdpbf16ps`` runs them)."""
    return _C.cpu_amx()


def available_cpu_isas() -> List[str]:
    """ISAs this CPU and its OS can run, lowest first (always starts with ``"generic"``)."""
    return list(_C.available_cpu_isas())


# Far above any core count, far below what the OpenMP runtime survives (it
# fails to create a team of some 30,000 threads and ends the process).
MAX_THREADS: int = _C.MAX_THREADS


def set_num_threads(n: int) -> None:
    """Set the number of OpenMP threads the kernels use (1 <= n <= ``MAX_THREADS``),
    for every Python thread of the process, as ``torch.set_num_threads``."""
    _C.set_num_threads(check_int(n, "set_num_threads: n", 1, MAX_THREADS))


def get_num_threads() -> int:
    """Number of OpenMP threads the kernels use."""
    return _C.get_num_threads()


def build_info() -> Dict[str, Any]:
    """How this build was made: ``version``, ``compiler``, ``cpu_isas`` (compiled in),
    ``cuda`` (whether CUDA kernels are compiled in), ``cuda_archs`` (the GPU
    architectures they were compiled for, CMake style, e.g. ``"80-real"``; empty
    without CUDA), ``openmp``; plus the active ``cpu_isa``, ``cpu_amx`` and ``num_threads``."""
    info = dict(_C.build_info())
    info["cpu_isa"] = cpu_isa()
    info["cpu_amx"] = cpu_amx()
    info["num_threads"] = get_num_threads()
    return info

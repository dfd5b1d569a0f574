"""``fastlm info``: the version, CPU ISA, threads, build and CUDA
information, as a bug report wants it."""
from __future__ import annotations

import argparse
import sys


def cmd_info(a: argparse.Namespace) -> int:
    import platform

    import numpy as np

    import fastlm
    from . import distributed
    info = fastlm.build_info()
    lines = [
        f"fastlm {fastlm.__version__}",
        f"python {platform.python_version()} ({sys.executable}), numpy {np.__version__}",
        f"platform: {platform.platform()}",
        f"cpu isa: {info['cpu_isa']} (this machine can run: {', '.join(fastlm.available_cpu_isas())}; "
        f"compiled: {', '.join(info.get('cpu_isas', []))})",
        f"precision: fp32{', bf16' if info['cpu_isa'] == 'avx512bf16' else ''} "
        f"(bf16 needs the avx512bf16 ISA; its GEMMs run on "
        f"{'AMX tiles' if info['cpu_amx'] else 'vdpbf16ps'})",
        f"threads: {info['num_threads']}",
        f"compiler: {info.get('compiler', 'unknown')}, openmp: {info.get('openmp', False)}",
    ]
    if info.get("cuda"):
        from . import _C, cuda
        if cuda.cuda_available():
            lines.append(f"cuda: compiled in ({', '.join(info.get('cuda_archs', []))}); device: "
                         f"{cuda.device_name()} (compute capability {_C.cuda_compute_capability()})")
        else:
            lines.append(f"cuda: compiled in ({', '.join(info.get('cuda_archs', []))}); no usable device: "
                         f"{_no_device_reason()}")
    else:
        lines.append("cuda: not compiled in; devices: none")
    lines.append(f"mpi: {distributed.mpi_runtime()}")
    print("\n".join(lines))
    return 0


def _nvidia_driver_loadable() -> bool:
    import ctypes
    try:
        ctypes.CDLL("nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1")
    except OSError:
        return False
    return True


def _no_device_reason() -> str:
    """Why CUDA is unusable, in a newcomer's terms: without a driver the CUDA
    runtime blames the driver's version, as if there were one."""
    if not _nvidia_driver_loadable():
        return "no NVIDIA driver is installed (libcuda could not be loaded)"
    from . import _C
    return _C.cuda_unavailable_reason()

"""Model FLOPs utilisation (MFU), as nanoGPT's ``estimate_mfu``: the FLOP/s a
training step achieves over the machine's peak.

The peak is measured, not looked up: a CPU's clock under load is rarely
published (virtual machines hide it), and its FMA ports per core differ
between parts of one ISA. :func:`peak_flops` times fastlm's own GEMM micro-kernel
on a product that stays in the L1/L2 caches on one thread (best of a few short
runs, about 50 ms once per process) and multiplies by the thread count, so 100%
MFU means every core multiplying at the rate of the register-blocked kernel,
close to the FMA units' limit. ``FASTLM_PEAK_FLOPS`` (FLOP/s, e.g. ``2e12``)
overrides the measurement.
"""
from __future__ import annotations

import functools
import os
import time

import numpy as np

__all__ = ["peak_flops", "mfu"]


@functools.lru_cache(maxsize=None)
def _core_flops(isa: str, precision: str, amx: bool) -> float:
    # isa and amx are read by the GEMM itself; as arguments they key the cache,
    # so switching either measures again.
    from . import _C, ops
    threads = _C.get_num_threads()
    # float32: an A block of 192 KB and B of 256 KB, cache resident on one
    # thread; bfloat16 (vdpbf16ps or AMX tiles) does the same work in a fraction
    # of the time, so a larger product, still within L2, keeps the timing fair.
    m, n, k = (512, 512, 512) if precision == "bf16" else (192, 256, 256)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    best = float("inf")
    gemm = "bf16" if precision == "bf16" else "highest"
    try:
        _C.set_num_threads(1)
        ops.matmul(a, b, precision=gemm)  # warm the caches and the code
        deadline = time.perf_counter() + 0.05
        while True:
            t0 = time.perf_counter()
            for _ in range(4):
                ops.matmul(a, b, precision=gemm)
            best = min(best, (time.perf_counter() - t0) / 4)
            if time.perf_counter() > deadline:
                break
    finally:
        _C.set_num_threads(threads)
    return 2.0 * m * n * k / best


def peak_flops(precision: str = "fp32") -> float:
    """Peak FLOP/s of this process's kernel threads for GEMMs in ``precision``
    ("fp32", or "bf16": the bfloat16 GEMM, on AMX tiles where it runs there):
    ``FASTLM_PEAK_FLOPS`` when set, else one core's measured GEMM rate (at the
    active CPU ISA) times ``fastlm.get_num_threads()``."""
    env = os.environ.get("FASTLM_PEAK_FLOPS", "")
    if env:
        try:
            v = float(env)
        except ValueError:
            v = -1.0
        if not (v > 0 and v < float("inf")):
            raise ValueError(f"FASTLM_PEAK_FLOPS must be a positive number of FLOP/s, got {env!r}")
        return v
    from . import _C
    bf16 = precision == "bf16" and _C.cpu_isa() == "avx512bf16"
    return _core_flops(_C.cpu_isa(), "bf16" if bf16 else "fp32", _C.cpu_amx()) * _C.get_num_threads()


def mfu(flops_per_token: float, tokens_per_sec: float, peak: float) -> float:
    """The fraction of ``peak`` that ``tokens_per_sec`` tokens of
    ``flops_per_token`` (forward and backward) each achieve."""
    return flops_per_token * tokens_per_sec / peak

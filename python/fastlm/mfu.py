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
def _core_flops(isa: str) -> float:
    from . import _C, ops
    threads = _C.get_num_threads()
    m, n, k = 192, 256, 256  # A block of 192 KB and B of 256 KB: cache resident, one thread
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    best = float("inf")
    try:
        _C.set_num_threads(1)
        ops.matmul(a, b)  # warm the caches and the code
        deadline = time.perf_counter() + 0.05
        while True:
            t0 = time.perf_counter()
            for _ in range(4):
                ops.matmul(a, b)
            best = min(best, (time.perf_counter() - t0) / 4)
            if time.perf_counter() > deadline:
                break
    finally:
        _C.set_num_threads(threads)
    return 2.0 * m * n * k / best


def peak_flops() -> float:
    """Peak float32 FLOP/s of this process's kernel threads: ``FASTLM_PEAK_FLOPS``
    when set, else one core's measured GEMM rate (at the active CPU ISA) times
    ``fastlm.get_num_threads()``."""
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
    return _core_flops(_C.cpu_isa()) * _C.get_num_threads()


def mfu(flops_per_token: float, tokens_per_sec: float, peak: float) -> float:
    """The fraction of ``peak`` that ``tokens_per_sec`` tokens of
    ``flops_per_token`` (forward and backward) each achieve."""
    return flops_per_token * tokens_per_sec / peak

"""Shared benchmark helpers: every contender timed side by side, interleaved
round by round (so load from other processes hits all alike), medians reported
with ratios. Run: ``python -m pytest bench -q -s``."""
from __future__ import annotations

import time

import numpy as np
import pytest

import fastlm

THREADS = 2
ROUNDS = 5


def torch_or_none():
    try:
        import torch
        return torch
    except ImportError:
        return None


@pytest.fixture(autouse=True)
def threads():
    """fastlm and PyTorch both on THREADS threads (NumPy's BLAS uses its own default)."""
    before = fastlm.get_num_threads()
    fastlm.set_num_threads(THREADS)
    torch = torch_or_none()
    torch_before = torch.get_num_threads() if torch else None
    if torch:
        torch.set_num_threads(THREADS)
    yield
    fastlm.set_num_threads(before)
    if torch:
        torch.set_num_threads(torch_before)


def medians(contenders: dict, rounds: int = ROUNDS) -> dict:
    """Median seconds of each callable; a contender may be (setup, fn) where
    setup runs untimed before every call. Round 0 only warms up."""
    times = {k: [] for k in contenders}
    for r in range(rounds + 1):
        for k, c in contenders.items():
            setup, fn = c if isinstance(c, tuple) else (None, c)
            if setup is not None:
                setup()
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            if r:
                times[k].append(dt)
    return {k: float(np.median(v)) for k, v in times.items()}


def report(op: str, size: str, work: float, t: dict, unit: str = "GB/s") -> dict:
    """Print one line per op and size: throughput of each contender (work is
    bytes for GB/s, flops for GFLOP/s) and ratio = reference time / fastlm time."""
    parts = [f"{k} {work / v / 1e9:.1f} {unit} ({v * 1e3:.2f} ms)" for k, v in t.items()]
    ours = [k for k in t if k.startswith("fastlm")]
    refs = [k for k in t if not k.startswith("fastlm")]
    ratios = {f"{r}/{o}": t[r] / t[o] for r in refs for o in ours}
    print(f"\n{op} {size} [{fastlm.cpu_isa()}, {THREADS} threads]: " + ", ".join(parts) +
          "; speedup " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
    return ratios

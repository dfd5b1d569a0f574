"""Shared benchmark plumbing; the workloads, reference models and the
interleaved timer live in ``fastlm.bench`` (one copy for these benchmarks and
``fastlm bench``). Run: ``PYTHONPATH=python python3 -m pytest bench -q -s``.

FASTLM_BENCH_THREADS sets the thread count of fastlm and PyTorch alike
(default 2; NumPy's BLAS keeps its own).
"""
from __future__ import annotations

import os
import time
from typing import Optional

import pytest

from fastlm.bench import Case, Result, steady_allocator, use_threads

THREADS = int(os.environ.get("FASTLM_BENCH_THREADS", "2"))
steady_allocator()  # every contender timed in its steady state, whatever ran before


@pytest.fixture(autouse=True)
def threads():
    with use_threads(THREADS):
        yield


def run(benchmark, case: Case, rounds: Optional[int] = None) -> Result:
    """Times every contender of the case interleaved, prints the line (rates and
    ratios), then hands fastlm to pytest-benchmark (fewer rounds when it is slow),
    after the same pause and warm-up calls the interleaved timer gives it: timed
    straight after PyTorch, its first calls would pay for PyTorch's still-spinning
    threads (the small LSTM read 102 ms there against 66 ms interleaved)."""
    if case.check is not None:
        print("\n" + case.check(), end="")
    res = case.run(rounds)
    print("\n" + res.line())
    ours = case.contenders["fastlm"]
    setup, fn = ours if isinstance(ours, tuple) else (None, ours)
    time.sleep(case.pause)
    benchmark.pedantic(fn, setup=setup, rounds=3 if res.median("fastlm") < 0.2 else 1,
                       iterations=1, warmup_rounds=max(1, case.warmup))
    benchmark.extra_info.update(unit=case.unit, work=case.work, **res.ratios(),
                                **{f"{k} rate": res.rate(k) for k in res.times})
    return res

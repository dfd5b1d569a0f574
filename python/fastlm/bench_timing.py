"""The interleaved timer of ``fastlm bench`` and ``bench/``: a :class:`Case`
(named contenders doing the same work) timed into a :class:`Result`.

Every contender of a case is timed in turn, in blocks, round by round, so that
load from other processes on a shared machine hits all alike; a block starts
after a pause and untimed calls, which absorb the hand-over from the library
before (its threads still spinning on the same cores). Rates are of median
times; a ratio is the median over rounds of reference time / fastlm time in
the same round: above 1, fastlm is faster.
"""
from __future__ import annotations

import contextlib
import ctypes
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

import fastlm

from .bench_models import torch

Fn = Callable[[], object]
Contender = Union[Fn, Tuple[Fn, Fn]]  # fn, or (setup run untimed before each call, fn)
SCALE = {"GFLOP/s": 1e9, "GB/s": 1e9, "tokens/s": 1.0}


def interleaved_times(contenders: Dict[str, Contender], rounds: int = 5, block: int = 1,
                      warmup: int = 1, first: int = 1,
                      pause: float = 0.1) -> Dict[str, List[List[float]]]:
    """Seconds per call of each contender, per round: `first` untimed calls each, then
    `rounds` rounds in which every contender in turn sleeps `pause` seconds
    (long enough for the library before to park its threads: OpenBLAS's spin
    for some 2^28 cycles and slow whoever runs next on the same cores) and runs
    `warmup` untimed calls (waking its own threads) and `block` timed ones."""
    for name, v, low in (("rounds", rounds, 1), ("block", block, 1), ("warmup", warmup, 0), ("first", first, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"interleaved_times: {name} must be an int >= {low}, got {v!r}")

    def call(c: Contender) -> float:
        setup, fn = c if isinstance(c, tuple) else (None, c)
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    for c in contenders.values():
        for _ in range(first):
            call(c)
    times: Dict[str, List[List[float]]] = {k: [] for k in contenders}
    for _ in range(rounds):
        for k, c in contenders.items():
            time.sleep(pause)
            for _ in range(warmup):
                call(c)
            times[k].append([call(c) for _ in range(block)])
    return times


def steady_allocator() -> bool:
    """Sets glibc's malloc to the state a long-running process settles in; returns
    whether it could (False elsewhere than glibc, where nothing changes).

    glibc serves a block above its mmap threshold with fresh pages, faulted in
    on first touch at every allocation, and raises the threshold (up to 32 MiB)
    each time such a block is freed. A library that allocates large temporaries every
    call, as PyTorch does, so runs slower until some earlier workload has raised
    it (PyTorch's LSTM at the small RNN size: 20,000 page faults a step, a third
    of its time), and a benchmark would depend on what ran before it. Set up
    front to that maximum, with the trim threshold at twice it as glibc would
    have it, every contender is timed in its steady state. fastlm allocates its
    buffers once and is not affected."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # no C library by that name, or no mallopt
        return False
    m_trim_threshold, m_mmap_threshold, mmap_max = -1, -3, 32 << 20
    return bool(mallopt(m_mmap_threshold, mmap_max)) and bool(mallopt(m_trim_threshold, 2 * mmap_max))


@contextlib.contextmanager
def use_threads(n: int) -> Iterator[None]:
    """fastlm and PyTorch both on n threads for the block (NumPy's BLAS keeps its own)."""
    before = fastlm.get_num_threads()
    torch_before = torch.get_num_threads() if torch is not None else None
    fastlm.set_num_threads(n)
    if torch is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        fastlm.set_num_threads(before)
        if torch is not None:
            torch.set_num_threads(torch_before)


@dataclass
class Case:
    """One workload: `work` units (flops, bytes or tokens) per call of every contender.
    Contender "fastlm" comes first; names starting "fastlm" are ours, the rest references."""
    name: str
    unit: str
    work: float
    contenders: Dict[str, Contender]
    rounds: int = 5
    block: int = 1
    warmup: int = 1
    first: int = 1
    pause: float = 0.1
    check: Optional[Callable[[], str]] = None  # asserts fastlm agrees with the reference

    def __post_init__(self) -> None:
        if self.unit not in SCALE:
            raise ValueError(f"Case {self.name!r}: unit must be one of {sorted(SCALE)}, got {self.unit!r}")

    def run(self, rounds: Optional[int] = None, keep: Optional[Sequence[str]] = None) -> "Result":
        cs = {k: c for k, c in self.contenders.items() if keep is None or k in keep}
        return Result(self, interleaved_times(cs, self.rounds if rounds is None else rounds, self.block,
                                              self.warmup, self.first, self.pause))


@dataclass
class Result:
    case: Case
    times: Dict[str, List[List[float]]] = field(default_factory=dict)  # per round, per call

    def median(self, k: str) -> float:
        return float(np.median(self.times[k]))

    def best(self, k: str) -> float:
        return float(np.min(self.times[k]))

    def ratio(self, ref: str, ours: str = "fastlm") -> float:
        """Median over rounds of ref's time / ours' time in the same round: load
        that comes and goes between rounds cancels out."""
        return float(np.median([np.median(a) / np.median(b)
                                for a, b in zip(self.times[ref], self.times[ours])]))

    def rate(self, k: str) -> float:
        return self.case.work / self.median(k) / SCALE[self.case.unit]

    def ours(self) -> List[str]:
        return [k for k in self.times if k.startswith("fastlm")]

    def refs(self) -> List[str]:
        return [k for k in self.times if not k.startswith("fastlm")]

    def ratios(self) -> Dict[str, float]:
        """ratio() for every (reference, fastlm variant)."""
        return {f"{r}/{o}": self.ratio(r, o) for r in self.refs() for o in self.ours()}

    def line(self) -> str:
        """Every contender's rate (median and best-call times) and the ratios (per
        round, and of the best calls)."""
        u = self.case.unit
        parts = [f"{k} {self.rate(k):,.1f} {u} ({self.median(k) * 1e3:.2f} ms, best "
                 f"{self.best(k) * 1e3:.2f})" for k in self.times]
        rs = [f"{r}/{o} {self.ratio(r, o):.2f}x (best {self.best(r) / self.best(o):.2f}x)"
              for r in self.refs() for o in self.ours()]
        return (f"{self.case.name} [{fastlm.cpu_isa()}, {fastlm.get_num_threads()} threads]: "
                + ", ".join(parts) + ("; speedup " + ", ".join(rs) if rs else ""))

"""Fused cross-entropy (forward + backward; also in place and loss only) and
softmax: fastlm against PyTorch (when importable) and NumPy, side by side, in
GB/s of minimal traffic (one read of each input and one write of the output,
4 bytes per element)."""
from __future__ import annotations

import numpy as np
import pytest

from fastlm import ops
from fastlm.bench import Case, cross_entropy_case, torch

from conftest import run


def rand(*shape):
    return np.random.default_rng(0).standard_normal(shape, dtype=np.float32) * 2


@pytest.mark.parametrize("rows,vocab", [(4096, 8192), (1024, 50304)])
def test_bench_cross_entropy(benchmark, rows, vocab):
    run(benchmark, cross_entropy_case(rows, vocab))


@pytest.mark.parametrize("rows,cols", [(4096, 8192), (1024, 50304)])
def test_bench_softmax(benchmark, rows, cols):
    x = rand(rows, cols)

    def numpy_softmax():
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    cs = {"fastlm": lambda: ops.softmax(x), "numpy": numpy_softmax}
    if torch is not None:
        xt = torch.from_numpy(x)
        cs["torch"] = lambda: torch.softmax(xt, dim=-1)
    run(benchmark, Case(f"softmax ({rows}, {cols})", "GB/s", 2 * x.nbytes, cs, block=3))


@pytest.mark.parametrize("rows,cols", [(4096, 8192)])
def test_bench_softmax_backward(benchmark, rows, cols):
    y = ops.softmax(rand(rows, cols))
    dy = rand(rows, cols)
    cs = {"fastlm": lambda: ops.softmax_backward(dy, y),
          "numpy": lambda: y * (dy - (dy * y).sum(axis=1, keepdims=True))}
    if torch is not None:
        yt, dyt = torch.from_numpy(y), torch.from_numpy(dy)
        cs["torch"] = lambda: torch._softmax_backward_data(dyt, yt, -1, yt.dtype)
    # two reads (dy, y) and one write (dx)
    run(benchmark, Case(f"softmax_backward ({rows}, {cols})", "GB/s", 3 * y.nbytes, cs, block=3))

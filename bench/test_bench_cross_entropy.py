"""Benchmarks: fused cross-entropy (forward + backward) and softmax, fastlm
against PyTorch (when importable) and NumPy, side by side in one run.

    PYTHONPATH=python python3 -m pytest bench/test_bench_cross_entropy.py -q -s --benchmark-disable-gc

pytest-benchmark times fastlm; every contender (fastlm included, so the
ratios compare like with like) is also timed here, interleaved round by
round so that load from other processes hits all of them alike, and the
median is reported. Bandwidth counts the minimal traffic: one read of the
input and one write of the output, 4 bytes each per element.
"""
from __future__ import annotations

import numpy as np
import pytest

import fastlm
from fastlm import ops

from conftest import ROUNDS, THREADS, medians, report, torch_or_none


def ce_numpy(x, t):
    m = x.max(axis=1, keepdims=True)
    e = np.exp(x - m)
    s = e.sum(axis=1, keepdims=True)
    rows = np.arange(x.shape[0])
    loss = float(np.mean(np.log(s[:, 0]) + m[:, 0] - x[rows, t]))
    g = e / s
    g[rows, t] -= 1
    g /= x.shape[0]
    return loss, g


@pytest.mark.parametrize("rows,vocab", [(4096, 8192), (1024, 50304)])
def test_bench_cross_entropy(benchmark, rows, vocab):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, vocab), dtype=np.float32) * 2
    t = rng.integers(0, vocab, rows)
    buf = np.empty_like(x)
    benchmark.extra_info.update(isa=fastlm.cpu_isa(), threads=THREADS)
    benchmark.pedantic(lambda: ops.cross_entropy(x, t), rounds=3, iterations=1, warmup_rounds=1)

    contenders = {
        "fastlm": lambda: ops.cross_entropy(x, t),
        "fastlm(in place)": (lambda: np.copyto(buf, x), lambda: ops.cross_entropy(buf, t, out=buf)),
        "fastlm(loss only)": lambda: ops.cross_entropy(x, t, compute_grad=False),
    }
    torch = torch_or_none()
    if torch is not None:
        F = torch.nn.functional
        xt, tt = torch.from_numpy(x), torch.from_numpy(t)

        def torch_fwd_bwd():
            a = xt.detach().requires_grad_(True)
            F.cross_entropy(a, tt).backward()
            return a.grad

        contenders["torch"] = torch_fwd_bwd
        loss, g = ops.cross_entropy(x, t)
        gt = torch_fwd_bwd()
        np.testing.assert_allclose(loss, F.cross_entropy(xt, tt).item(), rtol=1e-5)
        np.testing.assert_allclose(g, gt.numpy(), rtol=1e-4, atol=1e-9)
        del gt
    contenders["numpy"] = lambda: ce_numpy(x, t)
    tm = medians(contenders, rounds=ROUNDS if rows * vocab < 60_000_000 else 3)
    report("cross_entropy fwd+bwd",
           f"({rows}, {vocab})", 2 * x.nbytes, tm)


@pytest.mark.parametrize("rows,cols", [(4096, 8192), (1024, 50304)])
def test_bench_softmax(benchmark, rows, cols):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, cols), dtype=np.float32) * 2
    benchmark.extra_info.update(isa=fastlm.cpu_isa(), threads=THREADS)
    benchmark.pedantic(lambda: ops.softmax(x), rounds=3, iterations=1, warmup_rounds=1)

    def numpy_softmax():
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    contenders = {"fastlm": lambda: ops.softmax(x)}
    torch = torch_or_none()
    if torch is not None:
        xt = torch.from_numpy(x)
        contenders["torch"] = lambda: torch.softmax(xt, dim=-1)
    contenders["numpy"] = numpy_softmax
    report("softmax", f"({rows}, {cols})",
           2 * x.nbytes, medians(contenders))


@pytest.mark.parametrize("rows,cols", [(4096, 8192)])
def test_bench_softmax_backward(benchmark, rows, cols):
    rng = np.random.default_rng(0)
    y = ops.softmax(rng.standard_normal((rows, cols), dtype=np.float32))
    dy = rng.standard_normal((rows, cols), dtype=np.float32)
    benchmark.extra_info.update(isa=fastlm.cpu_isa(), threads=THREADS)
    benchmark.pedantic(lambda: ops.softmax_backward(dy, y), rounds=3, iterations=1,
                       warmup_rounds=1)
    contenders = {"fastlm": lambda: ops.softmax_backward(dy, y)}
    torch = torch_or_none()
    if torch is not None:
        yt, dyt = torch.from_numpy(y), torch.from_numpy(dy)
        contenders["torch"] = lambda: torch._softmax_backward_data(dyt, yt, -1, yt.dtype)
    contenders["numpy"] = lambda: y * (dy - (dy * y).sum(axis=1, keepdims=True))
    # two reads (dy, y) and one write (dx)
    report("softmax_backward", f"({rows}, {cols})",
           3 * y.nbytes, medians(contenders))

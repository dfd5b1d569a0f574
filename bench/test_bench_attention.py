"""Attention forward + backward: fastlm vs PyTorch SDPA vs naive NumPy, float32, causal.

Run: PYTHONPATH=python python3 -m pytest bench/test_bench_attention.py -q -s --benchmark-disable-gc

fastlm goes through the `benchmark` fixture; for the printed ratio the three
implementations are timed in alternating blocks, round by round, so that load
from other processes on a shared machine hits them alike; ratios are of
median times (and of best times, steadier under such load). GFLOP/s count the
useful work: 4 B H T^2 D for the forward's two products, halved by the causal
mask, and 2.5 times that for the backward's five.
"""
from __future__ import annotations

import time

import numpy as np
import pytest

import fastlm
from fastlm import ops

THREADS = 2
SIZES = [(8, 6, 256, 64), (4, 4, 64, 32)]  # GPT-2-small-ish heads; a tiny nanoGPT


def numpy_fwd_bwd(q, k, v, dout):
    """Naive float32 attention with the (T, T) matrix, forward and backward."""
    T, D = q.shape[2], q.shape[3]
    scale = np.float32(1 / np.sqrt(D))
    s = q @ np.swapaxes(k, -1, -2) * scale
    s = np.where(np.triu(np.ones((T, T), bool), 1), np.float32(-np.inf), s)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    out = p @ v
    dv = np.swapaxes(p, -1, -2) @ dout
    dp = dout @ np.swapaxes(v, -1, -2)
    ds = p * (dp - np.sum(dp * p, -1, keepdims=True)) * scale
    return out, ds @ k, np.swapaxes(ds, -1, -2) @ q, dv


def interleaved_times(fns, rounds, block):
    """Per implementation, (median, best) seconds per call over rounds of blocks.

    Each round times every implementation in turn, `block` calls after one
    untimed call: the untimed call absorbs the hand-over cost (the previous
    library's OpenMP threads still spinning on the same cores).
    """
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, f in fns.items():
            f()
            for _ in range(block):
                t = time.perf_counter()
                f()
                times[name].append(time.perf_counter() - t)
    return {name: (float(np.median(ts)), float(np.min(ts))) for name, ts in times.items()}


@pytest.mark.parametrize("B,H,T,D", SIZES)
def test_bench_attention(benchmark, B, H, T, D):
    before = fastlm.get_num_threads()
    fastlm.set_num_threads(THREADS)
    rng = np.random.default_rng(0)
    q, k, v, dout = (rng.standard_normal((B, H, T, D)).astype(np.float32) for _ in range(4))

    def fastlm_fwd_bwd():
        out, lse = ops.attention(q, k, v, causal=True)
        return ops.attention_backward(dout, q, k, v, out, lse, causal=True)

    fns = {"fastlm": fastlm_fwd_bwd, "numpy": lambda: numpy_fwd_bwd(q, k, v, dout)}
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        torch.set_num_threads(THREADS)
        tq, tk, tv = (torch.from_numpy(x).requires_grad_() for x in (q, k, v))
        tdout = torch.from_numpy(dout)

        def torch_fwd_bwd():
            tq.grad = tk.grad = tv.grad = None
            out = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=True)
            out.backward(tdout)

        fns["torch"] = torch_fwd_bwd
    try:
        benchmark(fastlm_fwd_bwd)
        timed = interleaved_times(fns, rounds=8, block=4 if T >= 256 else 40)
    finally:
        fastlm.set_num_threads(before)

    gflop = 3.5 * 4 * B * H * T * T * D * (T + 1) / (2 * T) / 1e9

    def fmt(name):
        med, best = timed[name]
        return f"{name} {gflop / med:.1f} GFLOP/s ({med * 1e3:.3f} ms, best {best * 1e3:.3f} ms)"

    line = (f"attention fwd+bwd causal (B,H,T,D)=({B},{H},{T},{D}) {THREADS} threads: "
            f"{fmt('fastlm')}, {fmt('numpy')}")
    ratios = [f"ratio fastlm/numpy {timed['numpy'][0] / timed['fastlm'][0]:.2f}"]
    if "torch" in timed:
        line += f", {fmt('torch')}"
        ratios.insert(0, f"ratio fastlm/torch {timed['torch'][0] / timed['fastlm'][0]:.2f} "
                         f"(best vs best {timed['torch'][1] / timed['fastlm'][1]:.2f})")
    print("\n" + line + ", " + ", ".join(ratios))

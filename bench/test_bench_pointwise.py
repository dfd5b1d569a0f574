"""Memory-bound ops: LayerNorm, GELU, AdamW, LSTM cell; fastlm vs PyTorch vs NumPy, float32.

Run: PYTHONPATH=python python3 -m pytest bench/test_bench_pointwise.py -q -s --benchmark-disable-gc
(FASTLM_BENCH_THREADS sets the thread count of fastlm and PyTorch alike; default 2.)

fastlm goes through the `benchmark` fixture; for the printed ratios the
implementations are timed interleaved, round by round, so that load from other
processes on a shared machine hits them alike. GB/s count the bytes each
kernel must move at least (every input read once, every output written once);
the LSTM cell, whose step is dominated by its four GEMMs, is given in GFLOP/s.
PyTorch runs its ATen kernels directly (no autograd bookkeeping) where it can.
"""
from __future__ import annotations

import os
import time

import numpy as np
import pytest

import fastlm
from fastlm import ops

# On a small shared machine two spinning OpenMP teams (ours and PyTorch's) can
# stall each other; FASTLM_BENCH_THREADS=1 gives the steadiest comparison.
THREADS = int(os.environ.get("FASTLM_BENCH_THREADS", "2"))
F32 = 4


def interleaved_medians(fns, rounds):
    times = {name: [] for name in fns}
    for f in fns.values():
        f()  # warm up
    for _ in range(rounds):
        for name, f in fns.items():
            t = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t)
    return {name: float(np.median(ts)) for name, ts in times.items()}


def try_torch():
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(THREADS)
    return torch


def report(benchmark, label, fns, work, unit, rounds):
    """Benchmark fns["fastlm"], then print every implementation's rate and the
    ratio of fastlm's rate to it (> 1: fastlm is faster)."""
    before = fastlm.get_num_threads()
    fastlm.set_num_threads(THREADS)
    try:
        benchmark(fns["fastlm"])
        med = interleaved_medians(fns, rounds)
    finally:
        fastlm.set_num_threads(before)
    rate = {name: work / t / 1e9 for name, t in med.items()}
    parts = [f"fastlm {rate['fastlm']:.2f} {unit} ({med['fastlm'] * 1e3:.3f} ms)"]
    for name in fns:
        if name != "fastlm":
            parts.append(f"{name} {rate[name]:.2f} {unit} (ratio fastlm/{name} "
                         f"{med[name] / med['fastlm']:.2f})")
    print(f"\n{label}: " + ", ".join(parts))


def numpy_layernorm(x, w, b, dy, eps=np.float32(1e-5)):
    mean = x.mean(-1, keepdims=True)
    xc = x - mean
    rstd = 1 / np.sqrt((xc * xc).mean(-1, keepdims=True) + eps)
    norm = xc * rstd
    y = norm * w + b
    dnorm = dy * w
    dx = (dnorm - dnorm.mean(-1, keepdims=True)
          - norm * (dnorm * norm).mean(-1, keepdims=True)) * rstd
    return y, dx, (dy * norm).sum(0), dy.sum(0)


@pytest.mark.parametrize("rows,cols", [(768, 128), (2048, 384), (8192, 768)])
def test_bench_layernorm(benchmark, rows, cols):
    rng = np.random.default_rng(0)
    x, dy = (rng.standard_normal((rows, cols)).astype(np.float32) for _ in range(2))
    w, b = (rng.standard_normal(cols).astype(np.float32) for _ in range(2))

    def fastlm_fn():
        _, mean, rstd = ops.layernorm(x, w, b)
        return ops.layernorm_backward(dy, x, w, mean, rstd)

    fns = {"fastlm": fastlm_fn, "numpy": lambda: numpy_layernorm(x, w, b, dy)}
    torch = try_torch()
    if torch is not None:
        tx, tdy, tw, tb = (torch.from_numpy(a) for a in (x, dy, w, b))
        aten = torch.ops.aten

        def torch_fn():
            _, mean, rstd = aten.native_layer_norm(tx, [cols], tw, tb, 1e-5)
            return aten.native_layer_norm_backward(tdy, tx, [cols], mean, rstd, tw, tb,
                                                   [True, True, True])

        fns["torch"] = torch_fn
    # forward: x in, y out; backward: dy, x in, dx out (weights, stats negligible)
    report(benchmark, f"layernorm fwd+bwd {rows}x{cols}", fns, 5 * rows * cols * F32, "GB/s",
           rounds=30 if rows * cols < 10**6 else 10)


def numpy_gelu(x, dy):
    s, c = np.float32(np.sqrt(2 / np.pi)), np.float32(0.044715)
    t = np.tanh(s * (x + c * x * x * x))
    y = np.float32(0.5) * x * (1 + t)
    dx = dy * (np.float32(0.5) * (1 + t)
               + np.float32(0.5) * x * (1 - t * t) * s * (1 + 3 * c * x * x))
    return y, dx


@pytest.mark.parametrize("rows,cols", [(768, 512), (8192, 3072)])
def test_bench_gelu(benchmark, rows, cols):
    rng = np.random.default_rng(0)
    x, dy = (rng.standard_normal((rows, cols)).astype(np.float32) for _ in range(2))
    fns = {"fastlm": lambda: (ops.gelu(x), ops.gelu_backward(dy, x))}
    big = rows * cols > 10**7
    if not big:  # NumPy's temporaries make the large case take seconds per call
        fns["numpy"] = lambda: numpy_gelu(x, dy)
    torch = try_torch()
    if torch is not None:
        tx, tdy = torch.from_numpy(x), torch.from_numpy(dy)
        fns["torch"] = lambda: (torch.nn.functional.gelu(tx, approximate="tanh"),
                                torch.ops.aten.gelu_backward(tdy, tx, approximate="tanh"))
    # forward: x in, y out; backward: dy, x in, dx out
    report(benchmark, f"gelu fwd+bwd {rows}x{cols}", fns, 5 * rows * cols * F32, "GB/s",
           rounds=5 if big else 30)


def test_bench_adamw(benchmark):
    n = 10_000_000
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal(n).astype(np.float32)
    g = (rng.standard_normal(n) * 1e-2).astype(np.float32)
    hp = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1)
    state = {"p": p0.copy(), "m": np.zeros(n, np.float32), "v": np.zeros(n, np.float32),
             "step": 0}

    def fastlm_fn():
        state["step"] += 1
        ops.adamw_step(state["p"], g, state["m"], state["v"], step=state["step"], **hp)

    np_state = {"p": p0.copy(), "m": np.zeros(n, np.float32), "v": np.zeros(n, np.float32),
                "step": 0}

    def numpy_fn():  # in place, as few temporaries as NumPy allows
        s = np_state
        s["step"] += 1
        p, m, v = s["p"], s["m"], s["v"]
        p *= np.float32(1 - hp["lr"] * hp["weight_decay"])
        m += np.float32(1 - hp["beta1"]) * (g - m)
        v *= np.float32(hp["beta2"])
        v += np.float32(1 - hp["beta2"]) * g * g
        bc1, bc2 = 1 - hp["beta1"] ** s["step"], 1 - hp["beta2"] ** s["step"]
        denom = np.sqrt(v)
        denom /= np.float32(np.sqrt(bc2))
        denom += np.float32(hp["eps"])
        p -= np.float32(hp["lr"] / bc1) * m / denom

    fns = {"fastlm": fastlm_fn, "numpy": numpy_fn}
    torch = try_torch()
    if torch is not None:
        for variant in ("foreach", "fused"):
            pt = torch.nn.Parameter(torch.from_numpy(p0.copy()))
            pt.grad = torch.from_numpy(g)
            opt = torch.optim.AdamW([pt], lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]),
                                    eps=hp["eps"], weight_decay=hp["weight_decay"],
                                    **{variant: True})
            fns[f"torch-{variant}"] = opt.step
    # param, m, v read and written, grad read
    report(benchmark, f"adamw {n // 10**6}M params", fns, 7 * n * F32, "GB/s", rounds=5)


def test_bench_lstm_cell(benchmark):
    n, inp, hid = 32, 256, 256
    rng = np.random.default_rng(0)
    k = 1 / np.sqrt(hid)
    x = rng.standard_normal((n, inp)).astype(np.float32)
    h, c, dh, dc = (rng.standard_normal((n, hid)).astype(np.float32) for _ in range(4))
    w_ih = rng.uniform(-k, k, (4 * hid, inp)).astype(np.float32)
    w_hh = rng.uniform(-k, k, (4 * hid, hid)).astype(np.float32)
    b_ih, b_hh = (rng.uniform(-k, k, 4 * hid).astype(np.float32) for _ in range(2))

    def fastlm_fn():
        _, c_next, gates = ops.lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh)
        return ops.lstm_cell_backward(dh, dc, x, h, c, c_next, gates, w_ih, w_hh)

    fns = {"fastlm": fastlm_fn}
    torch = try_torch()
    if torch is not None:
        cell = torch.nn.LSTMCell(inp, hid)
        with torch.no_grad():
            for name, a in (("weight_ih", w_ih), ("weight_hh", w_hh), ("bias_ih", b_ih),
                            ("bias_hh", b_hh)):
                getattr(cell, name).copy_(torch.from_numpy(a))
        tx, th, tc = (torch.from_numpy(a).requires_grad_() for a in (x, h, c))
        tdh, tdc = torch.from_numpy(dh), torch.from_numpy(dc)

        def torch_fn():
            for t in (tx, th, tc, *cell.parameters()):
                t.grad = None
            hn, cn = cell(tx, (th, tc))
            torch.autograd.backward((hn, cn), (tdh, tdc))

        fns["torch"] = torch_fn
    # forward: two GEMMs over (in + hid); backward: four (dx, dh, dW_ih, dW_hh)
    flops = 2 * n * 4 * hid * (inp + hid) * 3
    report(benchmark, f"lstm cell fwd+bwd n={n} in={inp} hidden={hid}", fns, flops, "GFLOP/s",
           rounds=30)

"""Memory-bound ops (LayerNorm, GELU, AdamW) in GB/s of the bytes each must move
at least, and the LSTM and GRU cells (forward + backward, GEMM-bound) in GFLOP/s:
fastlm vs PyTorch vs NumPy, float32. The workloads live in fastlm.bench."""
from __future__ import annotations

import numpy as np
import pytest

from fastlm import ops
from fastlm.bench import Case, adamw_case, gelu_case, layernorm_case, torch

from conftest import run


@pytest.mark.parametrize("rows,cols", [(768, 128), (2048, 384), (8192, 768)])
def test_bench_layernorm(benchmark, rows, cols):
    run(benchmark, layernorm_case(rows, cols))


@pytest.mark.parametrize("rows,cols", [(768, 512), (8192, 3072)])
def test_bench_gelu(benchmark, rows, cols):
    run(benchmark, gelu_case(rows, cols))


def test_bench_adamw(benchmark):
    run(benchmark, adamw_case(10_000_000))


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_bench_rnn_cell(benchmark, kind):
    """One step at the small RNN LM's size (batch 32, input = hidden = 256)."""
    n, inp, hid, g = 32, 256, 256, 4 if kind == "lstm" else 3
    rng = np.random.default_rng(0)
    k = 1 / np.sqrt(hid)
    x = rng.standard_normal((n, inp)).astype(np.float32)
    h, c, dh, dc = (rng.standard_normal((n, hid)).astype(np.float32) for _ in range(4))
    w_ih, w_hh = (rng.uniform(-k, k, (g * hid, i)).astype(np.float32) for i in (inp, hid))
    b_ih, b_hh = (rng.uniform(-k, k, g * hid).astype(np.float32) for _ in range(2))

    def lstm():
        _, c_next, gates = ops.lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh)
        return ops.lstm_cell_backward(dh, dc, x, h, c, c_next, gates, w_ih, w_hh)

    def gru():
        _, gates = ops.gru_cell(x, h, w_ih, w_hh, b_ih, b_hh)
        return ops.gru_cell_backward(dh, x, h, gates, w_ih, w_hh)

    cs = {"fastlm": lstm if kind == "lstm" else gru}
    if torch is not None:
        cell = (torch.nn.LSTMCell if kind == "lstm" else torch.nn.GRUCell)(inp, hid)
        with torch.no_grad():
            for name, a in (("weight_ih", w_ih), ("weight_hh", w_hh), ("bias_ih", b_ih),
                            ("bias_hh", b_hh)):
                getattr(cell, name).copy_(torch.from_numpy(a))
        tx, th, tc = (torch.from_numpy(a).requires_grad_() for a in (x, h, c))
        tdh, tdc = torch.from_numpy(dh), torch.from_numpy(dc)

        def ref():
            for t in (tx, th, tc, *cell.parameters()):
                t.grad = None
            if kind == "lstm":
                torch.autograd.backward(cell(tx, (th, tc)), (tdh, tdc))
            else:
                cell(tx, th).backward(tdh)

        cs["torch"] = ref
    # forward: the gate GEMMs over (in + hid); backward: twice that (dx, dh and dW)
    flops = 2 * n * g * hid * (inp + hid) * 3
    run(benchmark, Case(f"{kind} cell fwd+bwd n={n} in={inp} hidden={hid}", "GFLOP/s", flops,
                        cs, block=10))

"""The CUDA kernels side by side with PyTorch on the same GPU (skipped without one).

Run: PYTHONPATH=python python -m pytest bench/test_bench_cuda.py -q -s

Issue 5's targets (H200): GEMM 4096^3 bf16 and TF32 >= 70% of torch.matmul;
attention bf16 B=8 H=12 T=1024 D=64 causal forward+backward >= 50% of
scaled_dot_product_attention (FlashAttention-2 backend); cross-entropy
(8192, 50304) float32 forward+backward >= 2x F.cross_entropy; LayerNorm, GELU
and AdamW >= 80% of the bandwidth of a device-to-device copy measured in the
same run. Each line prints ours, PyTorch's, and ratio = ours / theirs in
throughput (> 1: fastlm is faster); the assertions only check that results
are sane, never a time.

Times come from CUDA events on the default stream, where both libraries queue
their kernels; inputs are made once as torch tensors and viewed (no copy) as
fastlm.DeviceArrays before timing.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

import fastlm
from fastlm import ops
from fastlm import cuda as fcuda


def _torch_cuda():
    if not fastlm.cuda_available():
        return None
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


torch = _torch_cuda()
pytestmark = pytest.mark.skipif(torch is None, reason="needs a CUDA GPU and PyTorch with CUDA")

WARMUP, ITERS = 3, 20


def gpu_seconds(fn, iters=ITERS, warmup=WARMUP):
    """Median seconds per call over `iters` calls, each bracketed by CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return float(np.median(times))


def line(op, size, work, unit, ours, theirs, scale):
    """Print ours vs theirs; work in flops (unit TFLOP/s) or bytes (GB/s)."""
    r_ours, r_theirs = work / ours / scale, work / theirs / scale
    ratio = theirs / ours
    print(f"\n[cuda] {op} {size}: fastlm {r_ours:.1f} {unit} ({ours * 1e3:.3f} ms), "
          f"torch {r_theirs:.1f} {unit} ({theirs * 1e3:.3f} ms), ours/torch {ratio:.2f}")
    return ratio


def dev(t):
    return fcuda.as_device_array(t, "bench", "x")


@pytest.fixture(autouse=True)
def _tf32_off():
    before = torch.backends.cuda.matmul.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32 = before


GEMM_PATH = os.environ.get("FASTLM_CUDA_GEMM", "")
GEMM_SHAPES = [(4096, 4096, 4096), (1024, 768, 3072), (8192, 768, 3072), (8192, 3072, 768),
               (8192, 768, 2304), (8192, 768, 768)]


@pytest.mark.parametrize("m,k,n", GEMM_SHAPES)
@pytest.mark.parametrize("precision", ["bf16", "tf32", "fp32"])
def test_bench_gemm(benchmark, m, k, n, precision):
    if precision == "fp32" and m * n * k > 8192 * 768 * 3072:
        pytest.skip("exact float32 only at Transformer sizes")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a = torch.randn(m, k, device="cuda", dtype=dtype)
    b = torch.randn(k, n, device="cuda", dtype=dtype)
    wt = torch.randn(n, k, device="cuda", dtype=dtype)  # Linear weight: x @ W^T
    at = torch.randn(k, m, device="cuda", dtype=dtype)  # a^T @ b: as dW = dy^T @ x
    da, db, dw, dat = dev(a), dev(b), dev(wt), dev(at)
    prec = "tf32" if precision == "tf32" else "highest"
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    F = torch.nn.functional

    # FASTLM_CUDA_GEMM picks the tensor-core GEMM kernel (gemm_sm90*.cu): label a forced one's lines.
    name = f"gemm {precision}" + (f"[{GEMM_PATH}]" if GEMM_PATH and precision != "fp32" else "")
    ours = gpu_seconds(lambda: ops.matmul(da, db, precision=prec))
    theirs = gpu_seconds(lambda: torch.matmul(a, b))
    ratio = line(f"{name} a@b", f"{m}x{k}x{n}", 2.0 * m * n * k, "TFLOP/s", ours,
                 theirs, 1e12)
    ours_t = gpu_seconds(lambda: ops.matmul(da, dw, trans_b=True, precision=prec))
    theirs_t = gpu_seconds(lambda: F.linear(a, wt))
    line(f"{name} a@W^T", f"{m}x{k}x{n}", 2.0 * m * n * k, "TFLOP/s", ours_t, theirs_t, 1e12)
    ours_ta = gpu_seconds(lambda: ops.matmul(dat, db, trans_a=True, precision=prec))
    theirs_ta = gpu_seconds(lambda: torch.matmul(at.T, b))
    line(f"{name} a^T@b", f"{m}x{k}x{n}", 2.0 * m * n * k, "TFLOP/s", ours_ta, theirs_ta, 1e12)
    benchmark.extra_info["ours/torch"] = ratio
    benchmark.pedantic(lambda: (ops.matmul(da, db, precision=prec), torch.cuda.synchronize()),
                       rounds=3, iterations=1, warmup_rounds=1)
    # sanity: a corner of the product agrees with torch's
    c = torch.as_tensor(ops.matmul(da, db, precision=prec), device="cuda") if precision != "bf16" \
        else None
    if c is not None:
        torch.testing.assert_close(c[:64, :64], torch.matmul(a[:64], b[:, :64]), rtol=2e-2,
                                   atol=2e-1)
    else:  # bf16: every layout (the Hopper kernels'), checked against float32 products
        for c, ref in ((ops.matmul(da, dw, trans_b=True), a[:64].float() @ wt[:64].float().T),
                       (ops.matmul(da, db), a[:64].float() @ b[:, :64].float()),
                       (ops.matmul(dat, db, trans_a=True), at[:, :64].float().T @ b[:, :64].float())):
            ct = torch.as_tensor(c.astype("float32"), device="cuda")
            torch.testing.assert_close(ct[:64, :64], ref[:, :64], rtol=2e-2, atol=2e-1)


# FASTLM_CUDA_ATTENTION=next asks for the 128-query forward: label its lines.
ATTENTION_PATH = os.environ.get("FASTLM_CUDA_ATTENTION", "")


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("D", [64, 128])
def test_bench_attention_bf16(benchmark, D, causal):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    B, H, T = 8, 12, 1024
    q, k, v, dout = (torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16)
                     for _ in range(4))
    dq, dk, dv, ddout = (dev(x) for x in (q, k, v, dout))

    def ours():
        out, lse = ops.attention(dq, dk, dv, causal=causal)
        ops.attention_backward(ddout, dq, dk, dv, out, lse, causal=causal)

    tq, tk, tv = (x.clone().requires_grad_() for x in (q, k, v))

    def theirs():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            o = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=causal)
        o.backward(dout)

    def theirs_fwd():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)

    # causal: half the products; the backward is 2.5x the forward
    flops = 4.0 * B * H * T * T * D * (0.5 if causal else 1.0) * (1 + 2.5)
    name = "attention bf16" + (f"[{ATTENTION_PATH}]" if ATTENTION_PATH else "") + \
        (" causal" if causal else " full")
    size = f"B={B} H={H} T={T} D={D}"
    ratio = line(f"{name} fwd+bwd", size, flops, "TFLOP/s", gpu_seconds(ours), gpu_seconds(theirs),
                 1e12)
    fwd = line(f"{name} fwd", size, flops / 3.5, "TFLOP/s",
               gpu_seconds(lambda: ops.attention(dq, dk, dv, causal=causal)),
               gpu_seconds(theirs_fwd), 1e12)
    benchmark.extra_info.update({"fwd+bwd ours/torch": ratio, "fwd ours/torch": fwd})
    benchmark.pedantic(lambda: (ours(), torch.cuda.synchronize()), rounds=3, iterations=1)
    out, _ = ops.attention(dq, dk, dv, causal=causal)
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
    np.testing.assert_allclose(out.numpy()[0, 0, :64], want[0, 0, :64].float().cpu().numpy(),
                               atol=3e-2)


def bench_cross_entropy(benchmark, label, logits, dl, out):
    """ops.cross_entropy's forward + backward over dl (the gradient into out)
    against torch's over the same values in logits (a cuda tensor of dl's
    dtype); each logit is read once and its gradient written once. The loss
    is checked in float32 on a fresh copy, as out may be dl."""
    N, V = logits.shape
    targets = torch.randint(0, V, (N,), device="cuda")
    dt = dev(targets)
    F = torch.nn.functional
    tl = logits.clone().requires_grad_()

    def theirs():
        F.cross_entropy(tl, targets).backward()

    ours = gpu_seconds(lambda: ops.cross_entropy(dl, dt, out=out))
    ratio = line(f"cross_entropy fwd+bwd {label}", f"({N}, {V})", 2.0 * N * V * logits.element_size(),
                 "GB/s", ours, gpu_seconds(theirs), 1e9)
    benchmark.extra_info["ours/torch"] = ratio
    benchmark.pedantic(lambda: ops.cross_entropy(dl, dt, out=out), rounds=3, iterations=1)
    logits32 = logits.float()
    loss, _ = ops.cross_entropy(dev(logits32).astype(dl.dtype), dt, compute_grad=False)
    assert abs(loss - F.cross_entropy(logits32, targets).item()) < 1e-3


def test_bench_cross_entropy(benchmark):
    N, V = 8192, 50304
    logits = torch.randn(N, V, device="cuda")
    bench_cross_entropy(benchmark, "fp32", logits, dev(logits), fastlm.DeviceArray((N, V)))


# The copy ceiling is measured on buffers many times the L2 cache (50 MB on an
# H200): a 25 MB copy partly hits L2 and shows about half the HBM bandwidth.
COPY_BYTES = 1 << 30


def copy_seconds(n):
    x = torch.empty(n, device="cuda").fill_(1.0)
    y = torch.empty_like(x)
    t = gpu_seconds(lambda: y.copy_(x))
    del x, y
    torch.cuda.empty_cache()
    return t


def layernorm_gelu(both, rows, cols):
    """LayerNorm and GELU forward and backward on random (rows, cols) float32,
    ours beside torch's, each through both(name, bytes moved, ours, theirs).
    Returns the device input, weight and bias, and their torch tensors."""
    F = torch.nn.functional
    n = rows * cols
    x, dy = torch.randn(rows, cols, device="cuda"), torch.randn(rows, cols, device="cuda")
    w, b = torch.randn(cols, device="cuda"), torch.randn(cols, device="cuda")
    dx_, ddy, dw_, db_ = dev(x), dev(dy), dev(w), dev(b)
    both("layernorm fwd", 2.0 * n * 4, lambda: ops.layernorm(dx_, dw_, db_),
         lambda: F.layer_norm(x, (cols,), w, b))
    _, mean, rstd = ops.layernorm(dx_, dw_, db_)
    xt = x.clone().requires_grad_()
    yt = F.layer_norm(xt, (cols,), w, b)
    both("layernorm bwd", 3.0 * n * 4, lambda: ops.layernorm_backward(ddy, dx_, dw_, mean, rstd),
         lambda: torch.autograd.grad(yt, xt, dy, retain_graph=True))
    del xt, yt
    both("gelu fwd", 2.0 * n * 4, lambda: ops.gelu(dx_), lambda: F.gelu(x, approximate="tanh"))
    xg = x.clone().requires_grad_()
    yg = F.gelu(xg, approximate="tanh")
    both("gelu bwd", 3.0 * n * 4, lambda: ops.gelu_backward(ddy, dx_),
         lambda: torch.autograd.grad(yg, xg, dy, retain_graph=True))
    return dx_, dw_, db_, x, w, b


def test_bench_memory_bound(benchmark):
    """LayerNorm, GELU, AdamW in GB/s against a device-to-device copy's (bytes
    each must move at least: inputs read once, outputs written once)."""
    rows, cols = 8192, 768
    big = COPY_BYTES // 4
    copy_bw = 2.0 * big * 4 / copy_seconds(big)
    print(f"\n[cuda] device-to-device copy: {copy_bw / 1e9:.0f} GB/s ({big * 4 / 1e6:.0f} MB)")
    results = {}

    def both(name, nbytes, ours, theirs):
        t_ours, t_theirs = gpu_seconds(ours), gpu_seconds(theirs)
        bw = nbytes / t_ours
        line(name, f"{rows}x{cols}", nbytes, "GB/s", t_ours, t_theirs, 1e9)
        print(f"[cuda]   {name}: {bw / copy_bw:.0%} of copy bandwidth")
        results[name] = bw / copy_bw

    dx_ = layernorm_gelu(both, rows, cols)[0]

    P = 124_000_000  # GPT-2 small's parameter count
    p, g, m, v = (torch.randn(P, device="cuda") * 0.01 for _ in range(4))
    v.abs_()
    dp, dg, dm, dv = (dev(t) for t in (p, g, m, v))
    tp = torch.nn.Parameter(p.clone())
    tp.grad = g.clone()
    opt = torch.optim.AdamW([tp], lr=1e-4, weight_decay=0.1, fused=True)
    both("adamw", 7.0 * P * 4,
         lambda: ops.adamw_step(dp, dg, dm, dv, lr=1e-4, weight_decay=0.1, step=10), opt.step)
    benchmark.extra_info.update(results)
    benchmark.pedantic(lambda: (ops.gelu(dx_), torch.cuda.synchronize()), rounds=3, iterations=1)


# FASTLM_CUDA_POINTWISE=next runs the opt-in memory-bound kernels; their lines
# say so (`layernorm fwd[next] ...`), as the attention forward's do.
POINTWISE_TAG = "[next]" if os.environ.get("FASTLM_CUDA_POINTWISE") == "next" else ""


def test_bench_memory_bound_large(benchmark):
    """LayerNorm and GELU on (65536, 768) float32, 200 MB per tensor (four times
    the H200's 50 MB L2): the bandwidth the kernels get from HBM, beside torch
    and the large-copy ceiling."""
    F = torch.nn.functional
    rows, cols = 65536, 768
    copy_bw = 2.0 * COPY_BYTES / copy_seconds(COPY_BYTES // 4)
    tag = POINTWISE_TAG
    results = {}

    def both(name, nbytes, ours, theirs):
        t_ours, t_theirs = gpu_seconds(ours, iters=10), gpu_seconds(theirs, iters=10)
        line(name + tag, f"{rows}x{cols}", nbytes, "GB/s", t_ours, t_theirs, 1e9)
        print(f"[cuda]   {name}{tag}: {nbytes / t_ours / copy_bw:.0%} of copy bandwidth")
        results[name + tag] = nbytes / t_ours / copy_bw

    dx_, dw_, db_, x, w, b = layernorm_gelu(both, rows, cols)
    benchmark.extra_info.update(results)
    benchmark.pedantic(lambda: (ops.gelu(dx_), torch.cuda.synchronize()), rounds=3, iterations=1)
    y, _, _ = ops.layernorm(dx_, dw_, db_)
    np.testing.assert_allclose(y.numpy()[:4], F.layer_norm(x[:4], (cols,), w, b).cpu().numpy(),
                               rtol=1e-4, atol=1e-4)


def test_bench_cross_entropy_bf16(benchmark):
    """Cross-entropy over bfloat16 logits, the gradient written over them in
    bfloat16 (the fused classifier's loss): 4 bytes per logit moved."""
    N, V = 8192, 50304
    logits = torch.randn(N, V, device="cuda").to(torch.bfloat16)
    dl = dev(logits.float()).astype("bfloat16")  # exact: the values are bfloat16 already
    bench_cross_entropy(benchmark, "bf16", logits, dl, dl)


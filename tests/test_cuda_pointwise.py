"""The memory-bound CUDA kernels against float64 references at awkward sizes:
LayerNorm forward and backward, GELU, AdamW (common.cuh's elementwise map and
the optimizers' shared scalars), cross-entropy over bfloat16 logits, and the
fused bfloat16 classifier + cross-entropy of the bf16 model table.

The kernels behind FASTLM_CUDA_POINTWISE=next (warp-per-row LayerNorm, the
unrolled GELU forward, the fused classifier) are opt-in until a GPU run passes
this file with the switch set; bench/gpu_check.sh runs it both ways, and the
test_small_* functions under compute-sanitizer:
    FASTLM_CUDA_POINTWISE=next FASTLM_CUDA_SYNC=1 compute-sanitizer --tool memcheck \\
        python -m pytest tests/test_cuda_pointwise.py -k small

The float32 tests run on the device backends (tests/conftest.py): the GPU, and
the emulated device, where the CPU kernels answer (a check of the tests
themselves); the bfloat16 and switch tests need a GPU.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fastlm
from fastlm import Transformer, ops
from conftest import assert_error_bound
from reference.adamw import adamw_ref
from reference.bf16 import bf16_round
from reference.cross_entropy import ce_ref
from reference.gelu import gelu_erf_grad_ref, gelu_erf_ref, gelu_grad_ref, gelu_ref
from reference.layernorm import ln_backward_ref, ln_ref, make as ln_make

GPU = fastlm.cuda_available()
gpu_only = pytest.mark.skipif(not GPU, reason="needs a CUDA GPU")


@pytest.fixture
def backend(device_backend):
    """The device backends only (cuda-emulated, cuda): these are device kernels."""
    return device_backend


def torch_cuda():
    """torch when it sees the GPU, else a skip (the unaligned-view tests)."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    return torch


# ---- LayerNorm ---------------------------------------------------------------
# Rows of every warp-per-row instance (cols % 4 == 0 up to 2048 forward, 1024
# backward) and of the fallback (cols % 4 != 0, wider rows).
LN_SHAPES = [(1, 4), (3, 12), (17, 128), (33, 132), (127, 768), (1000, 768), (5, 1024),
             (9, 1028), (7, 1600), (3, 2048), (2, 2052), (4, 1), (6, 3), (31, 100), (2, 4100)]


@pytest.mark.parametrize("rows,cols", LN_SHAPES)
def test_layernorm_forward(rows, cols, backend):
    rng = np.random.default_rng(rows * 7919 + cols)
    x, w, b, _ = ln_make(rng, rows, cols, offset=3.0)
    y, mean, rstd = (backend.get(a) for a in ops.layernorm(backend.put(x), backend.put(w), backend.put(b)))
    ry, rmean, rrstd = ln_ref(x, w, b)
    ny, nmean, nrstd = ln_ref(x, w, b, dtype=np.float32)
    assert_error_bound(y, ry, ny, name="y")
    assert_error_bound(mean, rmean, nmean, name="mean")
    assert_error_bound(rstd, rrstd, nrstd, name="rstd")


@pytest.mark.parametrize("rows,cols", LN_SHAPES)
def test_layernorm_backward(rows, cols, backend):
    rng = np.random.default_rng(rows * 104729 + cols)
    x, w, b, dy = ln_make(rng, rows, cols, offset=1.0)
    _, mean, rstd = ops.layernorm(backend.put(x), backend.put(w), backend.put(b))
    dx, dw, db = (backend.get(a) for a in ops.layernorm_backward(backend.put(dy), backend.put(x), backend.put(w), mean, rstd))
    ref = ln_backward_ref(dy, x, w)
    naive = ln_backward_ref(dy, x, w, dtype=np.float32)
    for got, r, n, name in zip((dx, dw, db), ref, naive, ("dx", "dweight", "dbias")):
        assert_error_bound(got, r, n, factor=6.0, name=name)


@pytest.mark.parametrize("rows,cols", [(1000, 768), (4097, 64), (3, 1028)])
def test_layernorm_backward_is_deterministic(rows, cols, backend):
    rng = np.random.default_rng(5)
    x, w, b, dy = ln_make(rng, rows, cols)
    xd, wd, dyd = backend.put(x), backend.put(w), backend.put(dy)
    _, mean, rstd = ops.layernorm(xd, wd, backend.put(b))
    first = [backend.get(a) for a in ops.layernorm_backward(dyd, xd, wd, mean, rstd)]
    again = [backend.get(a) for a in ops.layernorm_backward(dyd, xd, wd, mean, rstd)]
    for a, b2 in zip(first, again):
        np.testing.assert_array_equal(a, b2)


@gpu_only
def test_layernorm_unaligned_rows_fall_back(gpu_backend):
    """Views one float off 16-byte alignment take the block-per-row kernels."""
    torch = torch_cuda()
    rng = np.random.default_rng(11)
    rows, cols = 9, 768
    x, w, b, dy = ln_make(rng, rows, cols)
    buf = torch.zeros(rows * cols + 1, device="cuda")
    buf[1:] = torch.from_numpy(x.ravel()).cuda()
    xv = buf[1:].view(rows, cols)
    y, mean, rstd = (gpu_backend.get(a) for a in ops.layernorm(xv, gpu_backend.put(w), gpu_backend.put(b)))
    ry, _, _ = ln_ref(x, w, b)
    ny, _, _ = ln_ref(x, w, b, dtype=np.float32)
    assert_error_bound(y, ry, ny, name="y")


# ---- GELU --------------------------------------------------------------------
GELU_SIZES = [1, 3, 4, 5, 127, 1024, 4099, (1 << 20) + 3]


@pytest.mark.parametrize("n", GELU_SIZES)
@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_gelu_forward_and_backward(n, approximate, backend):
    rng = np.random.default_rng(n)
    x = (rng.standard_normal(n) * 4).astype(np.float32)
    x[: min(n, 3)] = np.array([-30.0, 0.0, 12.0], np.float32)[: min(n, 3)]
    dy = rng.standard_normal(n).astype(np.float32)
    f, g = (gelu_ref, gelu_grad_ref) if approximate == "tanh" else (gelu_erf_ref, gelu_erf_grad_ref)
    y = backend.get(ops.gelu(backend.put(x), approximate))
    assert_error_bound(y, f(x), f(x, dtype=np.float32), name="gelu")
    dx = backend.get(ops.gelu_backward(backend.put(dy), backend.put(x), approximate))
    ref = g(dy, x)
    naive = g(dy, x, dtype=np.float32)
    assert_error_bound(dx, ref, naive, name="gelu_backward")


@gpu_only
@pytest.mark.parametrize("n", [5, 4099])
def test_gelu_unaligned_views(n, gpu_backend):
    """The scalar paths: a view one float off 16-byte alignment."""
    torch = torch_cuda()
    rng = np.random.default_rng(n + 1)
    x = (rng.standard_normal(n) * 4).astype(np.float32)
    buf = torch.zeros(n + 1, device="cuda")
    buf[1:] = torch.from_numpy(x).cuda()
    y = gpu_backend.get(ops.gelu(buf[1:]))
    assert_error_bound(y, gelu_ref(x), gelu_ref(x, dtype=np.float32), name="gelu")
    dx = gpu_backend.get(ops.gelu_backward(buf[1:], buf[1:]))
    assert_error_bound(dx, gelu_grad_ref(x, x), gelu_grad_ref(x, x, dtype=np.float32),
                       name="gelu_backward")


# ---- AdamW (the elementwise map and the shared scalars) ----------------------

@pytest.mark.parametrize("n", [1, 3, 4, 7, 1021, 65539])
@pytest.mark.parametrize("step", [1, 7])
def test_adamw_equals_the_cpu(n, step, backend):
    """The CPU's operation order and scalars: the same floats on either backend."""
    rng = np.random.default_rng(n + step)
    p, g, m = (rng.standard_normal(n).astype(np.float32) for _ in range(3))
    v = np.abs(rng.standard_normal(n)).astype(np.float32)
    hp = dict(lr=3e-3, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1, step=step)
    cpu = [a.copy() for a in (p, g, m, v)]
    ops.adamw_step(cpu[0], cpu[1], cpu[2], cpu[3], **hp)
    d = [backend.put(a) for a in (p, g, m, v)]
    ops.adamw_step(d[0], d[1], d[2], d[3], **hp)
    for got, want, name in zip((d[0], d[2], d[3]), (cpu[0], cpu[2], cpu[3]), ("param", "m", "v")):
        np.testing.assert_allclose(backend.get(got), want, rtol=2e-7, atol=1e-30, err_msg=name)
    rp, rm, rv = adamw_ref(p, g, m, v, **hp)
    assert np.max(np.abs(backend.get(d[0]) - rp)) <= 1e-5 * max(1.0, np.max(np.abs(rp)))


# ---- cross-entropy over bfloat16 logits --------------------------------------

@gpu_only
@pytest.mark.parametrize("rows,vocab", [(1, 1), (3, 7), (17, 65), (33, 1000), (8, 50304)])
@pytest.mark.parametrize("in_place", [False, True])
def test_cross_entropy_bf16(rows, vocab, in_place):
    rng = np.random.default_rng(rows * 31 + vocab)
    x = bf16_round((rng.standard_normal((rows, vocab)) * 3).astype(np.float32))
    t = rng.integers(0, vocab, rows)
    if rows > 2:
        t[1] = -100
    logits = fastlm.to_device(x, "bfloat16")
    targets = fastlm.to_device(t)
    loss, g = ops.cross_entropy(logits, targets, out=logits if in_place else None)
    assert g.dtype == "bfloat16"
    rloss, rg = ce_ref(x, t)
    nloss, _ = ce_ref(x, t, dtype=np.float32)
    assert_error_bound(np.array([loss]), np.array([rloss]), np.array([nloss]), name="loss")
    # The gradient is float32 math rounded once to bfloat16: half an ulp of it.
    got = g.numpy().astype(np.float64)
    assert np.all(np.abs(got - rg) <= np.abs(rg) * 2.0 ** -8 + 1e-7), np.max(np.abs(got - rg))


@gpu_only
def test_cross_entropy_bf16_bad_out():
    logits = fastlm.to_device(np.zeros((2, 5), np.float32), "bfloat16")
    targets = fastlm.to_device(np.array([0, 1]))
    with pytest.raises(TypeError, match="out"):
        ops.cross_entropy(logits, targets, out=fastlm.to_device(np.zeros((2, 5), np.float32)))
    with pytest.raises(ValueError, match="targets"):
        ops.cross_entropy(logits, fastlm.to_device(np.array([0, 5])))


# ---- the fused classifier (bf16 models on the GPU) ----------------------------
V, BLOCK = 67, 16


def tiny_gpt(device, precision, **kw):
    args = dict(block_size=BLOCK, n_layer=1, n_head=2, n_embd=32, seed=4)
    args.update(kw)
    return Transformer(V, device=device, precision=precision, **args)


def batch(seed, b=3, t=BLOCK):
    r = np.random.default_rng(seed)
    return r.integers(0, V, (b, t)), r.integers(0, V, (b, t))


_CHILD = """
import json, sys
import numpy as np
sys.path.insert(0, {tests!r})
from test_cuda_pointwise import tiny_gpt, batch
m = tiny_gpt("cuda", "bf16")
x, y = batch(1)
y[0, :3] = -100
loss = m.forward_backward(x, y)
g = m.gradients()
print(json.dumps({{"loss": loss, "loss_only": m._loss(x, y),
                  "grads": {{k: np.asarray(v, np.float64).ravel().tolist() for k, v in g.items()}}}}))
"""


def run_child(env_value):
    env = dict(os.environ, FASTLM_CUDA_POINTWISE=env_value)
    out = subprocess.run([sys.executable, "-c", _CHILD.format(tests=os.path.dirname(__file__))],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@gpu_only
def test_fused_classifier_tracks_float32():
    """The bf16 model with the fused head (FASTLM_CUDA_POINTWISE=next) against
    the float32 CPU model and the unfused bf16 path: loss and every gradient
    within mixed precision's error."""
    fused, plain = run_child("next"), run_child("default")
    ref = tiny_gpt("cpu", "fp32")
    x, y = batch(1)
    y[0, :3] = -100
    rloss = ref.forward_backward(x, y)
    rg = ref.gradients()
    for res in (fused, plain):
        assert abs(res["loss"] - rloss) < 2e-2, (res["loss"], rloss)
        assert abs(res["loss_only"] - res["loss"]) < 1e-6
        for name, want in rg.items():
            want = np.asarray(want, np.float64).ravel()
            got = np.asarray(res["grads"][name])
            err = np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30)
            assert err < 5e-2, (name, err)


@gpu_only
def test_switch_rejects_an_unknown_value():
    env = dict(os.environ, FASTLM_CUDA_POINTWISE="fastest")
    code = ("import numpy as np, fastlm\nfrom fastlm import ops\n"
            "x = fastlm.to_device(np.ones((2, 4), np.float32))\n"
            "w = fastlm.to_device(np.ones(4, np.float32))\n"
            "ops.layernorm(x, w, w)\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode != 0 and "FASTLM_CUDA_POINTWISE" in out.stderr, out.stderr[-2000:]


# ---- small sizes, every kernel once (compute-sanitizer) ------------------------

def test_small_layernorm(backend):
    rng = np.random.default_rng(2)
    for rows, cols in [(3, 12), (2, 7), (9, 768)]:
        x, w, b, dy = ln_make(rng, rows, cols)
        _, mean, rstd = ops.layernorm(backend.put(x), backend.put(w), backend.put(b))
        dx, _, _ = ops.layernorm_backward(backend.put(dy), backend.put(x), backend.put(w), mean, rstd)
        assert_error_bound(backend.get(dx), ln_backward_ref(dy, x, w)[0],
                           ln_backward_ref(dy, x, w, dtype=np.float32)[0], factor=6.0, name="dx")


def test_small_gelu_and_adamw(backend):
    x = np.linspace(-5, 5, 37, dtype=np.float32)
    assert_error_bound(backend.get(ops.gelu(backend.put(x))), gelu_ref(x), gelu_ref(x, dtype=np.float32))
    p, g, m, v = (backend.put(np.full(13, 0.5, np.float32)) for _ in range(4))
    ops.adamw_step(p, g, m, v, lr=1e-2, step=1)
    assert np.all(np.isfinite(backend.get(p)))


@gpu_only
def test_small_cross_entropy_bf16():
    x = bf16_round(np.linspace(-3, 3, 3 * 19, dtype=np.float32).reshape(3, 19))
    t = np.array([0, 18, -100])
    logits = fastlm.to_device(x, "bfloat16")
    loss, _ = ops.cross_entropy(logits, fastlm.to_device(t), out=logits)
    assert abs(loss - ce_ref(x, t)[0]) < 1e-5


@gpu_only
def test_small_classifier():
    """The bf16 model's head in this process (fused when the switch is set)."""
    m = tiny_gpt("cuda", "bf16", n_embd=16)
    x, y = batch(2, b=2, t=5)
    assert np.isfinite(m.forward_backward(x, y))

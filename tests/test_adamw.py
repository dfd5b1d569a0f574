"""AdamW against a float64 NumPy reference on every backend (each CPU ISA, the
emulated device, CUDA) and torch.optim.AdamW; bad arguments."""
from __future__ import annotations

import numpy as np
import pytest

from fastlm import ops
from conftest import HOST, assert_error_bound, torch_or_skip
from reference.adamw import HP, adamw_ref

SIZES = [1, 3, 17, 31, 33, 127, 1000, 100_003]  # the last one runs threaded
def run_steps(rng, shape, steps, hp, *, start_step=1, B=HOST):
    """Run `steps` updates with ours (on B), the float64 reference and the float32
    reference; ours come back as NumPy."""
    p0 = rng.standard_normal(shape).astype(np.float32)
    grads = [(rng.standard_normal(shape) * 10 ** rng.uniform(-3, 1)).astype(np.float32)
             for _ in range(steps)]
    ours = [B.put(p0), B.put(np.zeros(shape, np.float32)), B.put(np.zeros(shape, np.float32))]
    ref64 = [p0.astype(np.float64), np.zeros(shape), np.zeros(shape)]
    ref32 = [p0.copy(), np.zeros(shape, np.float32), np.zeros(shape, np.float32)]
    for k, g in enumerate(grads):
        step = start_step + k
        assert ops.adamw_step(ours[0], B.put(g), ours[1], ours[2], step=step, **hp) is None
        ref64 = list(adamw_ref(*ref64[:1], g, *ref64[1:], step, **hp))
        ref32 = list(adamw_ref(*ref32[:1], g, *ref32[1:], step, **hp, dtype=np.float32))
    return p0, grads, [B.get(a) for a in ours], ref64, ref32


@pytest.mark.parametrize("n", SIZES)
def test_matches_reference(backend, rng, n):
    _, _, ours, ref64, ref32 = run_steps(rng, n, 5, HP, B=backend)
    for name, a, r, q in zip(("param", "m", "v"), ours, ref64, ref32):
        assert_error_bound(a, r, q, name=name)


@pytest.mark.parametrize("hp", [
    dict(lr=1e-3, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.0),
    dict(lr=3e-4, beta1=0.0, beta2=0.0, eps=1e-6, weight_decay=1.0),
    dict(lr=0.0, beta1=0.5, beta2=0.99, eps=1e-8, weight_decay=0.5),
])
def test_hyperparameters(backend, rng, hp):
    _, _, ours, ref64, ref32 = run_steps(rng, (3, 33), 4, hp, start_step=7, B=backend)
    for name, a, r, q in zip(("param", "m", "v"), ours, ref64, ref32):
        assert_error_bound(a, r, q, name=name)


def test_in_place(backend, rng):
    B = backend
    p_before = rng.standard_normal((5, 7)).astype(np.float32)
    g_before = rng.standard_normal((5, 7)).astype(np.float32)
    p, g = B.put(p_before), B.put(g_before)
    m, v = B.put(np.zeros_like(p_before)), B.put(np.zeros_like(p_before))
    p_id, m_id, v_id = id(p), id(m), id(v)
    ops.adamw_step(p, g, m, v, lr=0.1, step=1)
    assert (id(p), id(m), id(v)) == (p_id, m_id, v_id)
    np.testing.assert_array_equal(B.get(g), g_before)
    p, m, v = B.get(p), B.get(m), B.get(v)
    assert np.all(p != p_before) and np.all(m != 0) and np.all(v != 0)
    # The first bias-corrected step moves every parameter by about lr.
    np.testing.assert_allclose(np.abs(p - p_before), 0.1, rtol=1e-4)


def test_zero_grad_only_decays(backend):
    B = backend
    p0 = np.linspace(-1, 1, 33).astype(np.float32)
    z = np.zeros_like(p0)
    p = B.put(p0)
    ops.adamw_step(p, B.put(z), B.put(z), B.put(z), lr=0.1, weight_decay=0.5, step=3)
    np.testing.assert_array_equal(B.get(p), p0 * np.float32(1 - 0.1 * 0.5))


@pytest.mark.parametrize("n", [33, 100_003])
def test_torch_parity(isa, rng, n):
    """Several steps with weight decay agree with torch.optim.AdamW to a few ulps."""
    torch = torch_or_skip()
    hp = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1)
    p0, grads, ours, ref64, _ = run_steps(rng, n, 6, hp)
    pt = torch.nn.Parameter(torch.tensor(p0))
    opt = torch.optim.AdamW([pt], lr=hp["lr"], betas=(hp["beta1"], hp["beta2"]), eps=hp["eps"],
                            weight_decay=hp["weight_decay"], foreach=False)
    for g in grads:
        pt.grad = torch.tensor(g)
        opt.step()
    st = opt.state[pt]
    for name, a, t in zip(("param", "m", "v"), ours,
                          (pt.detach(), st["exp_avg"], st["exp_avg_sq"])):
        t = t.numpy()
        np.testing.assert_allclose(a, t, rtol=4e-6, atol=1e-6 * np.abs(t).max(), err_msg=name)
    assert_error_bound(ours[0], ref64[0], pt.detach().numpy(), name="param vs torch error")


def test_beta1_zero_first_moment_is_the_gradient(backend):
    # At beta1 = 0, torch's lerp makes m the gradient exactly; m + 1 * (g - m)
    # would round g to the ulp of a much larger previous m (here to 0).
    B = backend
    p, m, v = (B.put(np.zeros(33, np.float32)) for _ in range(3))
    for step, g in ((1, 1.0), (2, 1e-9)):
        grad = np.full(33, g, np.float32)
        ops.adamw_step(p, B.put(grad), m, v, lr=1.0, beta1=0.0, beta2=0.0, weight_decay=0.0, step=step)
        np.testing.assert_array_equal(B.get(m), grad)
    # Steps of lr * m / (sqrt(v) + eps): 1 / (1 + 1e-8), then 1e-9 / (1e-9 + 1e-8).
    np.testing.assert_allclose(B.get(p), -(1 + 1 / 11), rtol=1e-6)


@pytest.mark.parametrize("beta1", [0.0, 0.3, 0.5])
def test_torch_parity_large_lerp_weight(isa, rng, beta1):
    """1 - beta1 >= 0.5 takes torch's other lerp branch; ours follows it."""
    torch = torch_or_skip()
    hp = dict(lr=1e-2, beta1=beta1, beta2=0.99, eps=1e-8, weight_decay=0.1)
    p0, grads, ours, _, _ = run_steps(rng, 1000, 5, hp)
    pt = torch.nn.Parameter(torch.tensor(p0))
    opt = torch.optim.AdamW([pt], lr=hp["lr"], betas=(beta1, hp["beta2"]), eps=hp["eps"],
                            weight_decay=hp["weight_decay"], foreach=False)
    for g in grads:
        pt.grad = torch.tensor(g)
        opt.step()
    np.testing.assert_allclose(ours[1], opt.state[pt]["exp_avg"].numpy(), rtol=5e-7, atol=0)
    np.testing.assert_allclose(ours[0], pt.detach().numpy(), rtol=4e-6, atol=1e-6)


def test_deterministic(backend, rng):
    B = backend
    p = rng.standard_normal(100_003).astype(np.float32)
    g = B.put(rng.standard_normal(p.shape).astype(np.float32))
    state = [B.put(p), B.put(np.zeros_like(p)), B.put(np.zeros_like(p))]
    again = [B.put(p), B.put(np.zeros_like(p)), B.put(np.zeros_like(p))]
    for s in (1, 2):
        ops.adamw_step(state[0], g, state[1], state[2], lr=1e-3, weight_decay=0.1, step=s)
        ops.adamw_step(again[0], g, again[1], again[2], lr=1e-3, weight_decay=0.1, step=s)
    for a, b in zip(state, again):
        np.testing.assert_array_equal(B.get(a), B.get(b))


def test_bad_inputs(rng):
    p = rng.standard_normal((4, 5)).astype(np.float32)
    g, m, v = np.ones_like(p), np.zeros_like(p), np.zeros_like(p)
    kw = dict(lr=1e-3, step=1)
    with pytest.raises(ValueError, match="step"):
        ops.adamw_step(p, g, m, v, lr=1e-3, step=0)
    with pytest.raises(ValueError, match="lr"):
        ops.adamw_step(p, g, m, v, lr=-1e-3, step=1)
    with pytest.raises(ValueError, match="lr"):
        ops.adamw_step(p, g, m, v, lr=float("nan"), step=1)
    with pytest.raises(ValueError, match="beta1"):
        ops.adamw_step(p, g, m, v, beta1=1.0, **kw)
    with pytest.raises(ValueError, match="beta2"):
        ops.adamw_step(p, g, m, v, beta2=-0.1, **kw)
    with pytest.raises(ValueError, match="eps"):
        ops.adamw_step(p, g, m, v, eps=0.0, **kw)
    with pytest.raises(ValueError, match="weight_decay"):
        ops.adamw_step(p, g, m, v, weight_decay=-1.0, **kw)
    with pytest.raises(TypeError, match="param"):
        ops.adamw_step(p.astype(np.float64), g, m, v, **kw)
    with pytest.raises(TypeError, match="grad"):
        ops.adamw_step(p, g.astype(np.float64), m, v, **kw)
    with pytest.raises(ValueError, match="grad"):
        ops.adamw_step(p, g[:3].copy(), m, v, **kw)
    with pytest.raises(ValueError, match="m"):
        ops.adamw_step(p, g, m.reshape(-1), v, **kw)
    with pytest.raises(ValueError, match="v"):
        ops.adamw_step(p, g, m, np.zeros((5, 4), np.float32).T, **kw)
    ro = p.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="param"):
        ops.adamw_step(ro, g, m, v, **kw)
    ro_m = m.copy()
    ro_m.flags.writeable = False
    with pytest.raises(ValueError, match="m"):
        ops.adamw_step(p, g, ro_m, v, **kw)
    with pytest.raises(ValueError, match="param"):
        ops.adamw_step(np.zeros((5, 8), np.float32)[:, ::2], g, m, v, **kw)
    np.testing.assert_array_equal(m, 0)  # nothing ran


def test_small_adamw(backend, rng):
    """The kernel once at a tiny size (compute-sanitizer runs the test_small_* set)."""
    B = backend
    p0, g = (rng.standard_normal(37).astype(np.float32) for _ in range(2))
    p, m, v = B.put(p0), B.put(np.zeros(37, np.float32)), B.put(np.zeros(37, np.float32))
    ops.adamw_step(p, B.put(g), m, v, lr=1e-3, step=1)
    want = adamw_ref(p0, g, np.zeros(37), np.zeros(37), 1, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
                     weight_decay=0.0)[0]
    np.testing.assert_allclose(B.get(p), want, rtol=1e-6, atol=1e-6)

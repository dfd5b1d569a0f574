"""fastlm.ops: scalar arguments (ints, reals, flags), layernorm's normalised axis and
arrays written in place that share memory with another argument. Every bad value
is a TypeError or ValueError naming the argument, on the CPU and the CUDA route."""
from __future__ import annotations

import numpy as np
import pytest

import fastlm
from fastlm import ops

GPU = fastlm.cuda_available()
gpu_only = pytest.mark.skipif(not GPU, reason="needs a CUDA GPU")

PYBIND_DUMP = "incompatible function arguments"


def adam_state(n=12):
    rng = np.random.default_rng(0)
    p = rng.standard_normal(n).astype(np.float32)
    g = rng.standard_normal(n).astype(np.float32)
    return p, g, np.zeros_like(p), np.zeros_like(p)


def ce_inputs():
    x = np.random.default_rng(1).standard_normal((4, 6)).astype(np.float32)
    return x, np.array([0, 5, 2, -100])


def ln_inputs(cols=8):
    x = np.random.default_rng(2).standard_normal((4, cols)).astype(np.float32)
    return x, np.ones(cols, np.float32), np.zeros(cols, np.float32)


def raises(exc, name):
    """pytest.raises for an error naming `name`, never pybind11's argument dump."""
    return pytest.raises(exc, match=rf"^[a-z_]+: .*\b{name}\b")


# ---- integers --------------------------------------------------------------------

@pytest.mark.parametrize("step", [2**63, 2**64 + 5, 10**30])
def test_step_beyond_int64(step):
    p, g, m, v = adam_state()
    with raises(ValueError, "step") as info:
        ops.adamw_step(p, g, m, v, lr=0.1, step=step)
    assert PYBIND_DUMP not in str(info.value)
    np.testing.assert_array_equal(m, 0)  # nothing ran


@pytest.mark.parametrize("step", [0, -1, -2**63, -2**63 - 1, np.int64(0)])
def test_step_below_one(step):
    p, g, m, v = adam_state()
    with raises(ValueError, "step") as info:
        ops.adamw_step(p, g, m, v, lr=0.1, step=step)
    assert ">= 1" in str(info.value) and PYBIND_DUMP not in str(info.value)


@pytest.mark.parametrize("step", [1.9, 2.0, np.float64(3.0), True, False, np.True_, "1", None,
                                  1 + 0j, [1]])
def test_step_not_an_integer(step):
    p, g, m, v = adam_state()
    with raises(TypeError, "step"):
        ops.adamw_step(p, g, m, v, lr=0.1, step=step)
    np.testing.assert_array_equal(m, 0)


@pytest.mark.parametrize("ignore_index", [2**63, -2**63 - 1, 10**40])
def test_ignore_index_beyond_int64(ignore_index):
    x, t = ce_inputs()
    with raises(ValueError, "ignore_index") as info:
        ops.cross_entropy(x, t, ignore_index=ignore_index)
    assert PYBIND_DUMP not in str(info.value)


@pytest.mark.parametrize("ignore_index", [1.7, -100.0, True, np.bool_(False), "-100", None])
def test_ignore_index_not_an_integer(ignore_index):
    x, t = ce_inputs()
    with raises(TypeError, "ignore_index"):
        ops.cross_entropy(x, t, ignore_index=ignore_index)


@pytest.mark.parametrize("step", [np.int64(3), np.int32(3), np.uint8(3), np.uint64(3)])
def test_numpy_integer_step_accepted(step):
    p, g, m, v = adam_state()
    ref = [a.copy() for a in (p, m, v)]
    ops.adamw_step(ref[0], g, ref[1], ref[2], lr=0.1, step=3)
    ops.adamw_step(p, g, m, v, lr=0.1, step=step)
    for a, r in zip((p, m, v), ref):
        np.testing.assert_array_equal(a, r)


def test_step_at_int64_max_accepted():
    p, g, m, v = adam_state()
    ops.adamw_step(p, g, m, v, lr=0.1, step=2**63 - 1)
    assert np.all(np.isfinite(p)) and np.all(m != 0)


@pytest.mark.parametrize("ignore_index", [np.int64(-1), np.int32(-1), np.int8(-1)])
def test_numpy_integer_ignore_index_accepted(ignore_index):
    x, t = ce_inputs()
    t = np.where(t == -100, -1, t)
    loss_ref, g_ref = ops.cross_entropy(x, t, ignore_index=-1)
    loss, g = ops.cross_entropy(x, t, ignore_index=ignore_index)
    assert loss == loss_ref
    np.testing.assert_array_equal(g, g_ref)
    assert np.all(g[3] == 0)


@pytest.mark.parametrize("ignore_index", [2**63 - 1, -2**63])
def test_ignore_index_int64_bounds_accepted(ignore_index):
    x, t = ce_inputs()
    t = np.where(t == -100, 1, t)
    loss, _ = ops.cross_entropy(x, t, ignore_index=ignore_index)
    assert np.isfinite(loss)


# ---- real numbers ----------------------------------------------------------------

ADAM_REALS = ["lr", "beta1", "beta2", "eps", "weight_decay"]


@pytest.mark.parametrize("name", ADAM_REALS)
@pytest.mark.parametrize("value, exc", [(v, TypeError) for v in ("0.1", None, True, np.bool_(True), 0.1 + 0j, [0.1],
                                                                  np.array([0.1], np.float32))]
                         + [(v, ValueError) for v in (float("inf"), float("-inf"), float("nan"), 10**400)])
def test_adamw_real_wrong_type_or_not_finite(name, value, exc):
    p, g, m, v = adam_state()
    kw = dict(lr=0.1, step=1)
    kw[name] = value
    with raises(exc, name):
        ops.adamw_step(p, g, m, v, **kw)
    np.testing.assert_array_equal(m, 0)  # nothing written


@pytest.mark.parametrize("name,value", [("lr", -1e-3), ("beta1", 1.0), ("beta1", -0.1),
                                        ("beta2", 1), ("beta2", np.float32(1.5)), ("eps", 0),
                                        ("eps", -1e-8), ("weight_decay", -0.5)])
def test_adamw_real_out_of_range(name, value):
    p, g, m, v = adam_state()
    kw = dict(lr=0.1, step=1)
    kw[name] = value
    with raises(ValueError, name):
        ops.adamw_step(p, g, m, v, **kw)


def test_adamw_numpy_and_int_reals_accepted():
    p, g, m, v = adam_state()
    ref = [a.copy() for a in (p, m, v)]
    ops.adamw_step(ref[0], g, ref[1], ref[2], lr=0.5, beta1=0.5, beta2=0.25, eps=0.125,
                   weight_decay=1.0, step=2)
    ops.adamw_step(p, g, m, v, lr=np.float32(0.5), beta1=np.float64(0.5), beta2=np.float16(0.25),
                   eps=np.float32(0.125), weight_decay=np.int64(1), step=np.int16(2))
    for a, r in zip((p, m, v), ref):
        np.testing.assert_array_equal(a, r)
    # Plain ints for the reals, and beta 0, lr 0 are valid.
    ops.adamw_step(p, g, m, v, lr=0, beta1=0, beta2=0, eps=1, weight_decay=0, step=1)


@pytest.mark.parametrize("eps", ["a", "1e-5", None, True, 1e-5j, [1e-5]])
def test_layernorm_eps_wrong_type(eps):
    x, w, b = ln_inputs()
    with raises(TypeError, "eps"):
        ops.layernorm(x, w, b, eps=eps)


@pytest.mark.parametrize("eps", [float("inf"), float("nan"), -1e-5, 10**400])
def test_layernorm_eps_bad_value(eps):
    x, w, b = ln_inputs()
    with raises(ValueError, "eps"):
        ops.layernorm(x, w, b, eps=eps)


@pytest.mark.parametrize("eps", [np.float32(1e-5), np.float64(1e-5), 0, np.int64(0), 0.0])
def test_layernorm_eps_numpy_and_int_accepted(eps):
    x, w, b = ln_inputs()
    ref = ops.layernorm(x, w, b, float(eps))
    for a, r in zip(ops.layernorm(x, w, b, eps=eps), ref):
        np.testing.assert_array_equal(a, r)


# ---- flags -----------------------------------------------------------------------

def test_flags_must_be_bools():
    a = np.ones((2, 3), np.float32)
    with raises(TypeError, "trans_a"):
        ops.matmul(a, a, trans_a="False", trans_b=True)
    with raises(TypeError, "trans_b"):
        ops.matmul(a, a, trans_b=1)
    with raises(TypeError, "precision"):
        ops.matmul(a, a.T.copy(), precision=None)
    q = np.ones((1, 1, 2, 4), np.float32)
    with raises(TypeError, "causal"):
        ops.attention(q, q, q, causal="no")
    out, lse = ops.attention(q, q, q)
    with raises(TypeError, "causal"):
        ops.attention_backward(q, q, q, q, out, lse, causal=None)
    x, t = ce_inputs()
    with raises(TypeError, "compute_grad"):
        ops.cross_entropy(x, t, compute_grad="False")


def test_numpy_bool_flags_accepted():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(ops.matmul(a, a, trans_b=np.True_), ops.matmul(a, a, trans_b=True))
    x, t = ce_inputs()
    loss, g = ops.cross_entropy(x, t, compute_grad=np.False_)
    assert g is None and loss == ops.cross_entropy(x, t)[0]


# ---- scalars are checked before the call into _C (any device) -----------------------

@pytest.mark.parametrize("call", [
    lambda a: ops.adamw_step(a, a, a, a, lr="0.1", step=1),
    lambda a: ops.adamw_step(a, a, a, a, lr=0.1, step=2**63),
    lambda a: ops.adamw_step(a, a, a, a, lr=0.1, step=1.5),
    lambda a: ops.cross_entropy(a, a, ignore_index=2**63),
    lambda a: ops.layernorm(a, a, a, eps=None),
    lambda a: ops.attention(a, a, a, causal="yes"),
])
def test_scalars_checked_before_routing(monkeypatch, call):
    class NoCall:
        def __getattr__(self, op):
            raise AssertionError(f"{op} was called before its scalars were checked")
    monkeypatch.setattr(ops, "_C", NoCall())
    with pytest.raises((TypeError, ValueError)) as info:
        call(np.ones((2, 2), np.float32))
    assert not isinstance(info.value, AssertionError)


# ---- layernorm: the normalised axis ------------------------------------------------

@pytest.mark.parametrize("shape", [(4, 0), (0,), (2, 3, 0), (1, 0)])
def test_layernorm_empty_last_axis(shape):
    x = np.ones(shape, np.float32)
    w, b = np.ones(0, np.float32), np.zeros(0, np.float32)
    with raises(ValueError, "x") as info:
        ops.layernorm(x, w, b)
    assert "last axis" in str(info.value)
    mean = np.zeros(shape[:-1], np.float32)
    with raises(ValueError, "x") as info:
        ops.layernorm_backward(x, x, w, mean, mean)
    assert "last axis" in str(info.value)


def test_layernorm_no_rows_still_accepted():
    # Nothing to normalise, nothing undefined: empty outputs, as before.
    for shape in ((0, 0), (0, 5), (3, 0, 4)):
        x = np.ones(shape, np.float32)
        w, b = np.ones(shape[-1], np.float32), np.zeros(shape[-1], np.float32)
        y, mean, rstd = ops.layernorm(x, w, b)
        assert y.shape == shape and mean.shape == shape[:-1] and mean.size == 0
        dx, dw, db = ops.layernorm_backward(x, x, w, mean, rstd)
        assert dx.shape == shape and dw.shape == (shape[-1],)


# ---- arrays written in place must not share memory ---------------------------------

ADAM_NAMES = ("param", "grad", "m", "v")
PAIRS = [(a, b) for i, a in enumerate(ADAM_NAMES) for b in ADAM_NAMES[i + 1:]]


@pytest.mark.parametrize("a,b", PAIRS)
def test_adamw_same_array_twice(a, b):
    arrays = dict(zip(ADAM_NAMES, adam_state()))
    arrays[b] = arrays[a]
    before = {k: x.copy() for k, x in arrays.items()}
    with pytest.raises(ValueError, match=rf"adamw_step: {a} and {b} share memory"):
        ops.adamw_step(*arrays.values(), lr=0.1, step=1)
    for k, x in arrays.items():
        np.testing.assert_array_equal(x, before[k])  # nothing ran


@pytest.mark.parametrize("a,b", PAIRS)
def test_adamw_partial_overlap(a, b):
    arrays = dict(zip(ADAM_NAMES, adam_state(12)))
    buf = np.zeros(18, np.float32)
    arrays[a], arrays[b] = buf[:12], buf[6:]
    with pytest.raises(ValueError, match=rf"adamw_step: {a} and {b} share memory"):
        ops.adamw_step(*arrays.values(), lr=0.1, step=1)
    np.testing.assert_array_equal(buf, 0)


def test_adamw_disjoint_views_of_one_buffer_accepted():
    p, g, m, v = adam_state(12)
    buf = np.zeros(48, np.float32)
    buf[:12], buf[12:24] = p, g
    ref = [p.copy(), m.copy(), v.copy()]
    ops.adamw_step(ref[0], g, ref[1], ref[2], lr=0.1, step=1)
    views = [buf[i * 12:(i + 1) * 12] for i in range(4)]
    ops.adamw_step(*views, lr=0.1, step=1)
    for a, r in zip((views[0], views[2], views[3]), ref):
        np.testing.assert_array_equal(a, r)


def test_cross_entropy_out_overlapping_targets():
    x, _ = ce_inputs()
    out = np.zeros((4, 6), np.float32)
    targets = out.reshape(-1).view(np.int32)[:4]  # int32 targets living inside out
    with pytest.raises(ValueError, match="cross_entropy: out and targets share memory"):
        ops.cross_entropy(x, targets, out=out)
    # Without a gradient out is not written: no conflict.
    loss, g = ops.cross_entropy(x, targets, out=out, compute_grad=False)
    assert g is None and np.isfinite(loss)


def test_cross_entropy_in_place_still_accepted():
    x, t = ce_inputs()
    loss, g = ops.cross_entropy(x, t)
    xi = x.copy()
    loss2, g2 = ops.cross_entropy(xi, t, out=xi)
    assert g2 is xi and loss2 == loss
    np.testing.assert_array_equal(xi, g)


# The device arrays' own checks (overlaps, the normalised axis) run in _C for
# every device: tests/test_op_layer.py checks them on the emulated device.


# ---- the same on a real GPU ---------------------------------------------------------

@gpu_only
def test_gpu_adamw_overlap_and_scalars():
    p, g, m, v = (fastlm.to_device(a) for a in adam_state())
    with pytest.raises(ValueError, match="adamw_step: m and v share memory"):
        ops.adamw_step(p, g, m, m, lr=0.1, step=1)
    with raises(ValueError, "step"):
        ops.adamw_step(p, g, m, v, lr=0.1, step=2**63)
    with raises(TypeError, "lr"):
        ops.adamw_step(p, g, m, v, lr="0.1", step=1)
    np.testing.assert_array_equal(m.numpy(), 0)
    ops.adamw_step(p, g, m, v, lr=np.float32(0.1), step=np.int64(1))
    assert np.all(m.numpy() != 0)


@gpu_only
def test_gpu_layernorm_empty_axis():
    x = fastlm.to_device(np.ones((4, 0), np.float32))
    w, b = fastlm.to_device(np.ones(0, np.float32)), fastlm.to_device(np.zeros(0, np.float32))
    with raises(ValueError, "x"):
        ops.layernorm(x, w, b)
    stat = fastlm.to_device(np.zeros(4, np.float32))
    with raises(ValueError, "x"):
        ops.layernorm_backward(x, x, w, stat, stat)

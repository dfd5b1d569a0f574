"""Property-based fuzzing of every fastlm.ops function with hypothesis.

Each example draws sizes (0 and 1 included), values (scaled up to float32
overflow, with NaN and inf sprinkled in), and one layout change to one argument:
an unaligned copy, a strided or transposed view, a wrong dtype, a list, or an
aliased ``out=``. The op must then raise TypeError/ValueError naming the
argument, or return a result that matches the float64 reference (from the op's
own test module) wherever the inputs it depends on are finite and neither the
reference nor a plain float32 evaluation of it overflows float32 (within the
flash-attention bound: a few times the plain float32 error). A crash fails the run.
``test_matmul_bf16`` draws larger sizes instead, across the block boundaries of
both bfloat16 GEMM engines, on plain operands (test_matmul_bf16.py has their
specials and argument checks).

Bounded for CI: FUZZ_EXAMPLES examples per op and ISA (environment variable
FASTLM_FUZZ_EXAMPLES, default 40), derandomized so that a CI run is repeatable
(FASTLM_FUZZ_RANDOM=1 searches afresh);
``--hypothesis-show-statistics`` shows the count of cases tried.
"""
from __future__ import annotations

import os
import re

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import fastlm  # noqa: E402
from fastlm import _C, ops  # noqa: E402
from conftest import assert_error_bound  # noqa: E402
from reference.adamw import adamw_ref  # noqa: E402
from reference.attention import ref_backward as attention_backward_ref  # noqa: E402
from reference.attention import ref_forward as attention_ref  # noqa: E402
from reference.bf16 import matmul_refs  # noqa: E402
from reference.cross_entropy import ce_ref  # noqa: E402
from reference.dropout import ref_keep  # noqa: E402
from reference.gelu import gelu_grad_ref, gelu_ref  # noqa: E402
from reference.rnn_cell import gru_ref, gru_ref_backward  # noqa: E402
from reference.layernorm import ln_backward_ref, ln_ref  # noqa: E402
from reference.rnn_cell import lstm_backward_ref, lstm_ref  # noqa: E402
from reference.softmax import softmax_backward_ref, softmax_ref  # noqa: E402
from reference.sum_squares import naive32 as sum_squares_naive32  # noqa: E402

FUZZ_EXAMPLES = int(os.environ.get("FASTLM_FUZZ_EXAMPLES", "40"))
# FASTLM_FUZZ_RANDOM=1: a fresh random search instead of CI's repeatable one.
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=not os.environ.get("FASTLM_FUZZ_RANDOM"),
                database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])
F32_MAX = float(np.finfo(np.float32).max)

DIMS = st.sampled_from([0, 1, 1, 2, 3, 5, 17, 33])
POS = st.sampled_from([1, 1, 2, 3, 5, 17, 33])
LAYOUTS = ["plain", "plain", "plain", "unaligned", "strided", "transposed", "float64", "float16", "int32",
           "list"]


# ---- drawing arrays -----------------------------------------------------------------

def values(data, shape, *, scale=None, special=True) -> np.ndarray:
    """float32 values of ``shape``: normal times a drawn scale; sometimes NaN/inf entries."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    if scale is None:
        scale = data.draw(st.sampled_from([1.0, 1.0, 1e-3, 10.0, 1e18, 1e36]), label="scale")
    x = np.asarray(rng.standard_normal(shape) * scale, np.float32)
    if special and x.size and data.draw(st.integers(0, 4), label="specials") == 0:
        n = data.draw(st.integers(1, min(3, x.size)), label="n_specials")
        flat = x.reshape(-1)
        for i in rng.choice(x.size, n, replace=False):
            flat[i] = data.draw(st.sampled_from([np.nan, np.inf, -np.inf]), label="special")
    return x


def misaligned(x: np.ndarray) -> np.ndarray:
    buf = np.zeros(x.nbytes + 1, np.uint8)
    out = np.frombuffer(buf.data, x.dtype, count=x.size, offset=1).reshape(x.shape)
    out[...] = x
    return out


def relayout(x: np.ndarray, layout: str):
    """(the argument to pass, the exception expected or None). A strided or
    transposed view that NumPy still counts as C-contiguous (size-0/1 axes) is
    a legal argument."""
    if layout == "plain":
        return x, None
    if layout == "unaligned":
        return misaligned(x), None
    if layout in ("strided", "transposed"):
        if layout == "strided":
            v = np.repeat(x, 2, axis=-1)[..., ::2] if x.ndim else x
        else:
            v = np.ascontiguousarray(np.swapaxes(x, 0, -1)).swapaxes(0, -1) if x.ndim >= 2 else x
        assert np.array_equal(v, x, equal_nan=True)
        return v, (None if v.flags.c_contiguous else (ValueError, "must be C-contiguous"))
    if layout == "list":
        return x.tolist(), (TypeError, "must be a numpy.ndarray")
    if x.dtype == np.float32:
        return x.astype(layout), (TypeError, "must have dtype float32")
    return x.astype(np.float32), (TypeError, "must have dtype int32 or int64")


RAISED = object()  # call(): the op raised the error its arguments call for


def call(data, fn, args: dict, arrays: list, writable=()):
    """Apply one drawn layout to one of ``arrays`` (names in ``args``; those in
    ``writable`` are written in place), then call ``fn(**args)``. Returns its
    result, or RAISED when the op raised the error the layout calls for (which
    must name the argument)."""
    name = data.draw(st.sampled_from(arrays), label="arg")
    layout = data.draw(st.sampled_from(LAYOUTS), label="layout")
    if layout == "unaligned" and name in writable and np.size(args[name]):  # an empty one is never accessed
        args[name] = misaligned(args[name])
        with pytest.raises(ValueError, match=rf"{name} must be aligned to 4 bytes"):
            fn(**args)
        return RAISED
    orig = args[name]
    with np.errstate(all="ignore"):
        args[name], expected = relayout(orig, layout)
    if expected is not None:
        kind, msg = expected
        with pytest.raises(kind, match=rf"\b{re.escape(name)}\b.*{msg}|{msg}.*\b{re.escape(name)}\b"):
            fn(**args)
        return RAISED
    out = fn(**args)
    if name in writable and args[name] is not orig:
        orig[...] = args[name]  # an in-place op wrote the unaligned copy or view: compare its result
    return out


def close(ours, ref64, naive32, mask=None, name="", scale=0.0):
    """ours == ref64 within the flash-attention bound where ``mask`` (default
    all) holds, the reference is finite and inside the float32 range. ``scale``:
    the magnitude of the terms that cancel into the result (a gradient that is
    exactly 0 in float64 is a few ulps of them in float32), for the ulp floor."""
    ours = np.asarray(ours, np.float64)
    ref64 = np.asarray(ref64, np.float64)
    assert ours.shape == ref64.shape, f"{name}: shape {ours.shape} != {ref64.shape}"
    keep = np.isfinite(ref64) & (np.abs(ref64) <= F32_MAX)
    keep &= np.isfinite(np.asarray(naive32, np.float64))  # the naive float32 error bounds ours: it must be finite
    if mask is not None:
        keep &= np.broadcast_to(mask, keep.shape)
    if keep.any():
        if np.max(np.abs(ours[keep] - ref64[keep])) <= 8 * np.finfo(np.float32).eps * scale:
            return
        assert_error_bound(ours[keep], ref64[keep], np.asarray(naive32, np.float64)[keep], factor=8, name=name)


def finite_rows(*xs):
    """Rows (all but the last axis) whose entries in every x are finite."""
    m = None
    for x in xs:
        r = np.all(np.isfinite(x), axis=-1)
        m = r if m is None else m & r
    return m[..., None]


fuzz = pytest.mark.usefixtures("isa")


# ---- the ops ----------------------------------------------------------------------

@fuzz
@FUZZ
@given(data=st.data())
def test_matmul(data):
    m, k, n = data.draw(DIMS), data.draw(DIMS), data.draw(DIMS)
    ta, tb, with_bias = data.draw(st.booleans()), data.draw(st.booleans()), data.draw(st.booleans())
    a = values(data, (k, m) if ta else (m, k))
    b = values(data, (n, k) if tb else (k, n))
    args = dict(a=a, b=b, trans_a=ta, trans_b=tb, bias=values(data, (n,)) if with_bias else None)
    c = call(data, ops.matmul, args, ["a", "b", "bias"] if with_bias else ["a", "b"])
    if c is RAISED:
        return
    opa, opb = (a.T if ta else a), (b.T if tb else b)
    bias = args["bias"] if with_bias else np.zeros(n, np.float32)
    bias = np.asarray(bias, np.float32)
    ref = lambda t: opa.astype(t) @ opb.astype(t) + bias.astype(t)  # noqa: E731
    with np.errstate(all="ignore"):
        r64, r32 = ref(np.float64), ref(np.float32)
    mask = np.isfinite(opa).all(1)[:, None] & np.isfinite(opb).all(0)[None, :] & np.isfinite(bias)[None, :]
    # Sums of products that can cancel: good to the ulps of the largest term.
    close(c, r64, r32, mask, "matmul", scale=max(finite_max(opa) * finite_max(opb), finite_max(bias)))


@FUZZ
@given(m=st.integers(1, 600), n=st.integers(1, 600), k=st.integers(1, 600), trans_a=st.booleans(),
       trans_b=st.booleans(), bias=st.booleans(), accumulate=st.booleans(), prepack=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_matmul_bf16(bf16, m, n, k, trans_a, trans_b, bias, accumulate, prepack, seed):
    """precision="bf16" on each engine (the bf16 fixture), at sizes drawn across
    every block boundary of both (the few-row path, 16-row tiles, 256-row A
    blocks split between the threads, K blocks past 512), with bias,
    accumulation into c and B packed beforehand drawn too: within the bound of
    the float64 product of the rounded operands."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    bias_v = rng.standard_normal(n).astype(np.float32) if bias else None
    c0 = rng.standard_normal((m, n)).astype(np.float32) if accumulate else np.zeros((m, n), np.float32)
    ref, naive = matmul_refs(a, b, trans_a, trans_b, c0 + (bias_v if bias else 0))
    c = c0.copy()
    _C._matmul_into(c, a, b, trans_a, trans_b, bias_v, "bf16", accumulate, prepack)
    assert_error_bound(c, ref, naive, name=f"{bf16} {m}x{n}x{k} trans_a={trans_a} trans_b={trans_b}")


@fuzz
@FUZZ
@given(data=st.data())
def test_softmax_and_backward(data):
    shape = tuple(data.draw(st.lists(DIMS, min_size=1, max_size=3)))
    x = values(data, shape)
    y = call(data, ops.softmax, dict(x=x), ["x"])
    if y is RAISED or x.size == 0:
        return
    with np.errstate(all="ignore"):
        close(y, softmax_ref(x), softmax_ref(x, np.float32), finite_rows(x), "softmax")
    y = ops.softmax(x)
    dy = values(data, shape)
    dx = call(data, ops.softmax_backward, dict(dy=dy, y=y), ["dy", "y"])
    if dx is not RAISED:
        with np.errstate(all="ignore"):
            # dx = y (dy - sum(dy y)): where one y is near 1 its dy cancels
            # against the sum, good to the ulps of the terms dy y.
            close(dx, softmax_backward_ref(dy, y), softmax_backward_ref(dy, y, np.float32), finite_rows(y, dy),
                  "softmax_backward", scale=finite_max(dy * y))


@fuzz
@FUZZ
@given(data=st.data())
def test_layernorm_and_backward(data):
    rows, cols = data.draw(DIMS), data.draw(POS)
    x, w, b = values(data, (rows, cols)), values(data, (cols,), scale=1.0), values(data, (cols,), scale=1.0)
    got = call(data, ops.layernorm, dict(x=x, weight=w, bias=b), ["x", "weight", "bias"])
    if got is RAISED:
        return
    ok = finite_rows(x) & np.isfinite(w).all() & np.isfinite(b).all()
    with np.errstate(all="ignore"):
        ref64, ref32 = ln_ref(x, w, b), ln_ref(x, w, b, dtype=np.float32)
    for ours, r64, r32, name in zip(got, ref64, ref32, ("y", "mean", "rstd")):
        # A mean is a sum of terms that can cancel: good to the ulps of the x summed.
        close(ours, r64, r32, ok if name == "y" else ok[:, 0], f"layernorm {name}",
              scale=finite_max(x) if name == "mean" else 0.0)
    _, mean, rstd = ops.layernorm(x, w, b)
    dy = values(data, (rows, cols), scale=1.0)
    grads = call(data, ops.layernorm_backward, dict(dy=dy, x=x, weight=w, mean=mean, rstd=rstd),
                 ["dy", "x", "weight", "mean", "rstd"])
    if grads is RAISED:
        return
    with np.errstate(all="ignore"):
        ref64, ref32 = ln_backward_ref(dy, x, w), ln_backward_ref(dy, x, w, dtype=np.float32)
    ok = ok & finite_rows(dy)
    # Each gradient is a sum of terms that can cancel (dx of a 2-wide row is 0):
    # good to the ulps of its largest term.
    with np.errstate(all="ignore"):
        xhat = (x - mean[:, None].astype(np.float64)) * rstd[:, None]
        dx_terms = finite_max(rstd[:, None] * dy * w) * max(1.0, finite_max(xhat))
    close(grads[0], ref64[0], ref32[0], ok, "layernorm dx", scale=dx_terms)
    if ok.all():
        close(grads[1], ref64[1], ref32[1], None, "layernorm dweight", scale=finite_max(dy * xhat))
        close(grads[2], ref64[2], ref32[2], None, "layernorm dbias", scale=finite_max(dy))


@fuzz
@FUZZ
@given(data=st.data())
def test_gelu_and_backward(data):
    shape = tuple(data.draw(st.lists(DIMS, min_size=0, max_size=3)))
    x, dy = values(data, shape), values(data, shape)
    y = call(data, ops.gelu, dict(x=x), ["x"])
    if y is not RAISED:
        with np.errstate(all="ignore"):
            # 1 + tanh(u) cancels for x << 0: the result is a few ulps of x
            close(y, gelu_ref(x), gelu_ref(x, np.float32), np.isfinite(x), "gelu", scale=finite_max(x))
    dx = call(data, ops.gelu_backward, dict(dy=dy, x=x), ["dy", "x"])
    if dx is not RAISED:
        with np.errstate(all="ignore"):
            close(dx, gelu_grad_ref(dy, x), gelu_grad_ref(dy, x, np.float32), np.isfinite(x) & np.isfinite(dy),
                  "gelu_backward", scale=finite_max(dy))


@fuzz
@FUZZ
@given(data=st.data())
def test_attention_and_backward(data):
    B, H, T, D = data.draw(DIMS), data.draw(st.sampled_from([1, 2])), data.draw(DIMS), data.draw(POS)
    Tk = data.draw(st.sampled_from([T, T, 1, 3, 17])) if T else data.draw(DIMS)
    causal = data.draw(st.booleans())
    scale = data.draw(st.sampled_from([1.0, 0.1, 10.0]))
    q, k, v = (values(data, s, scale=scale) for s in ((B, H, T, D), (B, H, Tk, D), (B, H, Tk, D)))
    got = call(data, ops.attention, dict(q=q, k=k, v=v, causal=causal), ["q", "k", "v"])
    if got is RAISED or q.size == 0:
        return
    out, lse = got
    ok = np.isfinite(q).all(axis=(2, 3)) & np.isfinite(k).all(axis=(2, 3)) & np.isfinite(v).all(axis=(2, 3))
    with np.errstate(all="ignore"):
        o64, l64, _ = attention_ref(q, k, v, causal)
        o32, l32, _ = attention_ref(q, k, v, causal, np.float32)
    # An ulp of the largest score moves the softmax weights by that much relative.
    score = finite_max(q) * finite_max(k) * np.sqrt(D)
    close(out, o64, o32, ok[:, :, None, None], "attention out", scale=score * finite_max(v))
    close(lse, l64, l32, ok[:, :, None], "attention lse", scale=score)
    if causal and T > Tk:  # queries that see no key (of finite heads): out 0, lse -inf
        assert np.all(out[:, :, :T - Tk][ok] == 0)
        assert np.all(lse[:, :, :T - Tk][ok] == -np.inf)
    if Tk != T:
        return
    out, lse = ops.attention(q, k, v, causal=causal)
    dout = values(data, q.shape, scale=1.0)
    grads = call(data, ops.attention_backward, dict(dout=dout, q=q, k=k, v=v, out=out, lse=lse, causal=causal),
                 ["dout", "q", "k", "v", "out", "lse"])
    if grads is RAISED:
        return
    ok &= np.isfinite(dout).all(axis=(2, 3))
    with np.errstate(all="ignore"):
        r64 = attention_backward_ref(dout, q, k, v, causal)
        r32 = attention_backward_ref(dout, q, k, v, causal, np.float32)
    # dq, dk sum products of these, with the probabilities recomputed from the
    # forward's float32 lse: an ulp of the largest score off, as for out.
    terms = finite_max(dout) * finite_max(v) * finite_max(q, k) * max(1.0, score)
    for ours, a, b, name in zip(grads, r64, r32, ("dq", "dk", "dv")):
        close(ours, a, b, ok[:, :, None, None], f"attention_backward {name}", scale=terms)


@fuzz
@FUZZ
@given(data=st.data())
def test_dropout_and_backward(data):
    shape = tuple(data.draw(st.lists(DIMS, min_size=0, max_size=3)))
    p = data.draw(st.sampled_from([0.0, 0.1, 0.5, 0.9]))
    seed = data.draw(st.integers(0, 2**64 - 1))
    for op, name in ((ops.dropout, "x"), (ops.dropout_backward, "dy")):
        x = values(data, shape)
        y = call(data, lambda **kw: op(kw[name], p, seed=seed), {name: x}, [name])
        if y is RAISED:
            continue
        keep = ref_keep(seed, np.arange(x.size), p).reshape(shape)
        with np.errstate(all="ignore"):
            expect = np.where(keep, x * np.float32(1 / (1 - np.float32(p))), np.float32(0))
        fin = np.isfinite(x)
        np.testing.assert_array_equal(np.asarray(y)[fin], expect[fin])  # the mask is exact


@fuzz
@FUZZ
@given(data=st.data())
def test_cross_entropy(data):
    N, V = data.draw(DIMS), data.draw(POS)
    logits = values(data, (N, V))
    ignore = data.draw(st.sampled_from([-100, 0, -1, 2**40]))
    t = np.asarray(data.draw(st.lists(st.sampled_from([ignore] + list(range(V))), min_size=N, max_size=N)),
                   data.draw(st.sampled_from([np.int64, np.int32])) if abs(ignore) < 2**31 else np.int64)
    compute_grad = data.draw(st.booleans())
    out_kind = data.draw(st.sampled_from(["none", "new", "logits", "view", "partial"]))
    with np.errstate(all="ignore"):
        l64, g64 = ce_ref(logits, t, ignore) if N else (np.nan, np.zeros((0, V)))
        l32, g32 = ce_ref(logits, t, ignore, np.float32) if N else (np.nan, np.zeros((0, V)))
    x = logits.copy()
    out = {"none": None, "new": np.full_like(x, 7.0), "logits": x, "view": x[:], "partial": None}[out_kind]
    if out_kind == "partial" and compute_grad and N > 2 and V > 1:  # rows 1..N-2 shared
        with pytest.raises(ValueError, match="out overlaps logits partially"):
            ops.cross_entropy(x[1:], t[1:], ignore_index=ignore, out=x[:-1])
        return
    got = call(data, ops.cross_entropy, dict(logits=x, targets=t, ignore_index=ignore, out=out,
                                             compute_grad=compute_grad),
               ["logits", "targets"] + (["out"] if out is not None and compute_grad else []), writable=("out",))
    if got is RAISED:
        return
    loss, grad = got
    assert (grad is None) == (not compute_grad)
    rows = finite_rows(logits)
    kept = t != ignore
    if np.all(rows[kept]) and np.isfinite(l64):
        # Each row's loss is the log of a sum whose largest term is 1 (exp of
        # the max minus itself): a float32 sum near 1 is good to about an ulp of
        # 1, whatever the naive evaluation's rounding happened to get (a loss of
        # 0.003 from logits of 10: ours 1.2e-8 off, naive 9e-10).
        close(np.float64(loss), np.float64(l64), np.float64(l32), None, "cross_entropy loss", scale=1.0)
    elif not kept.any():
        assert np.isnan(loss)
    if compute_grad and np.all(rows[kept]):
        close(grad, g64, g32, rows, "cross_entropy dlogits")


def cell_inputs(data, gates, with_c):
    n, i, h = data.draw(DIMS), data.draw(DIMS), data.draw(POS)
    scale = data.draw(st.sampled_from([1.0, 0.1, 10.0]))
    arrs = dict(x=values(data, (n, i), scale=scale), h=values(data, (n, h), scale=scale))
    if with_c:
        arrs["c"] = values(data, (n, h), scale=scale)
    arrs.update(w_ih=values(data, (gates * h, i), scale=0.5), w_hh=values(data, (gates * h, h), scale=0.5),
                b_ih=values(data, (gates * h,), scale=0.5), b_hh=values(data, (gates * h,), scale=0.5))
    return arrs


def all_finite(arrs):
    return all(np.isfinite(a).all() for a in arrs.values())


def finite_max(*xs) -> float:
    """The largest finite magnitude in xs (0 when none)."""
    return max([float(np.max(np.abs(x[np.isfinite(x)]), initial=0.0)) for x in map(np.asarray, xs)] + [0.0])


def compare_all(op, names, ours, refs, ok):
    """close() for each output of a cell op; refs is a function of the dtype.
    The ulp floor is that of the op's largest output: an output summed from
    terms that cancel (dx of a 1-wide input) is a few ulps of the terms."""
    with np.errstate(all="ignore"):
        r64, r32 = refs(np.float64), refs(np.float32)
    scale = finite_max(*r64)
    for o, x64, x32, name in zip(ours, r64, r32, names):
        close(o, x64, x32, ok, f"{op} {name}", scale=scale)


def cell_forward(data, op, gates, with_c, names, refs):
    """Fuzz a cell's forward: (inputs, whether all are finite, outputs), or None
    when the op rejected the inputs (as it must: call() checks). refs(a, dtype)
    gives the reference outputs."""
    a = cell_inputs(data, gates, with_c)
    if call(data, op, dict(a), list(a)) is RAISED:
        return None
    ok = all_finite(a)
    outs = op(**a)
    compare_all(op.__name__, names, outs, lambda t: refs(a, t), ok)
    return a, ok, outs


def cell_backward(data, op, args: dict, refs, names, ok):
    """Fuzz a cell's backward given its arguments (the upstream gradients first)."""
    grads = call(data, op, dict(args), list(args))
    if grads is not RAISED:
        ok = ok and all(np.isfinite(args[k]).all() for k in args if k.startswith("d"))
        compare_all(op.__name__, names, grads, refs, ok)


@fuzz
@FUZZ
@given(data=st.data())
def test_lstm_cell_and_backward(data):
    got = cell_forward(data, ops.lstm_cell, 4, True, ("h_next", "c_next", "gates"),
                       lambda a, t: lstm_ref(**a, dtype=t))
    if got is None:
        return
    a, ok, (_, c_next, gates) = got
    dh, dc = values(data, a["h"].shape, scale=1.0), values(data, a["h"].shape, scale=1.0)
    args = dict(dh_next=dh, dc_next=dc, x=a["x"], h=a["h"], c=a["c"], c_next=c_next, gates=gates,
                w_ih=a["w_ih"], w_hh=a["w_hh"])
    cell_backward(data, ops.lstm_cell_backward, args, lambda t: lstm_backward_ref(dh, dc, **a, dtype=t),
                  ("dx", "dh", "dc", "dw_ih", "dw_hh", "db"), ok)


@fuzz
@FUZZ
@given(data=st.data())
def test_gru_cell_and_backward(data):
    def as_t(a, t):  # gru_ref computes in its inputs' dtype
        return {k: v.astype(t) for k, v in a.items()}

    def forward_ref(a, t):
        h_next, gates = gru_ref(**as_t(a, t))
        return h_next, np.concatenate(gates, axis=1)

    got = cell_forward(data, ops.gru_cell, 3, False, ("h_next", "gates"), forward_ref)
    if got is None:
        return
    a, ok, (h_next, gates) = got
    dh = values(data, h_next.shape, scale=1.0)
    args = dict(dh_next=dh, x=a["x"], h=a["h"], gates=gates, w_ih=a["w_ih"], w_hh=a["w_hh"])
    cell_backward(data, ops.gru_cell_backward, args, lambda t: gru_ref_backward(dh.astype(t), **as_t(a, t)),
                  ("dx", "dh", "dw_ih", "dw_hh", "db_ih", "db_hh"), ok)


@fuzz
@FUZZ
@given(data=st.data())
def test_adamw_step(data):
    shape = tuple(data.draw(st.lists(DIMS, min_size=1, max_size=2)))
    p, g = values(data, shape, scale=1.0), values(data, shape)
    m, v = values(data, shape, scale=0.1, special=False), np.abs(values(data, shape, scale=0.1, special=False))
    hp = dict(lr=data.draw(st.sampled_from([0.0, 1e-3, 0.5])), beta1=data.draw(st.sampled_from([0.0, 0.9])),
              beta2=data.draw(st.sampled_from([0.0, 0.999])), eps=data.draw(st.sampled_from([1e-8, 1.0])),
              weight_decay=data.draw(st.sampled_from([0.0, 0.1])))
    step = data.draw(st.sampled_from([1, 2, 1000]))
    with np.errstate(all="ignore"):
        r64 = adamw_ref(p, g, m, v, step, **hp)
        r32 = adamw_ref(p, g, m, v, step, **hp, dtype=np.float32)
    if p.size and data.draw(st.booleans(), label="alias"):
        with pytest.raises(ValueError, match="share memory"):
            ops.adamw_step(p, g, p, v, step=step, **hp)
        return
    args = dict(param=p.copy(), grad=g, m=m.copy(), v=v.copy(), step=step, **hp)
    written = {k: args[k] for k in ("param", "m", "v")}
    if call(data, ops.adamw_step, args, ["param", "grad", "m", "v"], writable=("param", "m", "v")) is RAISED:
        return
    ok = np.isfinite(p) & np.isfinite(g)
    for name, ref64, ref32 in zip(("param", "m", "v"), r64, r32):
        close(written[name], ref64, ref32, ok, f"adamw_step {name}")


@fuzz
@FUZZ
@given(data=st.data())
def test_sum_squares(data):
    x = values(data, tuple(data.draw(st.lists(DIMS, min_size=1, max_size=2))))
    got = call(data, ops.sum_squares, dict(x=x), ["x"])
    if got is RAISED:
        return
    with np.errstate(all="ignore"):
        ref = np.sum(np.square(x, dtype=np.float64))
        close(np.array([got]), np.array([ref]), np.array([sum_squares_naive32(x)]), name="sum_squares")


def test_every_op_is_fuzzed():
    fuzzed = {"matmul", "softmax", "softmax_backward", "layernorm", "layernorm_backward", "gelu", "gelu_backward",
              "attention", "attention_backward", "dropout", "dropout_backward", "cross_entropy", "lstm_cell", "lstm_cell_backward", "gru_cell",
              "gru_cell_backward", "adamw_step", "sum_squares"}
    assert set(ops.__all__) == fuzzed, set(ops.__all__) ^ fuzzed
    assert fastlm.cpu_isa() in fastlm.available_cpu_isas()

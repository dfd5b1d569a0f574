"""The one op-binding layer (csrc/bindings/ops.cpp, op_args.cpp) on the emulated
CUDA device (FASTLM_EMULATE_CUDA=1, no GPU needed): DeviceArrays are host memory
from the emulated allocator, and every op on them runs the CPU kernel table, so
each must equal the same op on NumPy arrays bit for bit. Also the checks the
layer makes once for every device, with their messages."""
from __future__ import annotations

import numpy as np
import pytest

import fastlm
from fastlm import _C, ops

F32 = np.float32


@pytest.fixture(autouse=True)
def emulated(monkeypatch):
    monkeypatch.setenv("FASTLM_EMULATE_CUDA", "1")


def dev(x, dtype=None):
    d = fastlm.to_device(x, dtype)
    assert d.emulated
    return d


def host(y):
    if isinstance(y, tuple):
        return tuple(host(v) for v in y)
    return y.numpy() if isinstance(y, fastlm.DeviceArray) else y


def same(emulated, cpu):
    """Bit-for-bit equality (NaN where NaN), of arrays or tuples of them."""
    emulated, cpu = host(emulated), host(cpu)
    if cpu is None:
        assert emulated is None
        return
    if isinstance(cpu, tuple):
        assert isinstance(emulated, tuple) and len(emulated) == len(cpu)
        for e, c in zip(emulated, cpu):
            same(e, c)
        return
    if isinstance(cpu, float):
        assert (np.isnan(cpu) and np.isnan(emulated)) or emulated == cpu
        return
    assert emulated.shape == cpu.shape and emulated.dtype == cpu.dtype
    np.testing.assert_array_equal(emulated.view(np.uint32) if emulated.dtype == F32 else emulated,
                                  cpu.view(np.uint32) if cpu.dtype == F32 else cpu)


def both(op, *arrays, **kw):
    """op on host arrays and on their emulated copies: equal bit for bit."""
    cpu = op(*arrays, **kw)
    on_dev = op(*(dev(a) if isinstance(a, np.ndarray) else a for a in arrays),
                **{k: dev(a) if isinstance(a, np.ndarray) else a for k, a in kw.items()})
    same(on_dev, cpu)
    return on_dev


def normal(rng, *shape, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(F32)


# ---- every op, emulated == CPU -----------------------------------------------------

@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (3, 17, 5), (33, 9, 70), (0, 4, 3), (5, 3, 0)])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_matmul(rng, m, n, k, trans_a, trans_b):
    a = normal(rng, *((k, m) if trans_a else (m, k)))
    b = normal(rng, *((n, k) if trans_b else (k, n)))
    bias = normal(rng, n)
    for precision in ("highest", "tf32"):
        both(ops.matmul, a, b, trans_a=trans_a, trans_b=trans_b, bias=bias, precision=precision)
    both(ops.matmul, a, b, trans_a=trans_a, trans_b=trans_b)


@pytest.mark.parametrize("shape", [(1,), (7,), (3, 31), (2, 5, 129), (0, 4), (4, 0)])
def test_elementwise_and_rows(rng, shape):
    x, dy = normal(rng, *shape, scale=3.0), normal(rng, *shape)
    both(ops.softmax, x)
    both(ops.softmax_backward, dy, ops.softmax(x))
    for approximate in ("tanh", "none"):
        both(ops.gelu, x, approximate=approximate)
        both(ops.gelu_backward, dy, x, approximate=approximate)
    both(ops.dropout, x, 0.3, seed=7)
    both(ops.dropout_backward, dy, 0.3, seed=7)
    assert both(ops.sum_squares, x) == ops.sum_squares(x)


@pytest.mark.parametrize("rows,cols", [(1, 1), (5, 7), (3, 200), (0, 4)])
def test_layernorm(rng, rows, cols):
    x, dy = normal(rng, 2, rows, cols, scale=2.0), normal(rng, 2, rows, cols)
    w, b = normal(rng, cols), normal(rng, cols)
    y, mean, rstd = both(ops.layernorm, x, w, b, eps=1e-5)
    both(ops.layernorm_backward, dy, x, w, mean.numpy(), rstd.numpy())


@pytest.mark.parametrize("B,H,T,Tk,D", [(1, 1, 1, 1, 1), (2, 3, 17, 17, 8), (1, 2, 5, 9, 24),
                                        (1, 1, 0, 3, 4)])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("p", [0.0, 0.25])
def test_attention(rng, B, H, T, Tk, D, causal, p):
    q, k, v = normal(rng, B, H, T, D), normal(rng, B, H, Tk, D), normal(rng, B, H, Tk, D)
    out, lse = both(ops.attention, q, k, v, causal=causal, dropout=p, dropout_seed=3)
    if T == Tk:
        dout = normal(rng, B, H, T, D)
        both(ops.attention_backward, dout, q, k, v, out.numpy(), lse.numpy(), causal=causal,
             dropout=p, dropout_seed=3)


@pytest.mark.parametrize("rows,vocab", [(1, 1), (6, 11), (5, 300), (0, 4)])
@pytest.mark.parametrize("itype", [np.int32, np.int64])
def test_cross_entropy(rng, rows, vocab, itype):
    x = normal(rng, rows, vocab, scale=3.0)
    t = rng.integers(0, vocab, rows).astype(itype)
    if rows > 2:
        t[1] = -100
    both(ops.cross_entropy, x, t)
    both(ops.cross_entropy, x, t, compute_grad=False)
    if rows:
        t2 = np.where(t == -100, t[0], t).astype(itype)
        both(ops.cross_entropy, x, t2, ignore_index=int(t[0]))
    # out given: the caller's own object comes back, written in place.
    xd = dev(x)
    loss, g = ops.cross_entropy(xd, dev(t), out=xd)
    want_loss, want_g = ops.cross_entropy(x, t)
    assert g is xd
    same(loss, want_loss)
    same(g, want_g)


@pytest.mark.parametrize("n,i,h", [(1, 1, 1), (3, 5, 7), (4, 17, 33)])
def test_cells(rng, n, i, h):
    x, hh, c = normal(rng, n, i), normal(rng, n, h), normal(rng, n, h)
    w_ih4, w_hh4, b4, b4b = normal(rng, 4 * h, i), normal(rng, 4 * h, h), normal(rng, 4 * h), normal(rng, 4 * h)
    h_next, c_next, gates = both(ops.lstm_cell, x, hh, c, w_ih4, w_hh4, b4, b4b)
    both(ops.lstm_cell_backward, normal(rng, n, h), normal(rng, n, h), x, hh, c, c_next.numpy(),
         gates.numpy(), w_ih4, w_hh4)
    w_ih3, w_hh3, b3, b3b = normal(rng, 3 * h, i), normal(rng, 3 * h, h), normal(rng, 3 * h), normal(rng, 3 * h)
    h_next, gates = both(ops.gru_cell, x, hh, w_ih3, w_hh3, b3, b3b)
    both(ops.gru_cell_backward, normal(rng, n, h), x, hh, gates.numpy(), w_ih3, w_hh3)


@pytest.mark.parametrize("n", [1, 7, 1000])
def test_adamw_step(rng, n):
    p, g, m, v = normal(rng, n), normal(rng, n), normal(rng, n, scale=0.1), np.abs(normal(rng, n))
    d = [dev(a) for a in (p, g, m, v)]
    kw = dict(lr=1e-2, beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=0.1, step=3)
    ops.adamw_step(p, g, m, v, **kw)
    ops.adamw_step(*d, **kw)
    for a, b in zip(d, (p, g, m, v)):
        same(a, b)


def test_table_kernels(rng):
    b, t, c, vocab, block, pos0 = 2, 5, 6, 11, 9, 3
    idx = rng.integers(0, vocab, (b, t)).astype(np.int64)
    wte, wpe = normal(rng, vocab, c), normal(rng, block, c)
    both(_C._cuda_embedding_forward, idx, wte, wpe, b, t, pos0)
    both(_C._cuda_embedding_forward, idx, wte, None, b, t, pos0)
    dout = normal(rng, b, t, c)
    dwte, dwpe = np.zeros((vocab, c), F32), np.zeros((block, c), F32)
    dd = [dev(dwte), dev(dwpe)]
    _C._cuda_embedding_backward(dout, idx, dwte, dwpe, pos0)
    _C._cuda_embedding_backward(dev(dout), dev(idx), dd[0], dd[1], pos0)
    same(dd[0], dwte)
    same(dd[1], dwpe)
    with pytest.raises(ValueError, match="_cuda_embedding_forward: idx out of range"):
        _C._cuda_embedding_forward(dev(idx + vocab), dev(wte), None, b, t, 0)
    with pytest.raises(TypeError, match="idx must have dtype int64, got int32"):
        _C._cuda_embedding_forward(dev(idx.astype(np.int32)), dev(wte), None, b, t, 0)
    x, y = normal(rng, 7, 5), normal(rng, 7, 5)
    both(_C._cuda_residual, x, y)
    assert both(_C._cuda_sum_squares, x) == _C._cuda_sum_squares(x)
    db, dbd = np.ones(5, F32), dev(np.ones(5, F32))
    _C._cuda_bias_backward(x, db)
    _C._cuda_bias_backward(dev(x), dbd)
    same(dbd, db)
    p, buf = x.copy(), np.zeros_like(x)
    pd, bufd = dev(p), dev(buf)
    _C._cuda_sgd(p, y, buf, 0.1, 0.9, 0.01, 0.5, True)
    _C._cuda_sgd(pd, dev(y), bufd, 0.1, 0.9, 0.01, 0.5, True)
    same(pd, p)
    same(bufd, buf)
    _C._cuda_copy(pd, dev(y))
    same(pd, y)
    _C._cuda_zero(pd)
    same(pd, np.zeros_like(y))


@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, True), (False, True)])
def test_strided_gemm(rng, trans_a, trans_b):
    m, n, k, lda, ldb, ldc, oa, ob, oc = 5, 7, 9, 11, 13, 8, 3, 2, 1
    a = normal(rng, 200)
    b = normal(rng, 200)
    c0 = normal(rng, 100)
    bias = normal(rng, n)
    c = c0.copy()
    args = (m, n, k, lda, ldb, ldc, trans_a, trans_b, True, False, oa, ob, oc)
    _C._cuda_gemm(a, b, c, bias, *args)
    cd = dev(c0)
    _C._cuda_gemm(dev(a), dev(b), cd, dev(bias), *args)
    same(cd, c)
    rows, cols = (k, m) if trans_a else (m, k)
    with pytest.raises(ValueError, match=rf"a does not hold a \({rows}, {cols}\) matrix with row stride 11"):
        _C._cuda_gemm(dev(a[:40]), dev(b), cd, None, *args)


@pytest.mark.parametrize("m,n,k", [(1, 7, 3), (3, 130, 33), (9, 17, 64)])
@pytest.mark.parametrize("packed", [False, True])
def test_table_matmul_and_matmul_into(rng, m, n, k, packed):
    a, b, bias, c0 = normal(rng, m, k), normal(rng, n, k), normal(rng, n), normal(rng, m, n)
    c = c0.copy()
    _C._matmul_into(c, a, b, False, True, bias, "highest", True, packed)
    cd = dev(c0)
    _C._matmul_into(cd, dev(a), dev(b), False, True, dev(bias), "highest", True, packed)
    same(cd, c)
    cd = dev(c0)
    _C._cuda_table_matmul(dev(a), dev(b), dev(bias), cd, "fp32", True, packed)
    same(cd, c)
    with pytest.raises(ValueError, match="_cuda_table_matmul: a, b, bias and c must be device arrays"):
        _C._cuda_table_matmul(a, b, bias, c, "fp32", True, packed)


def test_cuda_names_are_the_ops(rng):
    x = normal(rng, 3, 4)
    same(_C.cuda_softmax(dev(x)), ops.softmax(x))
    same(_C.cuda_gelu(dev(x), True), ops.gelu(x, approximate="none"))
    assert _C.cuda_matmul is _C.matmul


# ---- DeviceArray on the emulated device ------------------------------------------

def test_device_array_round_trip(rng):
    assert fastlm.cuda_available() == _C.cuda_available()  # emulation does not pretend a GPU
    for x in (normal(rng, 3, 5), np.arange(7, dtype=np.int64),
              np.arange(6, dtype=np.int32).reshape(2, 3), np.zeros((0, 4), F32)):
        d = dev(x)
        assert d.shape == x.shape and d.dtype == x.dtype.name and d.size == x.size
        np.testing.assert_array_equal(d.numpy(), x)
    x = normal(rng, 100)
    b = dev(x, "bfloat16")
    bits = x.view(np.uint32)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).view(F32)
    np.testing.assert_array_equal(b.numpy(), rounded)
    np.testing.assert_array_equal(b.astype("float32").numpy(), rounded)
    np.testing.assert_array_equal(dev(x).astype("bfloat16").numpy(), rounded)
    np.testing.assert_array_equal(dev(x).copy().numpy(), x)
    np.testing.assert_array_equal(dev(x).reshape(10, -1).numpy(), x.reshape(10, 10))
    np.testing.assert_array_equal(fastlm.DeviceArray((2, 3)).numpy(), np.zeros((2, 3), F32))
    assert fastlm.DeviceArray.empty((4,), "int32").dtype == "int32"
    assert "emulated" in repr(b) and "borrowed" not in repr(b)
    assert not hasattr(dev(x), "__cuda_array_interface__")
    with pytest.raises(TypeError, match="numpy"):
        np.asarray(dev(x))
    from fastlm._checks import host_copy  # how the models take arrays of any device
    np.testing.assert_array_equal(host_copy(dev(x)), x)


def test_borrow_checks_the_memory(rng):
    d = dev(normal(rng, 12))
    view = fastlm.DeviceArray._borrow(d.ptr + 8, (4,), "float32", d, False, "v")
    np.testing.assert_array_equal(view.numpy(), d.numpy()[2:6])
    with pytest.raises(ValueError, match="v is not memory of the emulated CUDA device"):
        fastlm.DeviceArray._borrow(d.ptr + 40, (4,), "float32", d, False, "v")


def test_without_emulation_no_device_arrays(monkeypatch):
    monkeypatch.delenv("FASTLM_EMULATE_CUDA")
    if fastlm.cuda_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="CUDA is not available|without CUDA"):
        fastlm.to_device(np.zeros(3, F32))


# ---- the checks, made once for every device ---------------------------------------

def test_host_and_device_mixed(rng):
    x = normal(rng, 3, 4)
    with pytest.raises(ValueError, match=r"^matmul: a is on the GPU but b is on the host; move all "
                                         r"arrays of one call to the same place"):
        ops.matmul(dev(x), x, trans_b=True)
    with pytest.raises(ValueError, match=r"param, m are on the GPU but grad, v are on the host"):
        ops.adamw_step(dev(x), x, dev(x), x, lr=1e-3, step=1)
    with pytest.raises(ValueError, match="targets is on the host"):
        ops.cross_entropy(dev(x), np.zeros(3, np.int64))


def test_dtype_rank_shape_messages(rng):
    x = dev(normal(rng, 4, 6))
    with pytest.raises(TypeError, match="^gelu: x must have dtype float32, got int32$"):
        ops.gelu(dev(np.zeros((4, 6), np.int32)))
    with pytest.raises(TypeError, match="^softmax: x must have dtype float32, got bfloat16$"):
        ops.softmax(dev(np.zeros(3, F32), "bfloat16"))
    with pytest.raises(TypeError, match="^matmul: a is bfloat16, which the emulated CUDA device"):
        ops.matmul(dev(np.zeros((2, 2), F32), "bfloat16"), dev(np.zeros((2, 2), F32), "bfloat16"))
    with pytest.raises(ValueError, match=r"^matmul: inner dimensions differ: op\(a\) is \(4, 6\)"):
        ops.matmul(x, x)
    with pytest.raises(ValueError, match=r"^matmul: bias must have shape \(4,\), got \(3,\)$"):
        ops.matmul(x, x, trans_b=True, bias=dev(np.zeros(3, F32)))
    with pytest.raises(ValueError, match="matmul: precision 'bf16' is for float32 CPU arrays"):
        ops.matmul(x, x, trans_b=True, precision="bf16")
    with pytest.raises(ValueError, match=r"^layernorm: weight must have shape \(6,\), got \(5,\)$"):
        ops.layernorm(x, dev(np.ones(5, F32)), dev(np.zeros(6, F32)))
    with pytest.raises(ValueError, match=r"^gelu_backward: dy must have shape \(4, 6\)"):
        ops.gelu_backward(dev(np.zeros((4, 5), F32)), x)
    with pytest.raises(ValueError, match="^attention: q must be 4-D, got shape"):
        ops.attention(x, x, x)
    q = dev(np.zeros((1, 1, 4, 129), F32))
    with pytest.raises(ValueError, match="^attention: head dim must be <= 128 on CUDA, got 129$"):
        ops.attention(q, q, q)
    q = dev(np.zeros((1, 1, 4, 8), F32))
    for p in (1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="attention: dropout must be in"):
            _C.attention(q, q, q, True, p, 0)
    with pytest.raises(TypeError, match="^cross_entropy: targets must have dtype int32 or int64, got float32$"):
        ops.cross_entropy(x, dev(np.zeros(4, F32)))
    with pytest.raises(ValueError, match=r"^cross_entropy: out must have shape \(4, 6\), got \(4, 5\)$"):
        ops.cross_entropy(x, dev(np.array([0, 1, 5, 2])), out=dev(np.zeros((4, 5), F32)))
    with pytest.raises(ValueError, match="step"):
        ops.adamw_step(x, dev(np.zeros((4, 6), F32)), dev(np.zeros((4, 6), F32)),
                       dev(np.zeros((4, 6), F32)), lr=1e-3, step=0)


@pytest.mark.parametrize("itype", [np.int32, np.int64])
def test_cross_entropy_target_out_of_range(rng, itype):
    x = normal(rng, 4, 6)
    t = np.array([0, 1, 9, 2], itype)
    msg = r"^cross_entropy: targets\[2\] = 9 is out of range \[0, 6\) and is not ignore_index \(-100\)$"
    for logits, targets in ((x, t), (dev(x), dev(t))):
        with pytest.raises(ValueError, match=msg):
            ops.cross_entropy(logits, targets)
    xd = dev(x)  # checked before anything is written
    with pytest.raises(ValueError, match=msg):
        ops.cross_entropy(xd, dev(t), out=xd)
    same(xd, x)


ADAM_NAMES = ("param", "grad", "m", "v")
PAIRS = [(a, b) for i, a in enumerate(ADAM_NAMES) for b in ADAM_NAMES[i + 1:]]


@pytest.mark.parametrize("a,b", PAIRS)
def test_adamw_overlap(rng, a, b):
    arrays = {n: dev(normal(rng, 12)) for n in ADAM_NAMES}
    block = dev(normal(rng, 24))
    arrays[a] = fastlm.DeviceArray._borrow(block.ptr, (12,), "float32", block, False, a)
    arrays[b] = fastlm.DeviceArray._borrow(block.ptr + 20, (12,), "float32", block, False, b)
    with pytest.raises(ValueError, match=rf"^adamw_step: {a} and {b} share memory, but "):
        ops.adamw_step(*(arrays[n] for n in ADAM_NAMES), lr=0.1, step=1)


def test_adjacent_arrays_do_not_overlap(rng):
    block = dev(normal(rng, 48))
    p, g, m, v = (fastlm.DeviceArray._borrow(block.ptr + 48 * i, (12,), "float32", block, False, n)
                  for i, n in enumerate(ADAM_NAMES))
    ops.adamw_step(p, g, m, v, lr=0.1, step=1)


def test_cross_entropy_out_targets_overlap(rng):
    block = dev(np.zeros(40, F32))
    out = block.reshape(4, 10)
    targets = fastlm.DeviceArray._borrow(block.ptr + 64, (4,), "int32", block, False, "targets")
    logits = dev(normal(rng, 4, 10))
    with pytest.raises(ValueError, match="^cross_entropy: out and targets share memory"):
        ops.cross_entropy(logits, targets, out=out)
    loss, g = ops.cross_entropy(logits, targets, out=out, compute_grad=False)
    assert g is None and np.isfinite(loss)
    big = dev(normal(rng, 60))
    logits = fastlm.DeviceArray._borrow(big.ptr, (4, 10), "float32", big, False, "logits")
    out = fastlm.DeviceArray._borrow(big.ptr + 40, (4, 10), "float32", big, False, "out")
    with pytest.raises(ValueError, match="^cross_entropy: out overlaps logits partially"):
        ops.cross_entropy(logits, dev(np.zeros(4, np.int64)), out=out)


@pytest.mark.parametrize("op", ["layernorm", "layernorm_backward"])
def test_layernorm_empty_axis(op):
    x = dev(np.ones((4, 0), F32))
    w, b = dev(np.ones(0, F32)), dev(np.zeros(0, F32))
    stat = dev(np.zeros(4, F32))
    with pytest.raises(ValueError, match=r"x's last axis \(the one normalised over\) must have "
                                         r"size >= 1, got x of shape \(4, 0\)"):
        if op == "layernorm":
            ops.layernorm(x, w, b)
        else:
            ops.layernorm_backward(x, x, w, stat, stat)


def test_readonly_borrowed_output():
    d = dev(np.zeros(4, F32))
    ro = fastlm.DeviceArray._borrow(d.ptr, (4,), "float32", d, True, "param")
    with pytest.raises(ValueError, match="^adamw_step: param must be writable$"):
        ops.adamw_step(ro, dev(np.zeros(4, F32)), dev(np.zeros(4, F32)), dev(np.zeros(4, F32)),
                       lr=0.1, step=1)

"""Shared test helpers: run each op on every backend this machine can run (the
``backend`` fixture: each CPU ISA, the emulated CUDA device, a real GPU), and
judge errors the flash-attention way (against float64, relative to a naive
float32 computation's own error). The float64 references live in
tests/reference/, one module per op family."""
from __future__ import annotations

import contextlib
import os

import numpy as np
import pytest

import fastlm
from fastlm import _C

# FASTLM_TEST_BACKENDS=cuda (a comma-separated list of backend names, such as
# "cpu-avx2,cuda-emulated") keeps the `backend` and `isa` fixtures to those
# backends, as test-backend-ops -b does: bench/gpu_check.sh runs the op tests
# on the GPU alone that way. Unset: every backend.
_ONLY = {b for b in os.environ.get("FASTLM_TEST_BACKENDS", "").replace(" ", "").split(",") if b}


def _wanted(name: str) -> bool:
    return not _ONLY or name in _ONLY


ISAS = [i for i in fastlm.available_cpu_isas() if _wanted(f"cpu-{i}")]


@pytest.fixture(params=ISAS)
def isa(request):
    """Switch the kernel table to one ISA for the test, then restore it."""
    before = fastlm.cpu_isa()
    _C._set_cpu_isa(request.param)
    try:
        yield request.param
    finally:
        _C._set_cpu_isa(before)


class Backend:
    """Where a test runs an op: ``put`` its inputs there, call ``fastlm.ops`` on
    them, ``get`` the outputs back as NumPy (checking they live there).

    name: "cpu-<isa>", "cuda" or "cuda-emulated". device: whether arrays are
    device arrays (DeviceArray). gpu: a real GPU. dtypes: the array dtypes it
    holds ("float32", "int32", "int64", and "bfloat16" on a GPU)."""

    def __init__(self, name: str, device: bool, gpu: bool, dtypes: frozenset):
        self.name, self.device, self.gpu, self.dtypes = name, device, gpu, dtypes

    def __repr__(self) -> str:
        return f"Backend({self.name})"

    def supports(self, dtype: str) -> bool:
        return dtype in self.dtypes

    def require(self, dtype: str) -> None:
        """Skip the test where this backend has no `dtype` arrays."""
        if not self.supports(dtype):
            pytest.skip(f"{self.name} has no {dtype} arrays")

    def put(self, x, dtype=None):
        """x (array-like) on this backend: a C-contiguous NumPy copy on the CPU, a
        DeviceArray on a device; dtype: None (x's), or a name in `dtypes`."""
        if dtype is not None:
            dtype = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
            assert dtype in self.dtypes, f"{self.name} has no {dtype} arrays"
        if self.device:
            return fastlm.to_device(x, dtype)
        return np.array(x, dtype=dtype, order="C", copy=True)

    def get(self, y) -> np.ndarray:
        """An op's output as NumPy, after checking it lives on this backend."""
        if self.device:
            assert isinstance(y, fastlm.DeviceArray), \
                f"{self.name}: expected a DeviceArray, got {type(y).__name__}"
            return y.numpy()
        assert isinstance(y, np.ndarray), f"{self.name}: expected a numpy.ndarray, got {type(y).__name__}"
        return y


_HOST_DTYPES = frozenset({"float32", "int32", "int64"})
# NumPy arrays on the active CPU ISA: for helpers shared by `backend` tests and
# tests that still run per ISA only (the `isa` fixture).
HOST = Backend("cpu", False, False, _HOST_DTYPES)
_EMULATE = "FASTLM_EMULATE_CUDA"
_emulated_probe: dict = {}


def emulated_device_reason() -> str:
    """Why the emulated device cannot hold arrays ("" when it can): whether
    ``fastlm.to_device`` works under FASTLM_EMULATE_CUDA=1, probed once."""
    if "reason" not in _emulated_probe:
        before = os.environ.get(_EMULATE)
        os.environ[_EMULATE] = "1"
        try:
            gpu_bytes = fastlm.memory_usage()[0] if fastlm.cuda_available() else 0
            d = fastlm.to_device(np.arange(1 << 18, dtype=np.float32))
            ok = isinstance(d, fastlm.DeviceArray) and np.array_equal(d.numpy()[:3], [0, 1, 2])
            reason = "" if ok else "to_device under FASTLM_EMULATE_CUDA=1 gave no DeviceArray"
            if ok and fastlm.cuda_available() and fastlm.memory_usage()[0] > gpu_bytes:
                # A real GPU took the array: the emulated device holds none yet.
                reason = "to_device under FASTLM_EMULATE_CUDA=1 still allocates on the GPU"
            del d
        except Exception as e:  # noqa: BLE001 (any failure means: not there yet)
            reason = f"to_device does not work under FASTLM_EMULATE_CUDA=1 ({type(e).__name__}: {e})"
        finally:
            if before is None:
                del os.environ[_EMULATE]
            else:
                os.environ[_EMULATE] = before
        _emulated_probe["reason"] = reason
    return _emulated_probe["reason"]


def _backend_params(names):
    params = []
    for name in names:
        if not _wanted(name):
            continue
        marks = []
        if name == "cuda" and not fastlm.cuda_available():
            marks = [pytest.mark.skip(reason="needs a CUDA GPU (fastlm.cuda_available() is False)")]
        params.append(pytest.param(name, id=name, marks=marks))
    return params


CPU_BACKENDS = [f"cpu-{i}" for i in fastlm.available_cpu_isas()]
ALL_BACKENDS = _backend_params(CPU_BACKENDS + ["cuda-emulated", "cuda"])
DEVICE_BACKENDS = _backend_params(["cuda-emulated", "cuda"])


def _make_backend(name: str, monkeypatch):
    if name.startswith("cpu-"):
        before = fastlm.cpu_isa()
        _C._set_cpu_isa(name[4:])
        monkeypatch.delenv(_EMULATE, raising=False)
        return Backend(name, False, False, _HOST_DTYPES), lambda: _C._set_cpu_isa(before)
    if name == "cuda-emulated":
        reason = emulated_device_reason()
        if reason:
            pytest.skip(reason)
        monkeypatch.setenv(_EMULATE, "1")
        return Backend(name, True, False, _HOST_DTYPES), None
    monkeypatch.delenv(_EMULATE, raising=False)
    return Backend(name, True, True, _HOST_DTYPES | {"bfloat16"}), None


@pytest.fixture(params=ALL_BACKENDS)
def backend(request, monkeypatch):
    """Each backend this machine runs (a ``Backend``): every CPU ISA, the
    emulated CUDA device once device arrays work there, and CUDA with a GPU."""
    b, restore = _make_backend(request.param, monkeypatch)
    try:
        yield b
    finally:
        if restore:
            restore()


@pytest.fixture(params=DEVICE_BACKENDS)
def device_backend(request, monkeypatch):
    """The device backends only (cuda-emulated, cuda): for what a NumPy array
    cannot show (host and device arrays mixed in one call, device buffers)."""
    yield _make_backend(request.param, monkeypatch)[0]


@pytest.fixture(params=_backend_params(["cuda"]))
def gpu_backend(request, monkeypatch):
    """A real GPU only: bfloat16 device arrays, the test-only _C._cuda_* bindings."""
    yield _make_backend(request.param, monkeypatch)[0]


HAS_BF16 = "avx512bf16" in fastlm.available_cpu_isas()
needs_bf16 = pytest.mark.skipif(not HAS_BF16, reason="this CPU lacks AVX512_BF16")


def bf16_engines():
    """The bfloat16 GEMM engines this CPU has: vdpbf16ps, and AMX where offered."""
    return ["vdpbf16ps"] + (["amx"] if _C.cpu_amx_available() else [])


@contextlib.contextmanager
def bf16_engine(engine):
    """Run the bfloat16 GEMMs on `engine` ("amx", "vdpbf16ps"; "fma" leaves them be)."""
    before = _C.cpu_amx()
    if engine != "fma":
        _C._set_cpu_amx(engine == "amx")
    try:
        yield
    finally:
        _C._set_cpu_amx(before)


@pytest.fixture(params=["vdpbf16ps", "amx"])
def bf16(request):
    """The avx512bf16 table for the test, its bfloat16 GEMM on each engine this
    CPU has: vdpbf16ps, and AMX tiles where the CPU and OS offer them."""
    if not HAS_BF16:
        pytest.skip("this CPU lacks AVX512_BF16")
    if request.param == "amx" and not _C.cpu_amx_available():
        pytest.skip("this CPU (or its OS) offers no AMX-BF16 tiles")
    before = fastlm.cpu_isa()
    _C._set_cpu_isa("avx512bf16")
    try:
        with bf16_engine(request.param):
            yield request.param
    finally:
        _C._set_cpu_isa(before)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# Row-op extents: 1, around SIMD widths and tile edges, and past a block.
AWKWARD_SIZES = (1, 3, 17, 31, 33, 127, 1000)


def awkward_rows(rng, cols: int, max_elems: int, scale: float = 3.0):
    """Yields (rows, cols) float32 inputs, standard normal times scale, for each
    row count of AWKWARD_SIZES with rows * cols at most max_elems."""
    for rows in AWKWARD_SIZES:
        if rows * cols <= max_elems:
            yield rng.standard_normal((rows, cols), dtype=np.float32) * scale


def assert_error_bound(ours, ref64, naive32, *, factor: float = 4.0, name: str = "") -> None:
    """max |ours - ref64| <= factor * max |naive32 - ref64| + a few float32 ulps of the scale.

    ref64 is a float64 reference; naive32 the same formula evaluated plainly in
    float32. The ulp floor keeps the bound meaningful where the naive error is 0.
    """
    ours = np.asarray(ours, dtype=np.float64)
    ref64 = np.asarray(ref64, dtype=np.float64)
    naive32 = np.asarray(naive32, dtype=np.float64)
    assert ours.shape == ref64.shape, f"{name}: shape {ours.shape} != {ref64.shape}"
    assert np.all(np.isfinite(ours)), f"{name}: non-finite values"
    err = np.max(np.abs(ours - ref64)) if ours.size else 0.0
    base = np.max(np.abs(naive32 - ref64)) if ours.size else 0.0
    scale = np.max(np.abs(ref64)) if ours.size else 0.0
    bound = factor * base + 8 * np.finfo(np.float32).eps * scale + 1e-30
    assert err <= bound, f"{name}: error {err:.3g} > bound {bound:.3g} (naive float32 error {base:.3g})"


def finite_difference(f, x: np.ndarray, dy: np.ndarray, h: float = 1e-6, n_probe: int = 8,
                      rng=None) -> tuple:
    """Check of a float64 backward reference: returns (numeric, index) pairs
    d<dy, f(x)>/dx at n_probe random entries of x by central differences."""
    rng = rng or np.random.default_rng(0)
    idx = [tuple(int(rng.integers(0, s)) for s in x.shape) for _ in range(n_probe)]
    out = []
    for i in idx:
        xp = x.copy(); xp[i] += h
        xm = x.copy(); xm[i] -= h
        out.append((np.sum(dy * f(xp)) - np.sum(dy * f(xm))) / (2 * h))
    return np.array(out), idx


def torch_or_skip():
    return pytest.importorskip("torch")


@contextlib.contextmanager
def num_threads(n: int):
    """fastlm on n threads inside the block; the count before is restored after."""
    before = fastlm.get_num_threads()
    fastlm.set_num_threads(n)
    try:
        yield
    finally:
        fastlm.set_num_threads(before)


def same_on_thread_counts(f, counts=(1, 2, 3)) -> bool:
    """Whether f() returns the same bits (an array) on each of these fastlm thread counts."""
    outs = []
    for n in counts:
        with num_threads(n):
            outs.append(f())
    return all(np.array_equal(o, outs[0]) for o in outs[1:])


def assert_streams_independent(model) -> None:
    """Two generate(stream=True) iterators advanced in turn, with another call
    on the model between tokens, give what each gives alone: every stream keeps
    its own decoding state (KV cache or recurrent state)."""
    p1, p2 = [1, 2, 3], [[9, 8], [7, 6]]
    ref1 = model.generate(p1, 12, do_sample=False)
    ref2 = model.generate(p2, 12, do_sample=False)
    s1 = model.generate(p1, 12, do_sample=False, stream=True)
    s2 = model.generate(p2, 12, do_sample=False, stream=True)
    out1, out2 = [], []
    for _ in range(12):
        out1.append(next(s1))
        out2.append(next(s2))
        model.forward(np.array([[0, 1]]))  # any other use of the model in between
    assert out1 == ref1[3:].tolist()
    np.testing.assert_array_equal(np.stack(out2, 1), ref2[:, 2:])


def assert_bad_inputs_refused(m, idx, tgt, vocab: int) -> None:
    """What every language model refuses with an exception naming the problem:
    token ids out of range or not integers, batches not 2-D or empty, targets
    of the wrong shape, range or type, a negative lr, betas[1] of 1."""
    bad = idx.copy()
    bad[1, 2] = vocab
    with pytest.raises(ValueError, match=rf"idx\[1, 2\] = {vocab} is out of range"):
        m.forward(bad)
    with pytest.raises(ValueError, match="out of range"):
        m.forward(-idx - 1)
    with pytest.raises(TypeError, match="integer"):
        m.forward(idx.astype(np.float32))
    with pytest.raises(ValueError, match="2-D"):
        m.forward(idx[0])
    with pytest.raises(ValueError, match="at least one"):
        m.forward(np.zeros((2, 0), np.int64))
    with pytest.raises(TypeError):
        m.forward("hello")
    with pytest.raises(ValueError, match="targets shape"):
        m.forward_backward(idx, tgt[:, :5])
    bad = tgt.copy()
    bad[0, 0] = -5
    with pytest.raises(ValueError, match="targets"):
        m.forward_backward(idx, bad)
    with pytest.raises(TypeError, match="targets"):
        m.forward_backward(idx, tgt.astype(np.float64))
    with pytest.raises(ValueError, match="lr"):
        m.step(-1.0)
    with pytest.raises(ValueError, match=r"betas\[1\]"):
        m.step(1e-3, betas=(0.9, 1.0))


def assert_evaluate_short_and_bad(m, data, ref_loss, vocab: int) -> None:
    """m.evaluate over 6 tokens (one window of 5) gives ref_loss(x, y) of that
    window; fewer than 2 tokens, or a token id of vocab, is refused."""
    short = m.evaluate(data[:6])
    assert short["loss"] == pytest.approx(ref_loss(data[None, :5], data[None, 1:6]), rel=1e-5)
    with pytest.raises(ValueError, match="at least 2"):
        m.evaluate(data[:1])
    with pytest.raises(ValueError, match="out of range"):
        m.evaluate(np.array([1, 2, vocab]))


def assert_bad_state_dicts_refused(m, sd, name: str, before) -> None:
    """m.load_state_dict refuses sd with NaNs in tensor `name`, and a sequence
    of pairs; these failures and any before them left m's state_dict `before`."""
    nan = dict(sd)
    nan[name] = np.full(sd[name].shape, np.nan, np.float32)
    with pytest.raises(ValueError, match=f"non-finite.*{name}"):
        m.load_state_dict(nan)
    with pytest.raises(TypeError, match="mapping"):
        m.load_state_dict([(name, 1)])
    after = m.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)


def assert_restored(m, loaded, idx, tgt) -> None:
    """``loaded`` (read back from ``m.save``) is ``m`` bit for bit: config,
    tokenizer, weights in order, logits on ``idx``, AdamW moments, step count
    and history."""
    assert loaded.config == m.config and loaded.tokenizer == m.tokenizer
    a, b = m.state_dict(), loaded.state_dict()
    assert list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a)
    np.testing.assert_array_equal(m.forward(idx), loaded.forward(idx))
    for which in ("adam_m", "adam_v"):
        assert np.array_equal(m._tensors.flat(which), loaded._tensors.flat(which))
    assert loaded.optimizer_step == m.optimizer_step and loaded.history == m.history


def assert_same_next_step(m1, m2, idx, tgt) -> None:
    """One training step (lr 1e-3) of each model leaves the same weights."""
    for x in (m1, m2):
        x.zero_grad()
        x.forward_backward(idx, tgt)
        x.step(1e-3)
    a, b = m1.state_dict(), m2.state_dict()
    assert all(np.array_equal(a[k], b[k]) for k in a)


# The devices a model can run on here: the CPU, the emulated CUDA device (the
# device path on the CPU kernels, always), and a real GPU when one is usable.
MODEL_DEVICES = ["cpu", "emulated", pytest.param("cuda", marks=pytest.mark.skipif(
    not fastlm.cuda_available(), reason="needs a CUDA GPU"))]


@pytest.fixture(params=MODEL_DEVICES)
def model_device(request, monkeypatch):
    """A device name for models ("cpu" or "cuda"), with FASTLM_EMULATE_CUDA set
    for the emulated one; request.param says which backend it is."""
    if request.param == "emulated":
        monkeypatch.setenv("FASTLM_EMULATE_CUDA", "1")
        return "cuda"
    monkeypatch.delenv("FASTLM_EMULATE_CUDA", raising=False)
    return request.param

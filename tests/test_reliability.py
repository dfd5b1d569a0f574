"""Bad arguments, out-of-memory, fork, thread limits and misaligned arrays: each
ends in a clear Python exception or a correct result, never a crash, an exit or
a hang. Cases that need a memory limit or may hang run in a child process with
an address-space limit and a timeout. (Hostile checkpoint files:
tests/test_checkpoint_files.py.)"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastlm
from fastlm import ops

# ASan reserves terabytes of address space for its shadow memory, so an
# address-space limit cannot be applied under scripts/sanitize.sh.
needs_rlimit = pytest.mark.skipif(
    bool(os.environ.get("FASTLM_SANITIZED")) or not sys.platform.startswith("linux"),
    reason="needs RLIMIT_AS and /proc (not under ASan)")

# Run in the child before the case: the thread team is started first (a team
# started under the limit could not be), then the address space is capped at
# what the process maps now plus `headroom` bytes.
LIMIT_PRELUDE = """
import resource, numpy as np, fastlm
from fastlm import ops
fastlm.set_num_threads(2)
ops.matmul(np.ones((256, 256), np.float32), np.ones((256, 256), np.float32))
def limit(headroom):
    with open("/proc/self/status") as f:
        vm = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + headroom, resource.getrlimit(resource.RLIMIT_AS)[1]))
"""


def child_env() -> dict:
    """The environment of a child interpreter that imports this fastlm."""
    env = dict(os.environ)
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(fastlm.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([pkg_parent] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def run_child(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter; a hang fails the test via the timeout."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=child_env())


def assert_ok(r: subprocess.CompletedProcess, *expected: str) -> None:
    assert r.returncode == 0, f"rc {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr[-3000:]}"
    for e in expected:
        assert e in r.stdout, f"{e!r} not in {r.stdout!r}"


# ---- 1: the LSTM's cell state is required -----------------------------------------

def lstm_arrays(n=3, i=5, h=4):
    rng = np.random.default_rng(0)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    return f(n, i), f(n, h), f(n, h), f(4 * h, i), f(4 * h, h), f(4 * h), f(4 * h)


def test_lstm_cell_refuses_missing_cell_state():
    x, h, c, w_ih, w_hh, b_ih, b_hh = lstm_arrays()
    with pytest.raises(TypeError, match="lstm_cell: c must be a numpy.ndarray, got NoneType"):
        ops.lstm_cell(x, h, None, w_ih, w_hh, b_ih, b_hh)
    h_next, c_next, gates = ops.lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh)
    with pytest.raises(TypeError, match="lstm_cell_backward: c must be a numpy.ndarray, got NoneType"):
        ops.lstm_cell_backward(h_next, c_next, x, h, None, c_next, gates, w_ih, w_hh)
    with pytest.raises(ValueError, match=r"lstm_cell: c must have shape \(3, 4\)"):
        ops.lstm_cell(x, h, c[:, :2].copy(), w_ih, w_hh, b_ih, b_hh)


# ---- 2, 3: allocation failures are MemoryErrors naming the bytes -----------------

@needs_rlimit
def test_attention_scratch_out_of_memory_is_a_memory_error():
    # Per-thread tiles hold head_dim-wide rows: 2 x 2^22 floats need GBs of scratch.
    r = run_child(LIMIT_PRELUDE + """
q = np.ones((1, 1, 2, 1 << 22), np.float32)
limit(256 << 20)
for call in (lambda: ops.attention(q, q, q), lambda: ops.attention_backward(q, q, q, q, q, np.zeros((1, 1, 2), np.float32))):
    try:
        call()
        print("no error")
    except MemoryError as e:
        print("MemoryError:", e)
""")
    assert_ok(r)
    lines = r.stdout.splitlines()
    assert len(lines) == 2 and all(line.startswith("MemoryError: out of memory: could not allocate ") for line in lines)
    assert "bytes" in lines[0] and "for attention" in lines[0]
    assert "for attention_backward" in lines[1]


@needs_rlimit
@pytest.mark.parametrize("m", [1, 64])
def test_matmul_scratch_out_of_memory_is_a_memory_error(m):
    # m = 1: the few-rows path gathers op(a) (64 MB); m = 64: the blocked path
    # packs a block of b (8 MB).
    k = 1 << 24 if m == 1 else 512
    n = 1 if m == 1 else 4096
    r = run_child(LIMIT_PRELUDE + f"""
a = np.ones(({m}, {k}), np.float32)
b = np.ones(({k}, {n}), np.float32)
c = np.empty(({m}, {n}), np.float32)  # room for the result, mapped before the limit
del c
limit({m} * {n} * 4 + (2 << 20))
try:
    ops.matmul(a, b)
    print("no error")
except MemoryError as e:
    print("MemoryError:", e)
""")
    assert_ok(r, "MemoryError: out of memory: could not allocate", "bytes", "for matmul")


# ---- 4: fork after the thread team started --------------------------------------

FORK_CHILD = """
import os, sys, numpy as np, fastlm
from fastlm import ops
fastlm.set_num_threads(2)
rng = np.random.default_rng(0)
a = rng.standard_normal((300, 200)).astype(np.float32)
q = rng.standard_normal((2, 2, 130, 16)).astype(np.float32)
want_mm, want_att = ops.matmul(a, a.T.copy()), ops.attention(q, q, q)[0]
"""


def test_forked_child_runs_single_threaded_and_does_not_hang():
    r = run_child(FORK_CHILD + """
pid = os.fork()
if pid == 0:
    ok = fastlm.get_num_threads() == 1
    ok &= np.array_equal(ops.matmul(a, a.T.copy()), want_mm)
    ok &= np.allclose(ops.attention(q, q, q)[0], want_att, atol=1e-6)
    try:
        fastlm.set_num_threads(2)
        ok = False
    except RuntimeError as e:
        ok &= "forked" in str(e)
    os._exit(0 if ok else 3)
_, status = os.waitpid(pid, 0)
print("child", os.waitstatus_to_exitcode(status), "parent threads", fastlm.get_num_threads())
""", timeout=60)
    assert_ok(r, "child 0 parent threads 2")


def test_multiprocessing_fork_pool_does_not_hang():
    r = run_child(FORK_CHILD + """
import multiprocessing as mp
def work(i):
    return float(ops.matmul(a, a.T.copy()).sum()) + i
with mp.get_context("fork").Pool(2) as pool:
    got = pool.map(work, range(4))
print("equal", got == [float(want_mm.sum()) + i for i in range(4)])
""", timeout=60)
    assert_ok(r, "equal True")


def test_fork_before_any_thread_keeps_threads():
    """A child forked before the team started can start its own."""
    r = run_child("""
import os, numpy as np, fastlm
from fastlm import ops
pid = os.fork()
if pid == 0:
    fastlm.set_num_threads(2)
    a = np.ones((300, 300), np.float32)
    os._exit(0 if fastlm.get_num_threads() == 2 and ops.matmul(a, a)[0, 0] == 300 else 3)
_, status = os.waitpid(pid, 0)
print("child", os.waitstatus_to_exitcode(status))
""", timeout=60)
    assert_ok(r, "child 0")


# ---- 5: a thread the system refuses -----------------------------------------------

@needs_rlimit
def test_refused_threads_are_an_exception_not_an_exit():
    r = run_child(LIMIT_PRELUDE + """
limit(512 << 20)  # far less than 1023 thread stacks
try:
    fastlm.set_num_threads(1024)
    print("no error")
except RuntimeError as e:
    print("RuntimeError:", e)
print("threads", fastlm.get_num_threads())
a = np.ones((300, 300), np.float32)
print("matmul", ops.matmul(a, a)[0, 0])
""")
    assert_ok(r, "RuntimeError: set_num_threads(1024): the system refused thread", "the thread count stays 2",
              "threads 2", "matmul 300.0")


@needs_rlimit
def test_cli_threads_beyond_the_limit_is_an_error_line(tmp_path):
    import resource

    def limit():  # the case: 4 GiB; 8 MiB stacks (the usual default) for every thread
        resource.setrlimit(resource.RLIMIT_STACK, (8 << 20, resource.getrlimit(resource.RLIMIT_STACK)[1]))
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    corpus = tmp_path / "c.txt"
    corpus.write_text("hello world\n" * 50)
    r = subprocess.run([sys.executable, "-m", "fastlm", "train", str(corpus), "--out", str(tmp_path / "o"),
                        "--steps", "1", "--threads", "1024"], capture_output=True, text=True, timeout=120,
                       preexec_fn=limit, env=child_env())
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("fastlm: error: --threads: set_num_threads(1024): the system refused thread"), r.stderr
    assert "Traceback" not in r.stderr


# ---- 7: misaligned float32 arrays -------------------------------------------------

def misaligned(x: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of float32 ``x`` whose data starts one byte past an aligned address."""
    buf = np.zeros(x.nbytes + 1, np.uint8)
    out = np.frombuffer(buf.data, np.float32, count=x.size, offset=1).reshape(x.shape)
    out[...] = x
    assert not out.flags.aligned and out.flags.c_contiguous
    return out


def test_misaligned_inputs_give_the_aligned_result(isa, rng):
    a = rng.standard_normal((17, 33)).astype(np.float32)
    b = rng.standard_normal((33, 9)).astype(np.float32)
    bias = rng.standard_normal(9).astype(np.float32)
    np.testing.assert_array_equal(ops.matmul(misaligned(a), misaligned(b), bias=misaligned(bias)),
                                  ops.matmul(a, b, bias=bias))
    np.testing.assert_array_equal(ops.softmax(misaligned(a)), ops.softmax(a))
    np.testing.assert_array_equal(ops.gelu(misaligned(a)), ops.gelu(a))
    w = rng.standard_normal(33).astype(np.float32)
    for ours, ref in zip(ops.layernorm(misaligned(a), misaligned(w), misaligned(w)), ops.layernorm(a, w, w)):
        np.testing.assert_array_equal(ours, ref)
    q = rng.standard_normal((1, 2, 5, 3)).astype(np.float32)
    for ours, ref in zip(ops.attention(misaligned(q), misaligned(q), misaligned(q)), ops.attention(q, q, q)):
        np.testing.assert_array_equal(ours, ref)
    t32 = np.zeros(18, np.uint8)
    t = np.frombuffer(t32.data, np.int32, count=4, offset=2)  # misaligned int32 targets
    t[...] = [0, 3, 32, 1]
    assert ops.cross_entropy(a[:4], t)[0] == ops.cross_entropy(a[:4].copy(), t.copy())[0]


def test_misaligned_arrays_written_in_place_are_refused(rng):
    p = rng.standard_normal(10).astype(np.float32)
    with pytest.raises(ValueError, match=r"adamw_step: param must be aligned to 4 bytes"):
        ops.adamw_step(misaligned(p), p, np.zeros_like(p), np.zeros_like(p), lr=0.1, step=1)
    logits = rng.standard_normal((3, 5)).astype(np.float32)
    with pytest.raises(ValueError, match=r"cross_entropy: out must be aligned to 4 bytes"):
        ops.cross_entropy(logits, np.array([0, 1, 2]), out=misaligned(np.zeros_like(logits)))


# ---- 9: clear messages ------------------------------------------------------------

def test_cross_entropy_out_may_be_a_full_view_of_logits(rng):
    logits = rng.standard_normal((4, 7)).astype(np.float32)
    t = np.array([0, 6, 3, 1])
    want_loss, want_grad = ops.cross_entropy(logits.copy(), t)
    view = logits[:]
    loss, grad = ops.cross_entropy(logits, t, out=view)
    assert grad is view and loss == want_loss
    np.testing.assert_array_equal(logits, want_grad)  # written in place
    with pytest.raises(ValueError, match="out overlaps logits partially"):
        ops.cross_entropy(logits[:2], t[:2], out=logits.reshape(-1)[3:17].reshape(2, 7))


# ---- found by tests/test_fuzz_ops.py ----------------------------------------------

@pytest.mark.parametrize("cols", [1, 3, 17])
def test_layernorm_backward_rows_near_float_max_stay_finite(isa, cols):
    """Vector padding lanes once held x = 0, whose norm -mean * rstd overflowed
    for a mean near FLT_MAX / rstd, and 0 * inf put NaN in the row's sums."""
    x = np.full((2, cols), -1.3e36, np.float32)
    x[1] = 9e35
    w, b = np.ones(cols, np.float32), np.zeros(cols, np.float32)
    _, mean, rstd = ops.layernorm(x, w, b)
    dx, dw, db = ops.layernorm_backward(np.ones_like(x), x, w, mean, rstd)
    np.testing.assert_array_equal(dx, 0)  # constant rows: norm = 0 and dx = 0 exactly
    np.testing.assert_array_equal(dw, 0)
    np.testing.assert_array_equal(db, 2)


def test_dropout_backward_errors_name_its_own_argument():
    with pytest.raises(TypeError, match="dropout_backward: dy must have dtype float32"):
        ops.dropout_backward(np.zeros(3), 0.5, seed=1)
    with pytest.raises(TypeError, match="dropout: x must have dtype float32"):
        ops.dropout(np.zeros(3), 0.5, seed=1)

"""Run-time ISA dispatch, thread control and build info."""
import os
import subprocess
import sys

import numpy as np
import pytest

import fastlm


def run_python(code, env_extra):
    env = dict(os.environ, **env_extra)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)


def test_available_isas_and_active():
    isas = fastlm.available_cpu_isas()
    assert isas[0] == "generic"
    assert set(isas) <= {"generic", "avx2", "avx512", "avx512bf16"}
    assert isas == [i for i in ("generic", "avx2", "avx512", "avx512bf16") if i in isas]  # lowest first
    assert fastlm.cpu_isa() in isas


@pytest.mark.parametrize("isa", fastlm.available_cpu_isas())
def test_env_forces_isa(isa):
    r = run_python("import fastlm; print(fastlm.cpu_isa())", {"FASTLM_CPU_ISA": isa})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == isa


@pytest.mark.parametrize("value, shown", [("avx9000", "avx9000"), ("AVX2", "AVX2"), ("avx512 ", "avx512 "),
                                          ("\udcff\udcfe", "\\xff\\xfe")])  # bytes ff fe, not UTF-8
def test_env_unknown_isa_is_a_clear_error(value, shown):
    r = run_python("import fastlm", {"FASTLM_CPU_ISA": value})
    assert r.returncode != 0
    assert f"ImportError: FASTLM_CPU_ISA='{shown}': unknown CPU ISA, expected generic, avx2, avx512 or avx512bf16" in r.stderr
    assert "Segmentation" not in r.stderr and "UnicodeDecodeError" not in r.stderr


def test_thread_count_is_one_for_the_process():
    """Set in one Python thread, seen in another (as torch.set_num_threads);
    an OMP_NUM_THREADS beyond MAX_THREADS starts at MAX_THREADS instead of
    ending the process when the first team is made."""
    import threading
    before = fastlm.get_num_threads()
    seen = []
    try:
        fastlm.set_num_threads(1)
        t = threading.Thread(target=lambda: seen.append(fastlm.get_num_threads()))
        t.start()
        t.join()
    finally:
        fastlm.set_num_threads(before)
    assert seen == [1]
    code = ("import fastlm, numpy as np; from fastlm import ops; a = np.ones((256, 256), np.float32); "
            "print(fastlm.get_num_threads(), ops.matmul(a, a)[0, 0])")
    r = run_python(code, {"OMP_NUM_THREADS": "99999999"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(fastlm.MAX_THREADS), "256.0"]


def test_env_unsupported_isa_is_a_clear_error():
    missing = [i for i in ("avx2", "avx512", "avx512bf16") if i not in fastlm.available_cpu_isas()]
    if not missing:
        pytest.skip("this CPU runs every ISA")
    r = run_python("import fastlm", {"FASTLM_CPU_ISA": missing[0]})
    assert r.returncode != 0 and "cannot run" in r.stderr


def test_threads_roundtrip():
    before = fastlm.get_num_threads()
    try:
        fastlm.set_num_threads(1)
        assert fastlm.get_num_threads() == 1
        fastlm.set_num_threads(3)
        assert fastlm.get_num_threads() == 3
    finally:
        fastlm.set_num_threads(before)
    try:
        fastlm.set_num_threads(np.int64(2))  # any integer type
        assert fastlm.get_num_threads() == 2
    finally:
        fastlm.set_num_threads(before)
    # Past some 30,000 threads libgomp ends the process (or it crashes):
    # counts far above any core count are refused before they reach it.
    with pytest.raises(ValueError, match="n must be >= 1"):
        fastlm.set_num_threads(0)
    for bad in (fastlm.MAX_THREADS + 1, 100_000, 2**31):
        with pytest.raises(ValueError, match=f"n must be <= {fastlm.MAX_THREADS}"):
            fastlm.set_num_threads(bad)
    assert fastlm.get_num_threads() == before
    for bad in (2.0, True, "2"):
        with pytest.raises(TypeError, match="n must be an int"):
            fastlm.set_num_threads(bad)


def test_results_independent_of_thread_count_for_rowwise_ops():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((300, 200)).astype(np.float32)
    b = rng.standard_normal((200, 100)).astype(np.float32)
    before = fastlm.get_num_threads()
    try:
        fastlm.set_num_threads(1)
        one = fastlm.ops.matmul(a, b)
        fastlm.set_num_threads(2)
        two = fastlm.ops.matmul(a, b)
    finally:
        fastlm.set_num_threads(before)
    # each C element is summed over k in the same order whatever the split
    assert np.array_equal(one, two)


def test_build_info():
    info = fastlm.build_info()
    for key in ("version", "cuda", "cpu_isas", "compiler", "cpu_isa", "num_threads"):
        assert key in info
    assert info["version"] == fastlm.__version__ != ""
    assert info["cpu_isas"] == ["generic", "avx2", "avx512", "avx512bf16"]
    assert isinstance(info["cuda"], bool)


def test_per_isa_objects_do_not_leak_weak_symbols():
    """Inline functions compiled with AVX flags must not be shared across ISAs (ODR)."""
    so = fastlm._C.__file__
    r = subprocess.run(["nm", "-C", "--defined-only", so], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip("nm not available")
    avx = [line for line in r.stdout.splitlines()
           if ("fastlm::cpu::avx2" in line or "fastlm::cpu::avx512" in line)
           and line.split()[1] in ("W", "V", "u")]
    assert not avx, avx[:5]


def test_avx512bf16_shares_avx512_kernels():
    """avx512bf16 is avx512 plus the bfloat16 GEMM: every other op gives the same bits."""
    if "avx512bf16" not in fastlm.available_cpu_isas():
        pytest.skip("this CPU lacks AVX512_BF16")
    from fastlm import _C, ops
    x = np.random.default_rng(0).standard_normal((37, 53)).astype(np.float32)
    before = fastlm.cpu_isa()
    outs = []
    try:
        for isa in ("avx512", "avx512bf16"):
            _C._set_cpu_isa(isa)
            outs.append((ops.softmax(x), ops.gelu(x), ops.matmul(x, x, trans_b=True)))
    finally:
        _C._set_cpu_isa(before)
    for a, b in zip(*outs):
        assert np.array_equal(a, b)

"""Run-time ISA dispatch, thread control and build info."""
import os
import re
import shutil
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


ISA_NAMESPACES = ("fastlm::cpu::avx2::", "fastlm::cpu::avx512::", "fastlm::cpu::avx512bf16::")


def weak_symbols(so):
    """(address, demangled name) of the weak symbols defined in the module, or
    None when it has no symbol table (a stripped release build)."""
    r = subprocess.run(["nm", "-C", "--defined-only", so], capture_output=True, text=True)
    if r.returncode != 0 or not r.stdout.strip():
        return None
    out = []
    for line in r.stdout.splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[1] in ("W", "V", "u") and parts[0].strip():
            out.append((int(parts[0], 16), parts[2]))
    return out


def functions_using_avx(so):
    """Start addresses of the functions whose machine code uses VEX/EVEX
    encodings (ymm/zmm/mask registers or v-prefixed instructions): code compiled
    with AVX flags. Baseline x86-64 code has none."""
    r = subprocess.run(["objdump", "-d", "--no-show-raw-insn", so], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    avx, current = set(), None
    header = re.compile(r"^([0-9a-f]+) <.*>:$")
    vex = re.compile(r"%[yz]mm\d|%k[0-7]\b|\tv[a-z]")
    for line in r.stdout.splitlines():
        m = header.match(line)
        if m:
            current = int(m.group(1), 16)
        elif current is not None and current not in avx and vex.search(line):
            avx.add(current)
    return avx


def test_per_isa_objects_do_not_leak_weak_symbols():
    """Code compiled with AVX flags must not be shared across ISAs (ODR). A weak
    symbol from a per-ISA object outside its ISA namespace (an inline function
    or template instance of shared code that the compiler did not inline, as in
    -O1 builds) is one name for every ISA: the linker keeps one copy, and if it
    keeps the AVX-512 one the generic kernels run AVX-512 code. A weak symbol
    inside fastlm::cpu::<isa> is distinct per ISA and harmless. Release modules
    are stripped, so this runs on unstripped builds (scripts/sanitize.sh)."""
    so = fastlm._C.__file__
    if shutil.which("nm") is None or shutil.which("objdump") is None:
        pytest.skip("nm or objdump not available")
    weak = weak_symbols(so)
    if weak is None:
        pytest.skip("the module has no symbol table (stripped release build)")
    avx = functions_using_avx(so)
    leaks = [name for addr, name in weak
             if addr in avx and not any(ns in name for ns in ISA_NAMESPACES)]
    assert not leaks, leaks[:5]


def test_weak_symbol_check_tells_a_leak_from_a_namespaced_symbol(tmp_path):
    """The check above on two tiny modules: an inline function of shared code
    compiled with -mavx2 is a leak; the same function inside an ISA namespace is not."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None or shutil.which("nm") is None or shutil.which("objdump") is None:
        pytest.skip("no C++ compiler, nm or objdump")
    src = tmp_path / "m.cpp"
    body = ("inline float dot(const float* a, const float* b, int n) {"
            " float s = 0; for (int i = 0; i < n; ++i) s += a[i] * b[i]; return s; }")
    found = {}
    for name, code in (("leak", body),
                       ("namespaced", "namespace fastlm { namespace cpu { namespace avx2 { " + body + " }}}")):
        use = "fastlm::cpu::avx2::dot" if name == "namespaced" else "dot"
        src.write_text(code + f"\nfloat use(const float* a, int n) {{ return {use}(a, a, n); }}\n")
        so = str(tmp_path / f"{name}.so")
        r = subprocess.run([cxx, "-O1", "-fno-inline", "-mavx2", "-mfma", "-shared", "-fPIC", str(src), "-o", so],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        weak, avx = weak_symbols(so), functions_using_avx(so)
        found[name] = [n for addr, n in weak if addr in avx and not any(ns in n for ns in ISA_NAMESPACES)]
    assert found["leak"] and "dot" in found["leak"][0]
    assert found["namespaced"] == []


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

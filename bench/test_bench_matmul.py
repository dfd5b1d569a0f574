"""GEMM: fastlm.ops.matmul against NumPy (OpenBLAS) and PyTorch, side by side, in GFLOP/s.

Square 512-2048 and the Transformer shapes of issue #2 (M x K) @ (K x N), plus the
transposed-weight form a Linear layer uses (x @ W^T)."""
from __future__ import annotations

import pytest

from fastlm.bench import matmul_case

from conftest import THREADS, run

SHAPES = [(512, 512, 512), (1024, 1024, 1024), (2048, 2048, 2048),
          (768, 128, 384), (768, 128, 512), (768, 512, 128)]


@pytest.fixture(scope="module")
def peak(tmp_path_factory):
    """{"fp32": GFLOP/s, "bf16": GFLOP/s[, "amx": GFLOP/s]}: bench/peak.cpp's FMA,
    vdpbf16ps and (where the CPU has them) AMX tile loops on THREADS threads,
    compiled here ({} where it cannot be built or run)."""
    import os
    import subprocess
    src = os.path.join(os.path.dirname(__file__), "peak.cpp")
    exe = str(tmp_path_factory.mktemp("peak") / "peak")
    cxx = os.environ.get("CXX", "c++")
    try:
        subprocess.run([cxx, "-O2", "-fopenmp", "-mavx512f", "-mavx512bf16", "-mamx-tile", "-mamx-bf16", src,
                        "-o", exe],
                       check=True, capture_output=True, timeout=120)
        out = subprocess.run([exe, str(THREADS)], check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.SubprocessError) as e:  # no compiler, or a CPU without AVX-512
        print(f"\ncannot build or run bench/peak.cpp: {e}")
        return {}
    rates = {k: float(v) for k, v in (line.split() for line in out.splitlines())}
    print(f"\npeak on {THREADS} threads: fp32 FMA {rates['fp32']:.1f} GFLOP/s, "
          f"bf16 vdpbf16ps {rates['bf16']:.1f} GFLOP/s"
          + (f", bf16 AMX {rates['amx']:.1f} GFLOP/s" if "amx" in rates else ""))
    return rates


@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("trans_b", [False, True], ids=["a@b", "a@bT"])
def test_bench_matmul(benchmark, peak, m, k, n, trans_b):
    res = run(benchmark, matmul_case(m, k, n, trans_b))
    if "fp32" in peak:  # the ceiling both are measured against
        print(f"  fastlm at {res.rate('fastlm') / peak['fp32']:.0%}, numpy at "
              f"{res.rate('numpy') / peak['fp32']:.0%} of the FMA peak")


# ---- bfloat16 (precision="bf16", AVX512_BF16) -------------------------------------------------

BF16_SHAPES = SHAPES + [(2048, 384, 1152), (2048, 384, 1536), (2048, 1536, 384)]


@pytest.mark.parametrize("m,k,n", BF16_SHAPES)
@pytest.mark.parametrize("trans_b", [False, True], ids=["a@b", "a@bT"])
def test_bench_matmul_bf16(benchmark, peak, m, k, n, trans_b):
    import fastlm
    from fastlm.bench_bf16 import matmul_bf16_case
    if fastlm.cpu_isa() != "avx512bf16":
        pytest.skip("precision='bf16' needs the avx512bf16 CPU ISA")
    if "bf16" not in peak:
        pytest.skip("bench/peak.cpp could not be built or run")
    res = run(benchmark, matmul_bf16_case(m, k, n, trans_b))
    engine = "amx" if fastlm.cpu_amx() and "amx" in peak else "bf16"
    print(f"  bf16 GEMM at {res.rate('fastlm') / peak[engine]:.0%} of the "
          f"{'AMX' if engine == 'amx' else 'vdpbf16ps'} peak, "
          f"fp32 GEMM at {res.rate('fp32 fastlm') / peak['fp32']:.0%} of the FMA peak")

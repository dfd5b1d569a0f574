"""Attention forward + backward, causal, float32: fastlm (tiled, online softmax)
vs PyTorch's scaled_dot_product_attention vs a naive NumPy version with the
(T, T) matrix, in GFLOP/s of useful work (see fastlm.bench.attention_case);
in bf16 (AVX512_BF16) against fastlm's float32 and PyTorch's SDPA in float32
and under bf16 autocast (fastlm.bench_bf16.attention_bf16_case)."""
from __future__ import annotations

import pytest

from fastlm.bench import attention_case

from conftest import run

SIZES = [(8, 6, 256, 64), (4, 4, 64, 32)]  # GPT-2-small-ish heads; a tiny nanoGPT


@pytest.mark.parametrize("B,H,T,D", SIZES)
def test_bench_attention(benchmark, B, H, T, D):
    run(benchmark, attention_case(B, H, T, D))


@pytest.mark.parametrize("B,H,T,D", SIZES)
def test_bench_attention_bf16(benchmark, B, H, T, D):
    import fastlm
    from fastlm.bench_bf16 import attention_bf16_case
    if fastlm.cpu_isa() != "avx512bf16":
        pytest.skip("precision='bf16' needs the avx512bf16 CPU ISA")
    run(benchmark, attention_bf16_case(B, H, T, D))

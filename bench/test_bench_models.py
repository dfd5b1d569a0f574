"""Whole models, fastlm's C++ models against PyTorch eager, same weights, batch
and thread count, in one run (the targets of issues #3 and #4):

- Transformer training tokens/s with AdamW (forward + backward + step): _C.GPT vs
  nanoGPT's GPT (fastlm.bench.TorchGPT);
- greedy sampling at batch 1, 63 new tokens from a 1-token prompt: _C.GPT's KV
  cache + _C.Sampler vs nanoGPT's generate (full recompute) and vs PyTorch with
  a KV cache;
- LSTM and GRU language-model training tokens/s with Adam: _C.RNNLM vs
  Embedding -> nn.LSTM / nn.GRU -> Linear.

Before timing, each case checks that both sides compute the same loss (logits
for sampling) from the same weights.
"""
from __future__ import annotations

import pytest

from fastlm.bench import (GPT_MEDIUM, GPT_SMALL, RNN_LARGE, RNN_SMALL, gpt_sample_case,
                          gpt_train_case, rnn_train_case)

from conftest import run


@pytest.mark.parametrize("cfg,batch", [(GPT_SMALL, 12), (GPT_MEDIUM, 8)], ids=["small", "medium"])
def test_bench_gpt_train(benchmark, cfg, batch):
    run(benchmark, gpt_train_case(**cfg, batch=batch))


def test_bench_gpt_sample(benchmark):
    run(benchmark, gpt_sample_case(**GPT_SMALL, new_tokens=63))


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("cfg,batch,length", [(RNN_SMALL, 32, 64), (RNN_LARGE, 32, 35)],
                         ids=["small", "large"])
def test_bench_rnn_train(benchmark, kind, cfg, batch, length):
    run(benchmark, rnn_train_case(kind, **cfg, batch=batch, length=length))


# ---- precision="bf16" (AVX512_BF16): fastlm bf16 vs fastlm fp32, torch fp32, torch bf16 autocast

def _bf16_or_skip():
    import fastlm
    if fastlm.cpu_isa() != "avx512bf16":
        pytest.skip("precision='bf16' needs the avx512bf16 CPU ISA")


@pytest.mark.parametrize("cfg,batch", [(GPT_SMALL, 12), (GPT_MEDIUM, 8)], ids=["small", "medium"])
def test_bench_gpt_train_bf16(benchmark, cfg, batch):
    from fastlm.bench_bf16 import gpt_train_bf16_case
    _bf16_or_skip()
    run(benchmark, gpt_train_bf16_case(**cfg, batch=batch))


def test_bench_gpt_sample_bf16(benchmark):
    from fastlm.bench_bf16 import gpt_sample_bf16_case
    _bf16_or_skip()
    run(benchmark, gpt_sample_bf16_case(**GPT_SMALL, new_tokens=63))


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_bench_rnn_train_bf16(benchmark, kind):
    from fastlm.bench_bf16 import rnn_train_bf16_case
    _bf16_or_skip()
    run(benchmark, rnn_train_bf16_case(kind, **RNN_SMALL, batch=32, length=64))

"""fastlm's models on the GPU side by side with PyTorch (skipped without one):
GPT-2 124M (vocab 50304, T 1024, 12 layers, 12 heads, 768 wide) training
(forward + backward + AdamW) and batch-1 sampling, each printed as

    [model] gpt2-124m <what> vs <reference>: fastlm X tok/s, torch Y tok/s, ours/torch R

<what>: train fp32 (B8, torch eager fp32, fused AdamW), train bf16 (B16, fastlm
precision="bf16" vs torch eager under bf16 autocast), train tf32 (B8, vs torch
with TF32 matmuls), sample b1 (greedy, 16-token prompt, 128 new tokens; fp32
and bf16, vs torch's KV-cache loop "torch kv"; "sample b1 <precision> graphs" with
FASTLM_CUDA_GRAPHS=1). Both sides start from the same
weights and the losses are checked to agree before timing; rounds alternate
between the contenders and the medians are compared.

    PYTHONPATH=python python -m pytest bench/test_bench_cuda_models.py -q -s
"""
from __future__ import annotations

import gc
import time

import numpy as np
import pytest

import fastlm

try:
    import torch
except ImportError:
    torch = None

pytestmark = pytest.mark.skipif(torch is None or not fastlm.cuda_available() or not torch.cuda.is_available(),
                                reason="needs a CUDA GPU and PyTorch with CUDA")

GPT2 = dict(vocab_size=50304, block_size=1024, n_layer=12, n_head=12, n_embd=768)
ROUNDS = 5


def _models(precision: str):
    from fastlm.bench import TorchGPT
    gc.collect()  # the previous case's models
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    fastlm.cuda.memory_usage(reset_peak=True)
    torch.manual_seed(0)
    ref = TorchGPT(*GPT2.values()).cuda()
    ours = fastlm.Transformer(GPT2["vocab_size"], **{k: v for k, v in GPT2.items() if k != "vocab_size"},
                              device="cuda", precision=precision)
    ours.load_state_dict({k: v.detach().cpu().numpy() for k, v in ref.state_dict().items()})
    return ours, ref


def _sync() -> None:
    torch.cuda.synchronize()
    fastlm.cuda.synchronize()


def _interleaved(fns: dict, rounds: int = ROUNDS, warmup: int = 1) -> dict:
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync()
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            _sync()
            times[k].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in times.items()}


def _line(what: str, reference: str, tokens: int, t: dict) -> None:
    ours, theirs = tokens / t["fastlm"], tokens / t["torch"]
    print(f"\n[model] gpt2-124m {what} vs {reference}: fastlm {ours:.0f} tok/s, torch {theirs:.0f} tok/s, "
          f"ours/torch {ours / theirs:.2f}", flush=True)


@pytest.mark.parametrize("precision,batch", [("fp32", 8), ("bf16", 16), ("tf32", 8)])
def test_train(precision, batch):
    ours, ref = _models(precision)
    rng = np.random.default_rng(0)
    x, y = (rng.integers(0, GPT2["vocab_size"], (batch, GPT2["block_size"])) for _ in range(2))
    xt, yt = torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda()
    opt = ref.configure_optimizers(0.1, 6e-4, (0.9, 0.95), fused=True)
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    autocast = precision == "bf16"

    with torch.no_grad(), torch.autocast("cuda", torch.bfloat16, enabled=autocast):
        ref_loss = ref(xt, yt).item()
    our_loss = ours._loss(x, y)
    assert abs(our_loss - ref_loss) < (2e-2 if precision != "fp32" else 1e-4), (our_loss, ref_loss)

    def fastlm_step():
        ours.zero_grad()
        ours.forward_backward(x, y)
        ours.step(6e-4, betas=(0.9, 0.95), weight_decay=0.1)

    def torch_step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", torch.bfloat16, enabled=autocast):
            loss = ref(xt, yt)
        loss.backward()
        opt.step()

    t = _interleaved({"fastlm": fastlm_step, "torch": torch_step})
    _line(f"train {precision}", "torch eager" + (" autocast" if autocast else ""), x.size, t)
    print(f"[model]   peak GPU memory B{batch}: fastlm {fastlm.cuda.memory_usage()[1] / 2**30:.2f} GiB, "
          f"torch {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB", flush=True)
    torch.backends.cuda.matmul.allow_tf32 = False


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_sample_b1(precision):
    ours, ref = _models(precision)
    if precision == "bf16":
        ref = ref.to(torch.bfloat16)
    prompt = np.random.default_rng(1).integers(0, GPT2["vocab_size"], (1, 16))
    pt = torch.from_numpy(prompt).cuda()
    new = 128
    out = {}

    def fastlm_sample():
        out["fastlm"] = ours.generate(prompt, new, do_sample=False)

    def torch_sample():
        out["torch"] = ref.generate_kv(pt, new, do_sample=False)

    t = _interleaved({"fastlm": fastlm_sample, "torch": torch_sample}, rounds=3)
    agree = int((out["fastlm"][0] == out["torch"][0].cpu().numpy()).sum()) - 16
    graphs = fastlm._C._cuda_graph_counts()  # None unless FASTLM_CUDA_GRAPHS=1
    _line(f"sample b1 {precision}" + (" graphs" if graphs is not None else ""), "torch kv", new, t)
    print(f"[model]   greedy tokens equal to torch's: {agree} of {new}", flush=True)
    if graphs is not None:
        print(f"[model]   decode steps as CUDA graphs: {graphs}", flush=True)

"""Benchmark cases of ``precision="bf16"``, for ``bench/``: the bfloat16 GEMM
(``ops.matmul(..., precision="bf16")``) against fastlm's and NumPy's float32
GEMM and PyTorch's bfloat16 autocast, the flash attention in bf16 against
fastlm's float32 one and PyTorch's SDPA, and the models in bf16 against fastlm in
float32, PyTorch eager in float32 and PyTorch under
``torch.autocast("cpu", torch.bfloat16)``. In every case "fastlm" is the bf16
contender and "fp32 fastlm" a reference, so ratios read as bf16's speedups."""
from __future__ import annotations

from typing import Callable, Dict, Tuple

import numpy as np

from fastlm import _C, ops
from fastlm.bench import (Case, Contender, F, Fn, TorchGPT, TorchRNNLM, _same_weights, fastlm_generate,
                          torch)

__all__ = ["matmul_bf16_case", "attention_bf16_case", "gpt_train_bf16_case", "gpt_sample_bf16_case", "rnn_train_bf16_case"]


def matmul_bf16_case(m: int, k: int, n: int, trans_b: bool = False) -> Case:
    """(m, k) @ (k, n) float32, or x @ W^T with W (n, k) when trans_b. "fastlm"
    is the bf16 GEMM; "fp32 fastlm" is a reference here, so the ratio
    fp32 fastlm / fastlm is bf16's speedup over fastlm's float32."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((n, k) if trans_b else (k, n), dtype=np.float32)
    bb = b.T if trans_b else b
    cs: Dict[str, Contender] = {
        "fastlm": lambda: ops.matmul(a, b, trans_b=trans_b, precision="bf16"),
        "fp32 fastlm": lambda: ops.matmul(a, b, trans_b=trans_b),
        "fp32 numpy": lambda: a @ bb,
    }
    if torch is not None:
        at, bt = torch.from_numpy(a), torch.from_numpy(b)

        def autocast():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return F.linear(at, bt) if trans_b else at @ bt
        cs["bf16 torch autocast"] = autocast
    size = m * n * k
    return Case(f"matmul bf16{' (x @ W^T)' if trans_b else ''} {m}x{k} @ {k}x{n}", "GFLOP/s",
                2.0 * size, cs, rounds=3 if size >= 1 << 33 else 5,
                block=2 if size >= 1 << 33 else 3 if size >= 1 << 30 else 10)


def attention_bf16_case(B: int, H: int, T: int, D: int) -> Case:
    """Causal forward + backward, ``precision="bf16"`` against fastlm's float32
    and PyTorch's scaled_dot_product_attention in float32 and under bf16
    autocast; GFLOP/s of useful work as bench.attention_case."""
    rng = np.random.default_rng(0)
    q, k, v, dout = (rng.standard_normal((B, H, T, D)).astype(np.float32) for _ in range(4))

    def ours(precision: str) -> Fn:
        def run():
            out, lse = ops.attention(q, k, v, causal=True, precision=precision)
            return ops.attention_backward(dout, q, k, v, out, lse, causal=True, precision=precision)
        return run

    cs: Dict[str, Contender] = {"fastlm": ours("bf16"), "fp32 fastlm": ours("fp32")}
    if torch is not None:
        tq, tk, tv = (torch.from_numpy(x).requires_grad_() for x in (q, k, v))
        tdout = torch.from_numpy(dout)

        def ref(autocast: bool) -> Fn:
            def run():
                tq.grad = tk.grad = tv.grad = None
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                    out = F.scaled_dot_product_attention(tq, tk, tv, is_causal=True)
                out.backward(tdout.to(out.dtype))
            return run
        cs["fp32 torch"] = ref(False)
        cs["bf16 torch autocast"] = ref(True)
    return Case(f"attention bf16 fwd+bwd causal (B,H,T,D)=({B},{H},{T},{D})", "GFLOP/s",
                3.5 * 4 * B * H * T * T * D * (T + 1) / (2 * T), cs, rounds=5,
                block=4 if T >= 256 else 40)


def _training_bf16(name: str, make_ours: Callable[[str], Tuple[object, Fn]], make_ref, vocab_size: int,
                   batch: int, length: int, seed: int) -> Case:
    """A training iteration (zero_grad, forward + backward over a (batch, length)
    window of random ids, optimizer step) of fastlm in bf16 and in fp32 and of
    the PyTorch (module, optimizer) from make_ref() in float32 and under bf16
    autocast, all from the same weights."""
    rng = np.random.default_rng(seed)
    x, y = (rng.integers(0, vocab_size, (batch, length)) for _ in range(2))
    (ours, step), (ours32, step32) = make_ours("bf16"), make_ours("fp32")

    def iteration(model, model_step: Fn) -> Fn:
        def run() -> None:
            model.zero_grad()
            model.forward_backward(x, y)
            model_step()
        return run

    cs: Dict[str, Contender] = {"fastlm": iteration(ours, step), "fp32 fastlm": iteration(ours32, step32)}
    check = module = None
    if torch is not None:
        torch.manual_seed(seed)
        module, opt = make_ref()
        module16, opt16 = make_ref()
        module16.load_state_dict(module.state_dict())
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)

        def ref() -> None:
            opt.zero_grad(set_to_none=True)
            module(xt, yt).backward()
            opt.step()

        def ref16() -> None:
            opt16.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = module16(xt, yt)
            loss.backward()
            opt16.step()

        def check() -> str:  # before any step: the same weights give the same loss
            with torch.no_grad():
                want = module(xt, yt).item()
            l16, l32 = ours.loss(x, y), ours32.loss(x, y)
            assert abs(l32 - want) <= 1e-4 * abs(want) + 1e-6, f"loss: fastlm fp32 {l32} vs torch {want}"
            assert abs(l16 - want) <= 2e-2, f"loss: fastlm bf16 {l16} vs torch fp32 {want}"
            return f"loss fastlm bf16 {l16:.6f} fastlm fp32 {l32:.6f} torch {want:.6f}"
        cs["torch"] = ref
        cs["torch bf16 autocast"] = ref16
    _same_weights(ours, module, seed)
    _same_weights(ours32, module, seed)
    return Case(name, "tokens/s", x.size, cs, rounds=5, block=1, warmup=1, first=2, check=check)


def gpt_train_bf16_case(vocab_size: int, block_size: int, n_layer: int, n_head: int, n_embd: int,
                        batch: int, lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1, seed=0) -> Case:
    """_C.GPT in bf16 (and fp32) vs TorchGPT (fp32 and autocast), AdamW as gpt_train_case."""
    cfg = (vocab_size, block_size, n_layer, n_head, n_embd)

    def make_ours(precision: str):
        g = _C.GPT(*cfg, precision=precision)
        return g, lambda: g.step(lr, betas[0], betas[1], 1e-8, weight_decay)

    def make_ref():
        model = TorchGPT(*cfg)
        return model, model.configure_optimizers(weight_decay, lr, betas)

    return _training_bf16(f"train bf16 GPT {n_layer}L {n_head}H {n_embd}d T{block_size} B{batch}", make_ours,
                          make_ref, vocab_size, batch, block_size, seed)


def rnn_train_bf16_case(kind: str, vocab_size: int, embed_dim: int, hidden_size: int, num_layers: int,
                        batch: int, length: int, lr=1e-3, seed=0) -> Case:
    """_C.RNNLM in bf16 (and fp32) vs TorchRNNLM (fp32 and autocast), Adam as rnn_train_case."""
    cfg = (vocab_size, embed_dim, hidden_size, num_layers)

    def make_ours(precision: str):
        r = _C.RNNLM(kind, *cfg, precision=precision)
        return r, lambda: r.step(lr, 0.9, 0.999, 1e-8, 0.0)

    def make_ref():
        model = TorchRNNLM(kind, *cfg)
        return model, torch.optim.Adam(model.parameters(), lr=lr)

    return _training_bf16(f"train bf16 {kind.upper()} {num_layers}x{hidden_size} V{vocab_size} B{batch} "
                          f"T{length}", make_ours, make_ref, vocab_size, batch, length, seed)


def gpt_sample_bf16_case(vocab_size: int, block_size: int, n_layer: int, n_head: int, n_embd: int,
                         new_tokens: int = 63, seed=0) -> Case:
    """Greedy decoding at batch 1 from a 1-token prompt, bf16 weights vs fastlm
    fp32 and PyTorch's KV-cache decode (fp32 and autocast); tokens/s."""
    cfg = (vocab_size, block_size, n_layer, n_head, n_embd)
    g, g32, sampler = _C.GPT(*cfg, precision="bf16"), _C.GPT(*cfg), _C.Sampler(seed)
    prompt = np.zeros((1, 1), np.int64)
    cs: Dict[str, Contender] = {"fastlm": lambda: fastlm_generate(g, sampler, prompt, new_tokens),
                                "fp32 fastlm": lambda: fastlm_generate(g32, sampler, prompt, new_tokens)}
    model = None
    if torch is not None:
        torch.manual_seed(seed)
        model = TorchGPT(*cfg).eval()
        pt = torch.from_numpy(prompt)
        cs["torch KV cache"] = lambda: model.generate_kv(pt, new_tokens, do_sample=False)

        def autocast():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return model.generate_kv(pt, new_tokens, do_sample=False)
        cs["torch bf16 autocast KV cache"] = autocast
    _same_weights(g, model, seed)
    _same_weights(g32, model, seed)
    return Case(f"sample bf16 GPT {n_layer}L {n_embd}d batch 1, {new_tokens} tokens", "tokens/s",
                new_tokens, cs, rounds=5, block=3, warmup=1, first=2)

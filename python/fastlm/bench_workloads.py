"""The workloads ("cases") of ``fastlm bench`` and ``bench/``: the kernels at
model sizes, and whole training steps and sampling loops, each beside PyTorch's
(NumPy's where PyTorch is absent) doing the same work."""
from __future__ import annotations

from typing import Dict

import numpy as np

from fastlm import _C, ops

from .bench_models import F, TorchGPT, TorchRNNLM, nn, torch
from .bench_timing import Case, Contender, Fn

F32 = 4


# ----------------------------------------------------------------------------- kernels

def matmul_case(m: int, k: int, n: int, trans_b: bool = False) -> Case:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((n, k) if trans_b else (k, n), dtype=np.float32)
    bb = b.T if trans_b else b
    cs: Dict[str, Contender] = {"fastlm": lambda: ops.matmul(a, b, trans_b=trans_b),
                                "numpy": lambda: a @ bb}
    if torch is not None:
        at, bt = torch.from_numpy(a), torch.from_numpy(b)
        cs["torch"] = (lambda: F.linear(at, bt)) if trans_b else (lambda: at @ bt)
    size = m * n * k
    return Case(f"matmul{' (x @ W^T)' if trans_b else ''} {m}x{k} @ {k}x{n}", "GFLOP/s",
                2.0 * size, cs, rounds=3 if size >= 1 << 33 else 5,
                block=2 if size >= 1 << 33 else 3 if size >= 1 << 30 else 10)


def numpy_attention(q, k, v, dout):
    """Naive float32 causal attention with the (T, T) matrix, forward and backward."""
    T, D = q.shape[2], q.shape[3]
    scale = np.float32(1 / np.sqrt(D))
    s = q @ np.swapaxes(k, -1, -2) * scale
    s = np.where(np.triu(np.ones((T, T), bool), 1), np.float32(-np.inf), s)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    out = p @ v
    dv = np.swapaxes(p, -1, -2) @ dout
    dp = dout @ np.swapaxes(v, -1, -2)
    ds = p * (dp - np.sum(dp * p, -1, keepdims=True)) * scale
    return out, ds @ k, np.swapaxes(ds, -1, -2) @ q, dv


def attention_case(B: int, H: int, T: int, D: int) -> Case:
    """Causal; GFLOP/s count useful work: 4 B H T^2 D for the forward's two products, about
    halved by the mask, and 2.5 times that for the backward's five."""
    rng = np.random.default_rng(0)
    q, k, v, dout = (rng.standard_normal((B, H, T, D)).astype(np.float32) for _ in range(4))

    def ours():
        out, lse = ops.attention(q, k, v, causal=True)
        return ops.attention_backward(dout, q, k, v, out, lse, causal=True)

    cs: Dict[str, Contender] = {"fastlm": ours, "numpy": lambda: numpy_attention(q, k, v, dout)}
    if torch is not None:
        tq, tk, tv = (torch.from_numpy(x).requires_grad_() for x in (q, k, v))
        tdout = torch.from_numpy(dout)

        def ref():
            tq.grad = tk.grad = tv.grad = None
            F.scaled_dot_product_attention(tq, tk, tv, is_causal=True).backward(tdout)

        cs["torch"] = ref
    return Case(f"attention fwd+bwd causal (B,H,T,D)=({B},{H},{T},{D})", "GFLOP/s",
                3.5 * 4 * B * H * T * T * D * (T + 1) / (2 * T), cs, rounds=5,
                block=4 if T >= 256 else 40)


def numpy_cross_entropy(x, t):
    m = x.max(axis=1, keepdims=True)
    e = np.exp(x - m)
    s = e.sum(axis=1, keepdims=True)
    rows = np.arange(x.shape[0])
    loss = float(np.mean(np.log(s[:, 0]) + m[:, 0] - x[rows, t]))
    g = e / s
    g[rows, t] -= 1
    g /= x.shape[0]
    return loss, g


def cross_entropy_case(rows: int, vocab: int) -> Case:
    """Bytes: one read of the logits and one write of the gradient. fastlm also
    writing the gradient over the logits, and computing the loss alone."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, vocab), dtype=np.float32) * 2
    t = rng.integers(0, vocab, rows)
    buf = np.empty_like(x)
    cs: Dict[str, Contender] = {
        "fastlm": lambda: ops.cross_entropy(x, t),
        "fastlm(in place)": (lambda: np.copyto(buf, x), lambda: ops.cross_entropy(buf, t, out=buf)),
        "fastlm(loss only)": lambda: ops.cross_entropy(x, t, compute_grad=False),
        "numpy": lambda: numpy_cross_entropy(x, t)}
    check = None
    if torch is not None:
        xt, tt = torch.from_numpy(x), torch.from_numpy(t)

        def ref():
            a = xt.detach().requires_grad_(True)
            F.cross_entropy(a, tt).backward()
            return a.grad

        def check():
            loss, g = ops.cross_entropy(x, t)
            np.testing.assert_allclose(g, ref().numpy(), rtol=1e-4, atol=1e-9)
            return _agree("loss", loss, F.cross_entropy(xt, tt).item(), rtol=1e-5)

        cs["torch"] = ref
    return Case(f"cross_entropy fwd+bwd ({rows}, {vocab})", "GB/s", 2 * x.nbytes, cs,
                rounds=5 if rows * vocab < 60_000_000 else 3, block=3, check=check)


def numpy_layernorm(x, w, b, dy, eps=np.float32(1e-5)):
    mean = x.mean(-1, keepdims=True)
    xc = x - mean
    rstd = 1 / np.sqrt((xc * xc).mean(-1, keepdims=True) + eps)
    norm = xc * rstd
    dnorm = dy * w
    dx = (dnorm - dnorm.mean(-1, keepdims=True)
          - norm * (dnorm * norm).mean(-1, keepdims=True)) * rstd
    return norm * w + b, dx, (dy * norm).sum(0), dy.sum(0)


def layernorm_case(rows: int, cols: int) -> Case:
    """Bytes: forward x in, y out; backward dy, x in, dx out (weights, stats negligible).
    PyTorch runs its ATen kernels directly, without autograd bookkeeping."""
    rng = np.random.default_rng(0)
    x, dy = (rng.standard_normal((rows, cols)).astype(np.float32) for _ in range(2))
    w, b = (rng.standard_normal(cols).astype(np.float32) for _ in range(2))

    def ours():
        _, mean, rstd = ops.layernorm(x, w, b)
        return ops.layernorm_backward(dy, x, w, mean, rstd)

    cs: Dict[str, Contender] = {"fastlm": ours, "numpy": lambda: numpy_layernorm(x, w, b, dy)}
    if torch is not None:
        tx, tdy, tw, tb = (torch.from_numpy(a) for a in (x, dy, w, b))
        aten = torch.ops.aten

        def ref():
            _, mean, rstd = aten.native_layer_norm(tx, [cols], tw, tb, 1e-5)
            return aten.native_layer_norm_backward(tdy, tx, [cols], mean, rstd, tw, tb,
                                                   [True, True, True])

        cs["torch"] = ref
    return Case(f"layernorm fwd+bwd {rows}x{cols}", "GB/s", 5 * rows * cols * F32, cs,
                rounds=5, block=10 if rows * cols < 10 ** 6 else 3)


def numpy_gelu(x, dy):
    s, c = np.float32(np.sqrt(2 / np.pi)), np.float32(0.044715)
    t = np.tanh(s * (x + c * x * x * x))
    dx = dy * (np.float32(0.5) * (1 + t)
               + np.float32(0.5) * x * (1 - t * t) * s * (1 + 3 * c * x * x))
    return np.float32(0.5) * x * (1 + t), dx


def gelu_case(rows: int, cols: int) -> Case:
    """Bytes: forward x in, y out; backward dy, x in, dx out. NumPy's temporaries make
    sizes past 10^7 take seconds, so it sits those out."""
    rng = np.random.default_rng(0)
    x, dy = (rng.standard_normal((rows, cols)).astype(np.float32) for _ in range(2))
    big = rows * cols > 10 ** 7
    cs: Dict[str, Contender] = {"fastlm": lambda: (ops.gelu(x), ops.gelu_backward(dy, x))}
    if not big:
        cs["numpy"] = lambda: numpy_gelu(x, dy)
    if torch is not None:
        tx, tdy = torch.from_numpy(x), torch.from_numpy(dy)
        cs["torch"] = lambda: (F.gelu(tx, approximate="tanh"),
                               torch.ops.aten.gelu_backward(tdy, tx, approximate="tanh"))
    return Case(f"gelu fwd+bwd {rows}x{cols}", "GB/s", 5 * rows * cols * F32, cs,
                rounds=3 if big else 5, block=2 if big else 10)


def adamw_case(n: int) -> Case:
    """Bytes: param, m, v read and written, grad read. PyTorch's foreach and fused variants."""
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal(n).astype(np.float32)
    g = (rng.standard_normal(n) * 1e-2).astype(np.float32)
    lr, b1, b2, eps, wd = 1e-3, 0.9, 0.999, 1e-8, 0.1

    def state():
        return {"p": p0.copy(), "m": np.zeros(n, np.float32), "v": np.zeros(n, np.float32),
                "step": 0}

    ours_s, np_s = state(), state()

    def ours():
        ours_s["step"] += 1
        ops.adamw_step(ours_s["p"], g, ours_s["m"], ours_s["v"], step=ours_s["step"], lr=lr,
                       beta1=b1, beta2=b2, eps=eps, weight_decay=wd)

    def numpy_adamw():  # in place, as few temporaries as NumPy allows
        np_s["step"] += 1
        p, m, v = np_s["p"], np_s["m"], np_s["v"]
        p *= np.float32(1 - lr * wd)
        m += np.float32(1 - b1) * (g - m)
        v *= np.float32(b2)
        v += np.float32(1 - b2) * g * g
        denom = np.sqrt(v)
        denom /= np.float32(np.sqrt(1 - b2 ** np_s["step"]))
        denom += np.float32(eps)
        p -= np.float32(lr / (1 - b1 ** np_s["step"])) * m / denom

    cs: Dict[str, Contender] = {"fastlm": ours, "numpy": numpy_adamw}
    if torch is not None:
        for variant in ("foreach", "fused"):
            pt = nn.Parameter(torch.from_numpy(p0.copy()))
            pt.grad = torch.from_numpy(g)
            cs[f"torch-{variant}"] = torch.optim.AdamW(
                [pt], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd, **{variant: True}).step
    return Case(f"adamw {n / 1e6:g}M params", "GB/s", 7 * n * F32, cs, rounds=5, block=3)


def fastlm_generate(g, sampler, prompt: np.ndarray, max_new_tokens: int, temperature=1.0,
                    top_k=0, top_p=1.0, do_sample=False) -> np.ndarray:
    """_C.GPT's KV-cache decode: the prompt (B, T) at position 0, then one call per token."""
    B, T = prompt.shape
    out = np.empty((B, T + max_new_tokens), np.int64)
    out[:, :T] = prompt
    logits = g.decode(prompt, 0)
    for i in range(max_new_tokens):
        nxt = sampler.sample(logits, temperature, top_k, top_p, do_sample)
        out[:, T + i] = nxt
        if i + 1 < max_new_tokens:
            logits = g.decode(nxt[:, None], T + i)
    return out


def _same_weights(store, module, seed: int) -> None:
    """Copies the reference's weights into a fastlm model (same names); without
    PyTorch, GPT-2-style values (normal 0.02, LayerNorm weights 1, biases 0)."""
    if module is not None:
        sd = module.state_dict()
        for name, a in store.tensors().items():
            a[...] = sd[name].numpy()
        store.weights_changed()
        return
    rng = np.random.default_rng(seed)
    for name, a in store.tensors().items():
        ln = ".ln_" in name and name.endswith("weight")
        a[...] = 1.0 if ln else 0.0 if name.endswith("bias") else 0.02 * rng.standard_normal(a.shape)
    store.weights_changed()


def _agree(name: str, ours: float, ref: float, rtol: float = 1e-4) -> str:
    assert abs(ours - ref) <= rtol * abs(ref) + 1e-6, f"{name}: fastlm {ours} vs torch {ref}"
    return f"{name} fastlm {ours:.6f} torch {ref:.6f}"


# ----------------------------------------------------------------------------- models

GPT_SMALL = dict(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128)  # batch 12
GPT_MEDIUM = dict(vocab_size=65, block_size=256, n_layer=6, n_head=6, n_embd=384)  # batch 8
RNN_SMALL = dict(vocab_size=65, embed_dim=128, hidden_size=256, num_layers=2)  # 32 x 64
RNN_LARGE = dict(vocab_size=10000, embed_dim=256, hidden_size=1024, num_layers=1)  # 32 x 35


def _training(name: str, ours, step: Fn, make_ref, vocab_size: int, batch: int, length: int,
              flops_per_token: float, seed: int) -> Case:
    """A training iteration, zero_grad, forward + backward over a (batch, length)
    window of random ids, optimizer step, of fastlm's model `ours` and of the
    (module, optimizer) from make_ref(), given the same weights."""
    rng = np.random.default_rng(seed)
    x, y = (rng.integers(0, vocab_size, (batch, length)) for _ in range(2))

    def fastlm_step():
        ours.zero_grad()
        ours.forward_backward(x, y)
        step()

    cs: Dict[str, Contender] = {"fastlm": fastlm_step}
    check = model = None
    if torch is not None:
        torch.manual_seed(seed)
        model, opt = make_ref()
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)

        def ref():
            opt.zero_grad(set_to_none=True)
            model(xt, yt).backward()
            opt.step()

        def check():  # before any step: same weights, same loss
            with torch.no_grad():
                return _agree("loss", ours.loss(x, y), model(xt, yt).item())

        cs["torch"] = ref
    _same_weights(ours, model, seed)
    slow = flops_per_token * x.size > 3e10  # a step of 0.3 s or more: hand-over cost is noise
    return Case(name, "tokens/s", x.size, cs, rounds=5, block=1 if slow else 3,
                warmup=0 if slow else 1, first=2 if slow else 3, check=check)


def gpt_train_case(vocab_size: int, block_size: int, n_layer: int, n_head: int, n_embd: int,
                   batch: int, lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1, seed=0) -> Case:
    """_C.GPT vs TorchGPT, AdamW with nanoGPT's shakespeare_char hyperparameters."""
    cfg = (vocab_size, block_size, n_layer, n_head, n_embd)
    g = _C.GPT(*cfg)

    def make_ref():
        model = TorchGPT(*cfg)
        return model, model.configure_optimizers(weight_decay, lr, betas)

    return _training(f"train GPT {n_layer}L {n_head}H {n_embd}d T{block_size} B{batch}", g,
                     lambda: g.step(lr, betas[0], betas[1], 1e-8, weight_decay), make_ref,
                     vocab_size, batch, block_size, 72.0 * n_layer * n_embd ** 2, seed)


def gpt_sample_case(vocab_size: int, block_size: int, n_layer: int, n_head: int, n_embd: int,
                    new_tokens: int = 63, seed=0) -> Case:
    """Greedy decoding at batch 1 from a 1-token prompt; tokens/s of new tokens."""
    cfg = (vocab_size, block_size, n_layer, n_head, n_embd)
    g, sampler = _C.GPT(*cfg), _C.Sampler(seed)
    prompt = np.zeros((1, 1), np.int64)
    cs: Dict[str, Contender] = {"fastlm": lambda: fastlm_generate(g, sampler, prompt, new_tokens)}
    check = model = None
    if torch is not None:
        torch.manual_seed(seed)
        model = TorchGPT(*cfg).eval()
        pt = torch.from_numpy(prompt)
        cs["nanoGPT generate"] = lambda: model.generate(pt, new_tokens, do_sample=False)
        cs["torch KV cache"] = lambda: model.generate_kv(pt, new_tokens, do_sample=False)

        def check():  # the same logits on one sequence, cached and recomputed
            seq = model.generate_kv(pt, new_tokens, do_sample=False)
            ours = g.decode(seq[:, :-1].numpy(), 0)
            with torch.no_grad():
                ref = model(seq[:, :-1])
            np.testing.assert_allclose(ours, ref.numpy(), rtol=1e-3, atol=1e-4)
            same = float(np.mean(fastlm_generate(g, sampler, prompt, new_tokens) == seq.numpy()))
            return f"last logits agree; greedy tokens equal to torch's: {same:.0%}"
    _same_weights(g, model, seed)
    return Case(f"sample GPT {n_layer}L {n_embd}d batch 1, {new_tokens} tokens", "tokens/s",
                new_tokens, cs, rounds=5, block=3, warmup=1, first=2, check=check)


def rnn_train_case(kind: str, vocab_size: int, embed_dim: int, hidden_size: int, num_layers: int,
                   batch: int, length: int, lr=1e-3, seed=0) -> Case:
    """_C.RNNLM vs TorchRNNLM, Adam (no decay), backpropagation through the whole window."""
    cfg = (vocab_size, embed_dim, hidden_size, num_layers)
    r = _C.RNNLM(kind, *cfg)

    def make_ref():
        model = TorchRNNLM(kind, *cfg)
        return model, torch.optim.Adam(model.parameters(), lr=lr)

    gates = 4 if kind == "lstm" else 3
    flops = 6.0 * hidden_size * (gates * (embed_dim + hidden_size * (2 * num_layers - 1)) + vocab_size)
    return _training(f"train {kind.upper()} {num_layers}x{hidden_size} V{vocab_size} B{batch} "
                     f"T{length}", r, lambda: r.step(lr, 0.9, 0.999, 1e-8, 0.0), make_ref,
                     vocab_size, batch, length, flops, seed)

"""Independent GPT-2 references for the Transformer tests.

Two implementations that share nothing with fastlm but the parameter names:

* a NumPy GPT (:func:`np_forward_backward`, :func:`np_adamw_step`) written
  out by hand, forward and backward, in any float dtype: float64 is the
  reference, float32 the "naive" computation whose own error sets the
  tolerance (the way the kernel tests judge ops);
* a nanoGPT-style PyTorch module (:func:`make_torch_gpt`) used when torch
  imports, with attention written out (masked softmax) rather than through
  ``scaled_dot_product_attention`` so it runs in float64 too.

Both take a nanoGPT state dict (``transformer.wte.weight`` ... ``lm_head.weight``
tied to ``wte``) as a dict of NumPy arrays.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import numpy as np

from .train import cross_entropy_ref, np_adamw_step  # noqa: F401 (np_adamw_step re-exported)

GELU_K = math.sqrt(2.0 / math.pi)
LN_EPS = 1e-5


def param_names(n_layer: int) -> List[str]:
    """Parameter names in nanoGPT's order, without the tied ``lm_head.weight``."""
    names = ["transformer.wte.weight", "transformer.wpe.weight"]
    for i in range(n_layer):
        p = f"transformer.h.{i}."
        names += [p + "ln_1.weight", p + "ln_1.bias", p + "attn.c_attn.weight", p + "attn.c_attn.bias",
                  p + "attn.c_proj.weight", p + "attn.c_proj.bias", p + "ln_2.weight", p + "ln_2.bias",
                  p + "mlp.c_fc.weight", p + "mlp.c_fc.bias", p + "mlp.c_proj.weight", p + "mlp.c_proj.bias"]
    names += ["transformer.ln_f.weight", "transformer.ln_f.bias"]
    return names


def param_shapes(vocab_size: int, block_size: int, n_layer: int, n_embd: int) -> Dict[str, Tuple[int, ...]]:
    C = n_embd
    shapes: Dict[str, Tuple[int, ...]] = {}
    for name in param_names(n_layer):
        leaf = name.split(".", 3)[-1] if name.startswith("transformer.h.") else name
        if name == "transformer.wte.weight":
            s: Tuple[int, ...] = (vocab_size, C)
        elif name == "transformer.wpe.weight":
            s = (block_size, C)
        elif leaf.endswith("c_attn.weight"):
            s = (3 * C, C)
        elif leaf.endswith("c_attn.bias"):
            s = (3 * C,)
        elif leaf.endswith("mlp.c_fc.weight"):
            s = (4 * C, C)
        elif leaf.endswith("mlp.c_fc.bias"):
            s = (4 * C,)
        elif leaf.endswith("mlp.c_proj.weight"):
            s = (C, 4 * C)
        elif leaf.endswith("attn.c_proj.weight"):
            s = (C, C)
        else:  # LayerNorm weights/biases and the c_proj biases
            s = (C,)
        shapes[name] = s
    return shapes


def random_state_dict(vocab_size: int, block_size: int, n_layer: int, n_embd: int, seed: int = 0,
                      std: float = 0.1) -> Dict[str, np.ndarray]:
    """float32 random weights, every entry non-trivial (LayerNorm weights around 1,
    biases non-zero) so that every gradient path is exercised."""
    rng = np.random.default_rng(seed)
    sd: Dict[str, np.ndarray] = {}
    for name, shape in param_shapes(vocab_size, block_size, n_layer, n_embd).items():
        if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
            a = 1.0 + 0.1 * rng.standard_normal(shape)
        elif name.endswith("bias"):
            a = 0.02 * rng.standard_normal(shape)
        else:
            a = std * rng.standard_normal(shape)
        sd[name] = a.astype(np.float32)
    sd["lm_head.weight"] = sd["transformer.wte.weight"].copy()
    return sd


# ----------------------------------------------------------------------------- NumPy

def _layernorm(x, w, b):
    mean = x.mean(-1, keepdims=True)
    xc = x - mean
    var = (xc * xc).mean(-1, keepdims=True)
    rstd = 1.0 / np.sqrt(var + LN_EPS)
    xhat = xc * rstd
    return xhat * w + b, (xhat, rstd)


def _layernorm_backward(dy, w, cache):
    xhat, rstd = cache
    C = xhat.shape[-1]
    dw = (dy * xhat).reshape(-1, C).sum(0)
    db = dy.reshape(-1, C).sum(0)
    dxhat = dy * w
    dx = rstd * (dxhat - dxhat.mean(-1, keepdims=True) - xhat * (dxhat * xhat).mean(-1, keepdims=True))
    return dx, dw, db


def _gelu(x):
    return 0.5 * x * (1.0 + np.tanh(GELU_K * (x + 0.044715 * x ** 3)))


def _gelu_grad(x):
    t = np.tanh(GELU_K * (x + 0.044715 * x ** 3))
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * GELU_K * (1.0 + 3 * 0.044715 * x * x)


def np_forward_backward(sd: Dict[str, np.ndarray], idx: np.ndarray, targets: Optional[np.ndarray],
                        n_head: int, dtype=np.float64, drop: Optional[Dict[str, np.ndarray]] = None,
                        ) -> Tuple[np.ndarray, Optional[float], Optional[Dict[str, np.ndarray]]]:
    """GPT-2 forward (and backward when targets are given) in ``dtype``.

    sd: nanoGPT state dict (lm_head.weight is ignored: tied to wte); idx,
    targets: (B, T) integer, targets == -100 ignored. Returns (logits (B, T, V),
    mean loss or None, grads or None) with grads named as ``param_names``
    (wte's gradient includes the lm_head contribution).

    drop: dropout as nanoGPT places it, as factors (keep / (1 - p) or 0):
    ``"emb"`` (B, T, C) on the embedding output and, per layer i, ``"attn{i}"``
    (B, H, T, T) on the attention probabilities, ``"res{i}a"`` and
    ``"res{i}m"`` (B, T, C) on the attention and MLP branches.
    """
    p = {k: np.asarray(v, dtype=dtype) for k, v in sd.items() if k != "lm_head.weight"}
    n_layer = sum(1 for k in p if k.endswith(".ln_1.weight"))
    B, T = idx.shape
    wte, wpe = p["transformer.wte.weight"], p["transformer.wpe.weight"]
    V, C = wte.shape
    H = n_head
    D = C // H
    scale = dtype(1.0 / math.sqrt(D))
    mask = np.triu(np.ones((T, T), dtype=bool), 1)

    one = dtype(1)
    z = {k: np.asarray(v, dtype) for k, v in (drop or {}).items()}
    zf = lambda key: z.get(key, one)  # noqa: E731
    x = (wte[idx] + wpe[:T]) * zf("emb")
    caches = []
    for i in range(n_layer):
        pre = f"transformer.h.{i}."
        ln1, c1 = _layernorm(x, p[pre + "ln_1.weight"], p[pre + "ln_1.bias"])
        qkv = ln1 @ p[pre + "attn.c_attn.weight"].T + p[pre + "attn.c_attn.bias"]
        q, k, v = (a.reshape(B, T, H, D).transpose(0, 2, 1, 3) for a in np.split(qkv, 3, axis=-1))
        att = (q @ k.transpose(0, 1, 3, 2)) * scale
        att = np.where(mask, -np.inf, att)
        att = att - att.max(-1, keepdims=True)
        P = np.exp(att)
        P = P / P.sum(-1, keepdims=True)
        yh = (P * zf(f"attn{i}")) @ v
        y = yh.transpose(0, 2, 1, 3).reshape(B, T, C)
        x = x + (y @ p[pre + "attn.c_proj.weight"].T + p[pre + "attn.c_proj.bias"]) * zf(f"res{i}a")
        ln2, c2 = _layernorm(x, p[pre + "ln_2.weight"], p[pre + "ln_2.bias"])
        h = ln2 @ p[pre + "mlp.c_fc.weight"].T + p[pre + "mlp.c_fc.bias"]
        g = _gelu(h)
        x = x + (g @ p[pre + "mlp.c_proj.weight"].T + p[pre + "mlp.c_proj.bias"]) * zf(f"res{i}m")
        caches.append((ln1, c1, q, k, v, P, y, ln2, c2, h, g))
    lnf, cf = _layernorm(x, p["transformer.ln_f.weight"], p["transformer.ln_f.bias"])
    logits = lnf @ wte.T
    if targets is None:
        return logits, None, None

    loss, dlogits = cross_entropy_ref(logits, targets, dtype)

    grads = {k: np.zeros_like(v) for k, v in p.items()}

    def linear_backward(name, dout, inp):
        """Adds linear layer `name`'s (out = inp W^T + b) weight and bias
        gradients for dout; returns d inp."""
        n_out, n_in = dout.shape[-1], inp.shape[-1]
        grads[name + ".weight"] += dout.reshape(-1, n_out).T @ inp.reshape(-1, n_in)
        grads[name + ".bias"] += dout.reshape(-1, n_out).sum(0)
        return dout @ p[name + ".weight"]

    def layernorm_backward(name, dy, cache):
        """Adds LayerNorm `name`'s weight and bias gradients for dy; returns d x."""
        dx, dw, db = _layernorm_backward(dy, p[name + ".weight"], cache)
        grads[name + ".weight"] += dw
        grads[name + ".bias"] += db
        return dx

    grads["transformer.wte.weight"] += dlogits.reshape(-1, V).T @ lnf.reshape(-1, C)
    dx = layernorm_backward("transformer.ln_f", dlogits @ wte, cf)
    for i in reversed(range(n_layer)):
        pre = f"transformer.h.{i}."
        ln1, c1, q, k, v, P, y, ln2, c2, h, g = caches[i]
        # MLP
        dg = linear_backward(pre + "mlp.c_proj", dx * zf(f"res{i}m"), g)
        dln2 = linear_backward(pre + "mlp.c_fc", dg * _gelu_grad(h), ln2)
        dx = dx + layernorm_backward(pre + "ln_2", dln2, c2)
        # attention
        dy = linear_backward(pre + "attn.c_proj", dx * zf(f"res{i}a"), y)
        dy = dy.reshape(B, T, H, D).transpose(0, 2, 1, 3)
        za = zf(f"attn{i}")
        dP = (dy @ v.transpose(0, 1, 3, 2)) * za
        dv = (P * za).transpose(0, 1, 3, 2) @ dy
        datt = P * (dP - (dP * P).sum(-1, keepdims=True)) * scale
        dq = datt @ k
        dk = datt.transpose(0, 1, 3, 2) @ q
        dqkv = np.concatenate([a.transpose(0, 2, 1, 3).reshape(B, T, C) for a in (dq, dk, dv)], axis=-1)
        dln1 = linear_backward(pre + "attn.c_attn", dqkv, ln1)
        dx = dx + layernorm_backward(pre + "ln_1", dln1, c1)
    dx = dx * zf("emb")
    np.add.at(grads["transformer.wte.weight"], idx.reshape(-1), dx.reshape(-1, C))
    grads["transformer.wpe.weight"][:T] += dx.sum(0)
    return logits, loss, grads


# ----------------------------------------------------------------------------- PyTorch

def make_torch_gpt(sd: Dict[str, np.ndarray], n_head: int, dtype: str = "float64"):
    """A nanoGPT-style ``torch.nn.Module`` loaded with ``sd`` (torch must import).
    ``model(idx, targets)`` returns (logits, loss) as nanoGPT's GPT.forward
    (logits for every position)."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    tdtype = getattr(torch, dtype)
    V, C = sd["transformer.wte.weight"].shape
    block_size = sd["transformer.wpe.weight"].shape[0]
    n_layer = sum(1 for k in sd if k.endswith(".ln_1.weight"))

    class CausalSelfAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.c_attn = nn.Linear(C, 3 * C)
            self.c_proj = nn.Linear(C, C)

        def forward(self, x):
            B, T, _ = x.shape
            q, k, v = self.c_attn(x).split(C, dim=2)
            q, k, v = (t.view(B, T, n_head, C // n_head).transpose(1, 2) for t in (q, k, v))
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(C // n_head))
            causal = torch.ones(T, T, dtype=torch.bool).tril()
            att = att.masked_fill(~causal, float("-inf"))
            y = F.softmax(att, dim=-1) @ v
            return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.c_fc = nn.Linear(C, 4 * C)
            self.gelu = nn.GELU(approximate="tanh")
            self.c_proj = nn.Linear(4 * C, C)

        def forward(self, x):
            return self.c_proj(self.gelu(self.c_fc(x)))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1 = nn.LayerNorm(C, eps=LN_EPS)
            self.attn = CausalSelfAttention()
            self.ln_2 = nn.LayerNorm(C, eps=LN_EPS)
            self.mlp = MLP()

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.transformer = nn.ModuleDict(dict(
                wte=nn.Embedding(V, C), wpe=nn.Embedding(block_size, C),
                h=nn.ModuleList([Block() for _ in range(n_layer)]), ln_f=nn.LayerNorm(C, eps=LN_EPS)))
            self.lm_head = nn.Linear(C, V, bias=False)
            self.transformer.wte.weight = self.lm_head.weight

        def forward(self, idx, targets=None):
            T = idx.shape[1]
            pos = torch.arange(T, dtype=torch.long)
            x = self.transformer.wte(idx) + self.transformer.wpe(pos)
            for block in self.transformer.h:
                x = block(x)
            logits = self.lm_head(self.transformer.ln_f(x))
            loss = None
            if targets is not None:
                loss = F.cross_entropy(logits.view(-1, V), targets.view(-1), ignore_index=-100)
            return logits, loss

        def configure_optimizer(self, lr, betas, eps, weight_decay):
            params = {n: p for n, p in self.named_parameters()}
            decay = [p for p in params.values() if p.dim() >= 2]
            no_decay = [p for p in params.values() if p.dim() < 2]
            groups = [{"params": decay, "weight_decay": weight_decay},
                      {"params": no_decay, "weight_decay": 0.0}]
            return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)

    model = GPT().to(tdtype)
    model.load_state_dict({k: torch.from_numpy(np.array(v, dtype=np.float64)).to(tdtype) for k, v in sd.items()})
    return model


def torch_grads(model) -> Dict[str, np.ndarray]:
    """Gradients of a :func:`make_torch_gpt` module by nanoGPT name (float64
    NumPy), without the tied lm_head.weight."""
    out = {}
    for name, p in model.named_parameters():
        if name == "lm_head.weight":
            name = "transformer.wte.weight"
        out[name] = p.grad.detach().to("cpu").double().numpy().copy()
    return out

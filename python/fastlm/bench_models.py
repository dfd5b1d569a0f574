"""PyTorch reference models for ``fastlm bench`` and ``bench/``: nanoGPT's GPT
(eager, ``F.scaled_dot_product_attention``, tied head, nanoGPT's ``generate``
and a minimal KV-cache decode) and the Embedding -> LSTM/GRU -> Linear
language model. Importable without PyTorch (the classes are then unusable)."""
from __future__ import annotations

import math


try:
    import torch
    from torch import nn
    from torch.nn import functional as F
except ImportError:
    torch = nn = F = None

__all__ = ["TorchBlock", "TorchGPT", "TorchRNNLM"]


_Module = nn.Module if nn is not None else object


class TorchBlock(_Module):
    """nanoGPT's pre-LN block (tanh GELU, no dropout) with an optional KV cache."""

    def __init__(self, n_embd: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.ln_1, self.ln_2 = nn.LayerNorm(n_embd), nn.LayerNorm(n_embd)
        self.attn, self.mlp = nn.Module(), nn.Module()  # containers for nanoGPT's names
        self.attn.c_attn, self.attn.c_proj = nn.Linear(n_embd, 3 * n_embd), nn.Linear(n_embd, n_embd)
        self.mlp.c_fc, self.mlp.c_proj = nn.Linear(n_embd, 4 * n_embd), nn.Linear(4 * n_embd, n_embd)

    def forward(self, x, cache=None, pos: int = 0):
        """cache: (k, v) of shape (B, n_head, block_size, head_size) for positions
        [pos, pos + T); with a cache, T > 1 only at pos 0 (prefill)."""
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
                   for t in self.attn.c_attn(self.ln_1(x)).split(C, dim=2))
        if cache is not None:
            cache[0][:, :, pos:pos + T], cache[1][:, :, pos:pos + T] = k, v
            k, v = cache[0][:, :, :pos + T], cache[1][:, :, :pos + T]
        y = F.scaled_dot_product_attention(q, k, v, is_causal=cache is None or pos == 0)
        x = x + self.attn.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))
        return x + self.mlp.c_proj(F.gelu(self.mlp.c_fc(self.ln_2(x)), approximate="tanh"))


class TorchGPT(_Module):
    """nanoGPT's GPT in PyTorch eager (GPT-2 init, tied head), with nanoGPT's
    optimizer groups and generate, and a minimal KV-cache generate."""

    def __init__(self, vocab_size: int, block_size: int, n_layer: int, n_head: int, n_embd: int):
        super().__init__()
        self.block_size, self.n_head = block_size, n_head
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab_size, n_embd), wpe=nn.Embedding(block_size, n_embd),
            h=nn.ModuleList(TorchBlock(n_embd, n_head) for _ in range(n_layer)),
            ln_f=nn.LayerNorm(n_embd)))
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith("c_proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx, targets=None, cache=None, pos: int = 0):
        """Mean cross-entropy with targets; else the last position's logits (B, V)."""
        tr = self.transformer
        x = tr.wte(idx) + tr.wpe(torch.arange(pos, pos + idx.shape[1], device=idx.device))
        for i, block in enumerate(tr.h):
            x = block(x, None if cache is None else cache[i], pos)
        x = tr.ln_f(x)
        if targets is None:
            return self.lm_head(x[:, -1, :])
        logits = self.lm_head(x)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))

    def configure_optimizers(self, weight_decay: float, lr: float, betas, fused: bool = False):
        """AdamW, decay on the 2-D tensors only (nanoGPT's groups)."""
        ps = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in ps if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in ps if p.dim() < 2], "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=lr, betas=betas, **({"fused": True} if fused else {}))

    @staticmethod
    def _pick(logits, temperature, top_k, do_sample):
        if not do_sample:
            return logits.argmax(-1, keepdim=True)
        logits = logits / temperature
        if top_k:
            kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
            logits = logits.masked_fill(logits < kth, -float("inf"))
        return torch.multinomial(F.softmax(logits, dim=-1), 1)

    def generate(self, idx, max_new_tokens: int, temperature=1.0, top_k=None, do_sample=True):
        """nanoGPT's: the whole (cropped) context recomputed for every new token."""
        with torch.no_grad():
            for _ in range(max_new_tokens):
                logits = self(idx[:, -self.block_size:])
                idx = torch.cat((idx, self._pick(logits, temperature, top_k, do_sample)), dim=1)
        return idx

    def generate_kv(self, idx, max_new_tokens: int, temperature=1.0, top_k=None, do_sample=True):
        """Keys and values of past positions cached: each new token runs one position.
        Needs prompt + max_new_tokens - 1 <= block_size (no sliding window)."""
        B, T = idx.shape
        if T + max_new_tokens - 1 > self.block_size:
            raise ValueError("generate_kv: the sequence would exceed block_size")
        C = self.transformer.wte.weight.shape[1]
        shape = (B, self.n_head, self.block_size, C // self.n_head)
        w = self.transformer.wte.weight
        cache = [(torch.empty(shape, device=w.device, dtype=w.dtype), torch.empty(shape, device=w.device, dtype=w.dtype))
                 for _ in self.transformer.h]
        with torch.no_grad():
            logits, out = self(idx, cache=cache), [idx]
            for i in range(max_new_tokens):
                out.append(self._pick(logits, temperature, top_k, do_sample))
                if i + 1 < max_new_tokens:
                    logits = self(out[-1], cache=cache, pos=T + i)
        return torch.cat(out, dim=1)


class TorchRNNLM(_Module):
    """The tutorial language model: Embedding -> nn.LSTM / nn.GRU (batch first) -> Linear."""

    def __init__(self, kind: str, vocab_size: int, embed_dim: int, hidden_size: int,
                 num_layers: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[kind]
        self.rnn = rnn(embed_dim, hidden_size, num_layers, batch_first=True)
        self.fc = nn.Linear(hidden_size, vocab_size)

    def forward(self, idx, targets):
        logits = self.fc(self.rnn(self.embedding(idx))[0])
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))

"""``fastlm.Transformer``: a GPT-2 model trained and sampled by the C++ core.

The network is exactly GPT-2 (nanoGPT's ``model.py``), so
weights move to and from PyTorch by name: token + learned position
embeddings, ``n_layer`` pre-LayerNorm blocks (causal multi-head attention
with a fused ``c_attn`` and an output ``c_proj``; an MLP ``c_fc`` ->
tanh-GELU -> ``c_proj``), a final LayerNorm and an output head tied to the
token embedding. The parameters, gradients and AdamW moments each live in one
contiguous float32 buffer inside ``fastlm._C.GPT``; a training step is one
call into C++.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

import numpy as np

from . import _C
from ._checks import MAX_SIZE, check_int as _check_int
from .lm import LanguageModel
from .tokenizers import Tokenizer

__all__ = ["Transformer", "param_names"]

_LN_WEIGHTS = (".ln_1.weight", ".ln_2.weight", "ln_f.weight")


def param_names(n_layer: int) -> List[str]:
    """nanoGPT's parameter names in its order, without the tied ``lm_head.weight``."""
    names = ["transformer.wte.weight", "transformer.wpe.weight"]
    for i in range(n_layer):
        p = f"transformer.h.{i}."
        names += [p + "ln_1.weight", p + "ln_1.bias", p + "attn.c_attn.weight", p + "attn.c_attn.bias",
                  p + "attn.c_proj.weight", p + "attn.c_proj.bias", p + "ln_2.weight", p + "ln_2.bias",
                  p + "mlp.c_fc.weight", p + "mlp.c_fc.bias", p + "mlp.c_proj.weight", p + "mlp.c_proj.bias"]
    return names + ["transformer.ln_f.weight", "transformer.ln_f.bias"]


class Transformer(LanguageModel):
    """A GPT-2 language model (nanoGPT names and layout) on fastlm's kernels.

    Parameters
    ----------
    vocab_size: number of token ids (>= 1); ids lie in ``[0, vocab_size)``.
    block_size: longest context, in tokens (>= 1).
    n_layer, n_head, n_embd: depth, attention heads, width; ``n_embd`` must be
        divisible by ``n_head``.
    seed: seeds the GPT-2 initialisation (``np.random.default_rng(seed)``):
        weights normal(0, 0.02), the residual projections (``c_proj``)
        normal(0, 0.02/sqrt(2*n_layer)), biases 0, LayerNorm weights 1. Also the
        default seed of :meth:`fit`'s batch sampler.
    dropout: probability in [0, 1) of dropping, while training (``fit``,
        ``forward_backward``), each element of the embedding output, of the
        attention probabilities and of both residual branches, as nanoGPT
        (kept ones scaled by 1 / (1 - dropout)); never in ``forward``,
        ``evaluate`` or ``generate``. The masks are a hash of the seed and a
        count of training micro-batches, so runs are reproducible, and a run
        resumed by ``fit`` continues as if it had not stopped. A setting, not
        architecture: kept in ``config.json``, assignable (``model.dropout =
        0.1``); checkpoints without it load with 0. Attention dropout runs on
        the CPU only.
    device: ``"cpu"``. ``"cuda"`` raises ``RuntimeError`` (not available in this
        build); any other name ``ValueError``.
    tokenizer: an optional :class:`fastlm.tokenizers.Tokenizer` kept with the
        model (saved in checkpoints, used for str prompts); its ``vocab_size``
        must not exceed ``vocab_size``.

    Arrays: ids are integer arrays (B, T) with T <= block_size (converted to
    int64); logits and parameters are float32. A model is not thread-safe.
    :meth:`step` defaults to nanoGPT's AdamW (betas (0.9, 0.95), weight decay
    0.1 on 2-D weights).

    Example::

        tok = CharTokenizer.from_text(text)
        model = Transformer(tok.vocab_size, block_size=64, n_layer=4, n_head=4, n_embd=128, tokenizer=tok)
        train, val = train_val_split(tok.encode(text))
        model.fit(train, val=val, steps=2000, batch_size=12)
        print(tok.decode(model.generate(tok.encode("\\n"), 200, top_k=40)))
    """

    MODEL_TYPE = "transformer"
    ARCH_KEYS = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")
    TIED = {"lm_head.weight": "transformer.wte.weight"}
    SIZE_AXES = {"vocab_size": ("transformer.wte.weight", 0), "n_embd": ("transformer.wte.weight", 1),
                 "block_size": ("transformer.wpe.weight", 0)}
    LAYERS = ("n_layer", r"transformer\.h\.(\d+)\..+")

    def __init__(self, vocab_size: int, *, block_size: int = 256, n_layer: int = 6, n_head: int = 6,
                 n_embd: int = 384, dropout: float = 0.0, seed: int = 0, device: str = "cpu",
                 tokenizer: Optional[Tokenizer] = None) -> None:
        dropout = self._check_option("dropout", dropout)
        self._build({"vocab_size": vocab_size, "block_size": block_size, "n_layer": n_layer, "n_head": n_head,
                     "n_embd": n_embd}, seed, device, tokenizer)
        self.dropout = dropout
        self._init_weights()
        self._g.weights_changed()

    def _check_arch(self, *, vocab_size: Any, block_size: Any, n_layer: Any, n_head: Any,
                    n_embd: Any) -> Dict[str, Any]:
        arch = {"vocab_size": _check_int(vocab_size, "vocab_size", 1, MAX_SIZE),
                "block_size": _check_int(block_size, "block_size", 1, MAX_SIZE),
                "n_layer": _check_int(n_layer, "n_layer", 1, MAX_SIZE),
                "n_head": _check_int(n_head, "n_head", 1, MAX_SIZE),
                "n_embd": _check_int(n_embd, "n_embd", 1, MAX_SIZE)}
        if arch["n_embd"] % arch["n_head"]:
            raise ValueError(f"n_embd ({arch['n_embd']}) must be divisible by n_head ({arch['n_head']})")
        return arch

    def _forward_backward(self, x: np.ndarray, y: np.ndarray, grad_scale: float, carry: bool) -> float:
        if self.dropout == 0.0:
            return super()._forward_backward(x, y, grad_scale, carry)
        with self._lock:
            self._cache_owner = None
            return float(self._g.forward_backward(x, y, grad_scale, self.dropout, self._next_dropout_seed()))

    def _make_core(self, arch: Dict[str, Any]) -> Any:
        return _C.GPT(arch["vocab_size"], arch["block_size"], arch["n_layer"], arch["n_head"], arch["n_embd"])

    def _param_names(self, arch: Dict[str, Any]) -> List[str]:
        return param_names(arch["n_layer"])

    def _init_weights(self) -> None:
        n_layer = self._config["n_layer"]
        rng = np.random.default_rng(self._config["seed"])
        std = np.float32(0.02)
        proj_std = np.float32(0.02 / math.sqrt(2 * n_layer))
        for name in self._names:
            p = self._params[name]
            if name.endswith(_LN_WEIGHTS):
                p[...] = 1.0
            elif name.endswith(".bias"):
                p[...] = 0.0
            else:
                s = proj_std if name.endswith(".c_proj.weight") else std
                p[...] = rng.standard_normal(p.shape, dtype=np.float32) * s

    @property
    def block_size(self) -> int:
        """Longest context in tokens."""
        return self._config["block_size"]

    def num_parameters(self, *, exclude_embeddings: bool = False) -> int:
        """Number of parameters, counting the tied embedding/output head once.
        ``exclude_embeddings`` leaves out ``wte`` and ``wpe``."""
        n = super().num_parameters()
        if exclude_embeddings:
            n -= self._params["transformer.wte.weight"].size + self._params["transformer.wpe.weight"].size
        return n

    def _flops_per_token(self, block_size: int) -> float:
        # nanoGPT's estimate_mfu: 6 per weight but the position embedding (a
        # lookup), plus the attention's 12 n_layer n_embd T.
        c = self._config
        n = self.num_parameters() - self._params["transformer.wpe.weight"].size
        return 6.0 * n + 12.0 * c["n_layer"] * c["n_embd"] * block_size

    def _max_len(self) -> Optional[int]:
        return self.block_size

    def _train_window(self, block_size: Optional[int]) -> int:
        if block_size is None:
            return self.block_size
        block_size = _check_int(block_size, "block_size", 1)
        if block_size > self.block_size:
            raise ValueError(f"block_size {block_size} exceeds the model's block_size {self.block_size}")
        return block_size

    def _decoder(self, ids: np.ndarray) -> "_KVCacheDecoder":
        return _KVCacheDecoder(self, ids)


class _KVCacheDecoder:
    """Decoding with the C++ KV cache: the prompt's last ``block_size`` tokens
    are run once (the prefill), then each new token is one ``decode`` call over
    a single position attending to the cache: O(T) attention per token.

    Past ``block_size`` tokens the model conditions on the last ``block_size``
    tokens at positions ``0 .. block_size-1``, exactly as nanoGPT's
    ``generate`` crops ``idx[:, -block_size:]``. Learned position embeddings
    shift with the window, so the cached keys and values no longer apply: once
    the window is full every further token re-runs the prefill over the
    window (as costly as nanoGPT per token).
    """

    def __init__(self, model: Transformer, ids: np.ndarray) -> None:
        self.model = model
        self.window = np.ascontiguousarray(ids[:, -model.block_size:])
        self._prefill()

    def _prefill(self) -> None:
        with self.model._lock:
            self.logits = self.model._g.decode(self.window, 0)
            self.model._cache_owner = self

    def push(self, tokens: np.ndarray) -> None:
        block = self.model.block_size
        cur = self.window.shape[1]
        self.window = np.concatenate([self.window, tokens[:, None]], axis=1)
        with self.model._lock:
            if cur < block and self.model._cache_owner is self:
                # The cache holds positions [0, cur); the new token goes at cur.
                self.logits = self.model._g.decode(np.ascontiguousarray(tokens[:, None]), cur)
                return
        # The window is full (positions shift) or another call used the
        # cache since: run the prefill over the last block_size tokens.
        self.window = np.ascontiguousarray(self.window[:, -block:])
        self._prefill()

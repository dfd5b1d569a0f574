"""``fastlm.Transformer``: a GPT-2 model trained and sampled by the C++ core.

The network is exactly GPT-2 (nanoGPT's ``model.py``), so
weights move to and from PyTorch by name: token + learned position
embeddings, ``n_layer`` pre-LayerNorm blocks (causal multi-head attention
with a fused ``c_attn`` and an output ``c_proj``; an MLP ``c_fc`` ->
GELU -> ``c_proj``), a final LayerNorm and an output head tied to the
token embedding. What Hugging Face GPT-2 checkpoints vary is configurable:
biases (nanoGPT's ``bias=False``), an untied ``lm_head``, the GELU
(``"gelu_new"``, tanh, or ``"gelu"``, erf) and the LayerNorm epsilon. The parameters, gradients and AdamW moments each live in one
contiguous float32 buffer inside ``fastlm._C.GPT``; a training step is one
call into C++.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from . import _C, hf
from ._checks import MAX_SIZE, check_int as _check_int
from .lm import LanguageModel
from .tokenizers import Tokenizer

__all__ = ["Transformer", "param_names"]

_LN_WEIGHTS = (".ln_1.weight", ".ln_2.weight", "ln_f.weight")
# Hugging Face's names for GPT-2's activations: "gelu_new" is the tanh approximation.
ACTIVATIONS = ("gelu_new", "gelu")
# What checkpoints written before these options existed leave out.
_ARCH_DEFAULTS = {"bias": True, "tie_word_embeddings": True, "activation_function": "gelu_new",
                  "layer_norm_epsilon": 1e-5}


def param_names(n_layer: int, *, bias: bool = True, tie_word_embeddings: bool = True) -> List[str]:
    """nanoGPT's parameter names in its order: without biases when ``bias`` is
    False, and without ``lm_head.weight`` (last) when it is tied."""
    names = ["transformer.wte.weight", "transformer.wpe.weight"]
    for i in range(n_layer):
        p = f"transformer.h.{i}."
        names += [p + "ln_1.weight", p + "ln_1.bias", p + "attn.c_attn.weight", p + "attn.c_attn.bias",
                  p + "attn.c_proj.weight", p + "attn.c_proj.bias", p + "ln_2.weight", p + "ln_2.bias",
                  p + "mlp.c_fc.weight", p + "mlp.c_fc.bias", p + "mlp.c_proj.weight", p + "mlp.c_proj.bias"]
    names += ["transformer.ln_f.weight", "transformer.ln_f.bias"]
    if not bias:
        names = [n for n in names if not n.endswith(".bias")]
    return names if tie_word_embeddings else names + ["lm_head.weight"]


class Transformer(LanguageModel):
    """A GPT-2 language model (nanoGPT names and layout) on fastlm's kernels.

    Parameters
    ----------
    vocab_size: number of token ids (>= 1); ids lie in ``[0, vocab_size)``.
    block_size: longest context, in tokens (>= 1).
    n_layer, n_head, n_embd: depth, attention heads, width; ``n_embd`` must be
        divisible by ``n_head``.
    bias: biases in every Linear and LayerNorm (GPT-2's); False drops them
        (nanoGPT's ``bias=False``).
    tie_word_embeddings: the output head is the token embedding (GPT-2's);
        False gives a separate ``lm_head.weight`` (vocab_size, n_embd).
    activation_function: ``"gelu_new"`` (GPT-2's tanh GELU) or ``"gelu"``
        (the exact erf GELU), Hugging Face's names.
    layer_norm_epsilon: the LayerNorm epsilon (> 0, finite; float32 in the core).
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
        0.1``); checkpoints without it load with 0. Every device drops the
        same elements.
    device: ``"cpu"``. ``"cuda"`` raises ``RuntimeError`` (not available in this
        build); any other name ``ValueError``.
    tokenizer: an optional :class:`fastlm.tokenizers.Tokenizer` kept with the
        model (saved in checkpoints, used for str prompts); its ``vocab_size``
        must not exceed ``vocab_size``.
    precision: ``"fp32"``, or ``"bf16"``: mixed precision as PyTorch autocast
        (float32 weights, gradients and AdamW state; every GEMM, the decode
        included, on bfloat16-rounded operands with float32 accumulation;
        LayerNorm, softmax, attention and cross-entropy in float32). ``"bf16"``
        needs the ``avx512bf16`` CPU ISA (``ValueError`` otherwise).

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
    ARCH_KEYS = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "bias", "tie_word_embeddings",
                 "activation_function", "layer_norm_epsilon")
    ARCH_DEFAULTS = _ARCH_DEFAULTS
    TIED = {"lm_head.weight": "transformer.wte.weight"}
    SIZE_AXES = {"vocab_size": ("transformer.wte.weight", 0), "n_embd": ("transformer.wte.weight", 1),
                 "block_size": ("transformer.wpe.weight", 0)}
    LAYERS = ("n_layer", r"transformer\.h\.(\d+)\..+")

    def __init__(self, vocab_size: int, *, block_size: int = 256, n_layer: int = 6, n_head: int = 6,
                 n_embd: int = 384, bias: bool = True, tie_word_embeddings: bool = True,
                 activation_function: str = "gelu_new", layer_norm_epsilon: float = 1e-5, dropout: float = 0.0,
                 seed: int = 0, device: str = "cpu", tokenizer: Optional[Tokenizer] = None,
                 precision: str = "fp32") -> None:
        dropout = self._check_option("dropout", dropout)
        self._build({"vocab_size": vocab_size, "block_size": block_size, "n_layer": n_layer, "n_head": n_head,
                     "n_embd": n_embd, "bias": bias, "tie_word_embeddings": tie_word_embeddings,
                     "activation_function": activation_function, "layer_norm_epsilon": layer_norm_epsilon},
                    seed, device, tokenizer, precision)
        self.dropout = dropout
        self._init_weights()

    def _check_arch(self, *, vocab_size: Any, block_size: Any, n_layer: Any, n_head: Any, n_embd: Any,
                    bias: Any = True, tie_word_embeddings: Any = True, activation_function: Any = "gelu_new",
                    layer_norm_epsilon: Any = 1e-5) -> Dict[str, Any]:
        arch = {"vocab_size": _check_int(vocab_size, "vocab_size", 1, MAX_SIZE),
                "block_size": _check_int(block_size, "block_size", 1, MAX_SIZE),
                "n_layer": _check_int(n_layer, "n_layer", 1, MAX_SIZE),
                "n_head": _check_int(n_head, "n_head", 1, MAX_SIZE),
                "n_embd": _check_int(n_embd, "n_embd", 1, MAX_SIZE)}
        if arch["n_embd"] % arch["n_head"]:
            raise ValueError(f"n_embd ({arch['n_embd']}) must be divisible by n_head ({arch['n_head']})")
        for name, v in (("bias", bias), ("tie_word_embeddings", tie_word_embeddings)):
            if not isinstance(v, (bool, np.bool_)):
                raise TypeError(f"{name} must be a bool, got {type(v).__name__}")
            arch[name] = bool(v)
        if not isinstance(activation_function, str) or activation_function not in ACTIVATIONS:
            raise ValueError(f"activation_function must be one of {ACTIVATIONS}, got {activation_function!r}")
        arch["activation_function"] = activation_function
        if isinstance(layer_norm_epsilon, (bool, np.bool_)) or not isinstance(layer_norm_epsilon,
                                                                             (int, float, np.floating)):
            raise TypeError(f"layer_norm_epsilon must be a float, got {type(layer_norm_epsilon).__name__}")
        eps = float(layer_norm_epsilon)
        # float32 in the core: below its smallest normal it would be a denormal or 0.
        if not (np.finfo(np.float32).tiny <= eps <= 1.0):
            raise ValueError(f"layer_norm_epsilon must be in [1.2e-38, 1], got {layer_norm_epsilon!r}")
        arch["layer_norm_epsilon"] = eps
        return arch

    def _forward_backward(self, x: np.ndarray, y: np.ndarray, grad_scale: float, carry: bool) -> float:
        if self.dropout == 0.0:
            return super()._forward_backward(x, y, grad_scale, carry)
        with self._lock:
            self._cache_owner = None
            return float(self._g.forward_backward(x, y, grad_scale, self.dropout, self._next_dropout_seed()))

    def _make_core(self, arch: Dict[str, Any]) -> Any:
        if not arch["tie_word_embeddings"]:
            self.TIED = {}  # lm_head.weight is a parameter of its own
        return _C.GPT(arch["vocab_size"], arch["block_size"], arch["n_layer"], arch["n_head"], arch["n_embd"],
                      bias=arch["bias"], tie_word_embeddings=arch["tie_word_embeddings"],
                      activation=arch["activation_function"], layer_norm_epsilon=arch["layer_norm_epsilon"],
                      precision=self._config["precision"], device=self._config["device"])

    def _param_names(self, arch: Dict[str, Any]) -> List[str]:
        return param_names(arch["n_layer"], bias=arch["bias"], tie_word_embeddings=arch["tie_word_embeddings"])

    def _init_weights(self) -> None:
        n_layer = self._config["n_layer"]
        rng = np.random.default_rng(self._config["seed"])
        std = np.float32(0.02)
        proj_std = np.float32(0.02 / math.sqrt(2 * n_layer))
        init = {}
        for name in self._names:
            shape = self._shapes[name]
            if name.endswith(_LN_WEIGHTS):
                init[name] = np.ones(shape, np.float32)
            elif name.endswith(".bias"):
                init[name] = np.zeros(shape, np.float32)
            else:
                s = proj_std if name.endswith(".c_proj.weight") else std
                init[name] = rng.standard_normal(shape, dtype=np.float32) * s
        self._tensors.write("params", init)

    @property
    def block_size(self) -> int:
        """Longest context in tokens."""
        return self._config["block_size"]

    def num_parameters(self, *, exclude_embeddings: bool = False) -> int:
        """Number of parameters, counting the tied embedding/output head once.
        ``exclude_embeddings`` leaves out ``wte`` and ``wpe``."""
        n = super().num_parameters()
        if exclude_embeddings:
            n -= math.prod(self._shapes["transformer.wte.weight"]) + math.prod(self._shapes["transformer.wpe.weight"])
        return n

    def _flops_per_token(self, block_size: int) -> float:
        # nanoGPT's estimate_mfu: 6 per weight but the position embedding (a
        # lookup), plus the attention's 12 n_layer n_embd T.
        c = self._config
        n = self.num_parameters() - math.prod(self._shapes["transformer.wpe.weight"])
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

    def _decoder(self, ids: np.ndarray, lengths: Optional[np.ndarray] = None) -> "_KVCacheDecoder":
        return _KVCacheDecoder(self, ids, lengths)

    # -- Hugging Face GPT-2 directories (fastlm.hf)

    @classmethod
    def from_pretrained(cls, path: "hf.PathLike", *, device: str = "cpu",
                        tokenizer: Optional[Tokenizer] = None) -> "Transformer":
        """Load a local Hugging Face GPT-2 directory (``config.json`` +
        ``model.safetensors``, as ``GPT2LMHeadModel.save_pretrained`` writes).

        The config maps to this class's arguments (``n_positions`` ->
        ``block_size``; ``activation_function``, ``layer_norm_epsilon``,
        ``tie_word_embeddings`` as they are) and the Conv1D weights are
        transposed. ``tokenizer`` defaults to the directory's BPE tokenizer when
        it has one. Never downloads. Raises ``FileNotFoundError`` or
        ``ValueError`` naming the file and field (see :func:`fastlm.hf.read_pretrained`);
        nothing is built until everything has been checked.
        """
        args, sd = hf.read_pretrained(path)
        if tokenizer is None:
            tokenizer = hf.load_pretrained_tokenizer(path)
            if tokenizer is not None and tokenizer.vocab_size > args["vocab_size"]:
                raise ValueError(f"{str(path)!r}: the tokenizer files' vocab_size {tokenizer.vocab_size} exceeds "
                                 f"config.json's vocab_size {args['vocab_size']}")
        model = cls(**args, device=device, tokenizer=tokenizer)
        try:
            model.load_state_dict(sd)
        except ValueError as e:  # NaN or inf in the weights
            raise ValueError(f"{str(path)!r}: {e}") from None
        return model

    def save_pretrained(self, path: "hf.PathLike") -> None:
        """Write a directory that ``transformers.GPT2LMHeadModel.from_pretrained``
        loads (and :meth:`from_pretrained` reads back bit for bit): ``config.json``
        and ``model.safetensors`` in Hugging Face's names and Conv1D layout. A
        bias-free model is written with zero biases. The tokenizer is saved too
        when it can write Hugging Face files (a ``save_pretrained`` method, as
        BPE tokenizers have); character and byte tokenizers are not.
        """
        tok = self.tokenizer
        hf.write_pretrained(path, self._config, self.state_dict(), eos_token_id=getattr(tok, "eos_token_id", None))
        if tok is not None and hasattr(tok, "save_pretrained"):
            tok.save_pretrained(path, model_max_length=self.block_size)


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

    Prompts of different lengths (``lengths``; rows right-padded in ``ids``)
    share one prefill: attention is causal, so a row's positions never see the
    padding after them, and each row's logits are read at its own last
    position. Each step then runs every row at its own position
    (``decode_rows``: the GEMMs batched, attention per row over its own cache
    length), writing over the padding's cache entries before they could be
    read. Each row so computes what its prompt alone would.
    """

    def __init__(self, model: Transformer, ids: np.ndarray, lengths: Optional[np.ndarray] = None) -> None:
        self.model = model
        S = model.block_size
        n = np.full(ids.shape[0], ids.shape[1], np.int64) if lengths is None else np.asarray(lengths, np.int64)
        # Each row's window (its last block_size tokens), right-padded to block_size.
        self.lens = np.minimum(n, S)
        self.buf = np.zeros((ids.shape[0], S), np.int64)
        for i, (end, w) in enumerate(zip(n, self.lens)):
            self.buf[i, :w] = ids[i, end - w:end]
        self.rows = np.arange(ids.shape[0])
        self._prefill()

    def _prefill(self) -> None:
        self.width = int(self.lens.max())  # a Python int: the check per token stays cheap
        self.uniform = self.width == int(self.lens.min())
        last = None if self.uniform else self.lens - 1
        with self.model._lock:
            self.logits = self.model._g.decode(np.ascontiguousarray(self.buf[:, :self.width]), 0, last)
            self.model._cache_owner = self

    def run(self, loop: Any, n: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
        """Up to ``n`` steps of the C++ decode loop ``loop`` (``_C.DecodeLoop``)
        on this cache: its pending tokens are fed here (``push``) when the
        window is full or another call used the cache, every other token in
        C++. Returns its (tokens, logprobs, live) chunk, each (B, k), and
        whether it stopped at non-finite logits."""
        S = self.model.block_size
        with self.model._lock:
            pending = loop.pending
            if pending is not None and not (self.model._cache_owner is self and self.width < S):
                self.push(pending)
                loop.set_logits(np.ascontiguousarray(self.logits))
            pos = np.full(len(self.lens), self.width, np.int64) if self.uniform else self.lens
            tok, lp, live, pushed, bad = loop.run_gpt(self.model._g, n, pos, not self.uniform,
                                                      self.model._cache_owner is self)
            p = pushed.shape[1]
            if p:  # the cache now holds positions [0, width + p) (or [0, lens + p) per row)
                if self.uniform:
                    self.buf[:, self.width:self.width + p] = pushed
                else:
                    self.buf[self.rows[:, None], self.lens[:, None] + np.arange(p)] = pushed
                    self.lens += p
                self.width += p
        return tok, lp, live, bad

    def push(self, tokens: np.ndarray) -> None:
        S = self.model.block_size
        lens = self.lens
        with self.model._lock:
            if self.model._cache_owner is self and self.width < S:
                # The cache holds each row's positions [0, lens); the new token goes at lens.
                if self.uniform:
                    self.logits = self.model._g.decode(np.ascontiguousarray(tokens[:, None]), self.width)
                    self.buf[:, self.width] = tokens
                else:
                    self.logits = self.model._g.decode_rows(tokens, lens)
                    self.buf[self.rows, lens] = tokens
                    lens += 1
                self.width += 1
                return
        if self.uniform:  # lens is not kept up to date on that path
            lens[:] = self.width
        # A window is full (positions shift) or another call used the cache
        # since: full windows drop their oldest token, and the prefill runs
        # over every window.
        full = lens == S
        if full.any():
            self.buf[full, :-1] = self.buf[full, 1:]
        self.buf[self.rows, lens - full] = tokens
        lens += ~full
        self._prefill()

"""``fastlm.LSTMLM`` and ``fastlm.GRULM``: the classic recurrent language model.

Embedding -> ``num_layers`` LSTM or GRU layers (batch first) -> Linear head,
exactly the PyTorch module every tutorial writes::

    class RNNLM(nn.Module):
        def __init__(self):
            self.embedding = nn.Embedding(vocab_size, embed_dim)
            self.rnn = nn.LSTM(embed_dim, hidden_size, num_layers, batch_first=True)  # or nn.GRU
            self.fc = nn.Linear(hidden_size, vocab_size)

so ``state_dict`` names and layouts (gate order LSTM i, f, g, o; GRU r, z, n)
move to and from PyTorch unchanged. Training and sampling run in C++
(``fastlm._C.RNNLM``): the input projection of a whole sequence is one GEMM,
each time step one GEMM plus one fused cell kernel; backpropagation runs
through the whole window. The recurrent state can be carried across
consecutive windows (``fit(..., stateful=True)``), and generation carries it
from token to token, O(1) work per new token.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from . import _C
from ._checks import MAX_SIZE, check_bool, check_int as _check_int
from .lm import LanguageModel
from .tokenizers import Tokenizer

__all__ = ["LSTMLM", "GRULM", "RecurrentLM"]


class RecurrentLM(LanguageModel):
    """Shared by :class:`LSTMLM` and :class:`GRULM`.

    Parameters
    ----------
    vocab_size: number of token ids (>= 1).
    embed_dim, hidden_size, num_layers: sizes of the embedding, of each
        recurrent layer's state, and the number of stacked layers (all >= 1).
    seed: seeds the initialisation (``np.random.default_rng(seed)``), as
        PyTorch's: every recurrent weight and bias uniform(-k, k) with
        k = 1/sqrt(hidden_size), the embedding normal(0, 1), the head's weight
        and bias uniform(-1/sqrt(hidden_size), 1/sqrt(hidden_size)). Also the
        default seed of :meth:`fit`'s batch sampler.
    dropout: probability in [0, 1) of dropping, while training, each output
        of every recurrent layer but the last, as ``nn.LSTM(dropout=...)``
        (no effect with one layer); reproducible and kept in ``config.json``
        as :class:`fastlm.Transformer`'s.
    device: ``"cpu"`` (see :class:`fastlm.Transformer`).
    tokenizer: optional, as for :class:`fastlm.Transformer`.
    precision: ``"fp32"`` or ``"bf16"`` (every GEMM, the per-step recurrent one
        included, on bfloat16 operands; cells, loss and Adam in float32), as for
        :class:`fastlm.Transformer`.

    Ids are integer arrays (B, T) of any length T >= 1; logits float32
    (B, T, vocab_size). :meth:`step` defaults to Adam (betas (0.9, 0.999),
    no weight decay), as ``torch.optim.Adam``; ``optimizer="adamw"`` or
    ``"sgd"`` (with ``momentum``) choose the others.
    """

    CELL = ""
    ARCH_KEYS = ("vocab_size", "embed_dim", "hidden_size", "num_layers")
    SIZE_AXES = {"vocab_size": ("embedding.weight", 0), "embed_dim": ("embedding.weight", 1),
                 "hidden_size": ("rnn.weight_hh_l0", 1)}
    LAYERS = ("num_layers", r"rnn\.\w+_l(\d+)")
    DEFAULT_STEP = {"optimizer": "adam", "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0,
                    "momentum": 0.9}
    STATEFUL = True
    DEFAULT_WINDOW = 64

    def __init__(self, vocab_size: int, *, embed_dim: int = 128, hidden_size: int = 256, num_layers: int = 2,
                 dropout: float = 0.0, seed: int = 0, device: str = "cpu",
                 tokenizer: Optional[Tokenizer] = None, precision: str = "fp32") -> None:
        dropout = self._check_option("dropout", dropout)
        self._build({"vocab_size": vocab_size, "embed_dim": embed_dim, "hidden_size": hidden_size,
                     "num_layers": num_layers}, seed, device, tokenizer, precision)
        self.dropout = dropout
        self._init_weights()

    def _check_arch(self, **arch: Any) -> Dict[str, Any]:
        return {k: _check_int(arch[k], k, 1, MAX_SIZE) for k in self.ARCH_KEYS}

    def _make_core(self, arch: Dict[str, Any]) -> Any:
        return _C.RNNLM(self.CELL, arch["vocab_size"], arch["embed_dim"], arch["hidden_size"],
                        arch["num_layers"], precision=self._config["precision"], device=self._config["device"])

    def _param_names(self, arch: Dict[str, Any]) -> List[str]:
        names = ["embedding.weight"]
        for k in range(arch["num_layers"]):
            names += [f"rnn.weight_ih_l{k}", f"rnn.weight_hh_l{k}", f"rnn.bias_ih_l{k}", f"rnn.bias_hh_l{k}"]
        return names + ["fc.weight", "fc.bias"]

    def _init_weights(self) -> None:
        rng = np.random.default_rng(self._config["seed"])
        k = np.float32(1.0 / math.sqrt(self._config["hidden_size"]))
        init = {}
        for name in self._names:
            shape = self._shapes[name]
            if name == "embedding.weight":
                init[name] = rng.standard_normal(shape, dtype=np.float32)
            else:
                init[name] = rng.uniform(-k, k, shape).astype(np.float32)
        self._tensors.write("params", init)

    def _train_window(self, block_size: Optional[int]) -> int:
        return self.DEFAULT_WINDOW if block_size is None else _check_int(block_size, "block_size", 1)

    # The state the last training window left, (h, c), kept apart from the
    # core's (which forward and generate replace): a stateful fit's next
    # window starts from it and a checkpoint saves it.
    _carried: Optional[Tuple[np.ndarray, Optional[np.ndarray]]] = None

    def _forward_backward(self, x: np.ndarray, y: np.ndarray, grad_scale: float, carry: bool) -> float:
        with self._lock:
            self._cache_owner = None
            if carry and self._carried is not None:
                self._g.set_state(*self._carried)
            if self.dropout == 0.0:
                loss = float(self._g.forward_backward(x, y, carry, grad_scale))
            else:
                loss = float(self._g.forward_backward(x, y, carry, grad_scale, self.dropout,
                                                      self._next_dropout_seed()))
            self._carried = self._g.state()
            return loss

    def forward(self, idx: Any, *, carry: bool = False) -> np.ndarray:
        """Logits (B, T, vocab_size) float32 for ids (B, T). With ``carry`` the
        recurrence starts from the state the previous call left (when the
        batch size matches), otherwise from zeros; the final state is kept
        (:meth:`state`)."""
        x = self._ids(idx)
        carry = check_bool(carry, "forward: carry")
        with self._lock:
            self._cache_owner = None
            return self._g.forward(x, carry)

    def state(self) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
        """Copies of the final recurrent state of the last call: ``(h, c)``,
        each (num_layers, B, hidden_size) float32 as PyTorch returns them;
        ``c`` is None for a GRU; both None before any call."""
        return self._g.state()

    def _optimizer_state(self) -> Dict[str, Any]:
        opt = super()._optimizer_state()
        fit_args = (self._train_state or {}).get("fit", {})
        if fit_args.get("stateful") and self._carried is not None:  # the next window starts from it
            h, c = self._carried
            opt["recurrent_state"] = {"h": h} if c is None else {"h": h, "c": c}
        return opt

    def _restore_optimizer_extras(self, opt: Dict[str, Any]) -> None:
        st = opt.get("recurrent_state") or {}
        if "h" in st:
            try:
                self._g.set_state(np.ascontiguousarray(st["h"]), st.get("c"))
            except (TypeError, ValueError) as e:
                raise ValueError(f"optimizer state: bad recurrent_state ({e})") from None
            self._carried = self._g.state()
        else:
            self._g.reset_state()
            self._carried = None

    def _decoder(self, ids: np.ndarray, lengths: Optional[np.ndarray] = None) -> "_RecurrentDecoder":
        return _RecurrentDecoder(self, ids, lengths)


class LSTMLM(RecurrentLM):
    __doc__ = "An LSTM language model (PyTorch ``nn.LSTM`` layout, gates i, f, g, o).\n" + \
        (RecurrentLM.__doc__ or "").split("\n", 1)[1]
    MODEL_TYPE = "lstm"
    CELL = "lstm"


class GRULM(RecurrentLM):
    __doc__ = "A GRU language model (PyTorch ``nn.GRU`` layout, gates r, z, n).\n" + \
        (RecurrentLM.__doc__ or "").split("\n", 1)[1]
    MODEL_TYPE = "gru"
    CELL = "gru"


class _RecurrentDecoder:
    """Decoding with the carried recurrent state: the prompt runs once, then
    each new token is one step of every layer, O(1) in the length so far.

    Prompts of different lengths (``lengths``, rows right-padded in ``ids``)
    run as one batch per length, so no row's state sees padding; their final
    states are then joined and every step runs the whole batch."""

    def __init__(self, model: RecurrentLM, ids: np.ndarray, lengths: Optional[np.ndarray] = None) -> None:
        self.model = model
        self.seq = np.ascontiguousarray(ids)
        self.lengths = None if lengths is None else np.array(lengths, dtype=np.int64)
        self._prefill()

    def _prefill(self) -> None:
        with self.model._lock:
            g = self.model._g
            if self.lengths is None:
                self.logits = g.decode(self.seq, False)
            else:
                parts = []
                for n in np.unique(self.lengths):
                    rows = np.flatnonzero(self.lengths == n)
                    parts.append((rows, g.decode(np.ascontiguousarray(self.seq[rows, :n]), False), g.state()))
                order = np.argsort(np.concatenate([rows for rows, _, _ in parts]), kind="stable")
                self.logits = np.concatenate([lg for _, lg, _ in parts])[order]
                h = np.concatenate([st[0] for _, _, st in parts], axis=1)[:, order]
                c = None if parts[0][2][1] is None else np.concatenate([st[1] for _, _, st in parts], axis=1)[:, order]
                g.set_state(np.ascontiguousarray(h), None if c is None else np.ascontiguousarray(c))
            self.model._cache_owner = self

    def _append(self, tokens: np.ndarray) -> None:
        """Add tokens (B, p) to the sequences (kept for a prefill again)."""
        p = tokens.shape[1]
        if self.lengths is None:
            self.seq = np.concatenate([self.seq, tokens], axis=1)
        else:  # each row's tokens go after its own last one
            self.seq = np.concatenate([self.seq, np.zeros_like(tokens)], axis=1)
            self.seq[np.arange(len(tokens))[:, None], self.lengths[:, None] + np.arange(p)] = tokens
            self.lengths += p

    def run(self, loop: Any, n: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
        """Up to ``n`` steps of the C++ decode loop ``loop`` (``_C.DecodeLoop``)
        on the carried state (its pending tokens fed here by ``push`` when
        another call replaced the state). Returns its (tokens, logprobs, live)
        chunk, each (B, k), and whether it stopped at non-finite logits."""
        with self.model._lock:
            pending = loop.pending
            if pending is not None and self.model._cache_owner is not self:
                self.push(pending)
                loop.set_logits(np.ascontiguousarray(self.logits))
            tok, lp, live, pushed, bad = loop.run_rnn(self.model._g, n, self.model._cache_owner is self)
            if pushed.shape[1]:
                self._append(pushed)
        return tok, lp, live, bad

    def push(self, tokens: np.ndarray) -> None:
        self._append(tokens[:, None])
        with self.model._lock:
            if self.model._cache_owner is self:
                self.logits = self.model._g.decode(np.ascontiguousarray(tokens[:, None]), True)
            else:  # another call replaced the state: run the whole sequence again
                self._prefill()

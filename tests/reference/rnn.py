"""Independent references for fastlm's recurrent language models
(:class:`fastlm.LSTMLM`, :class:`fastlm.GRULM`): the tutorial PyTorch module

    embedding = nn.Embedding(V, E)
    rnn = nn.LSTM(E, H, L, batch_first=True)   # or nn.GRU
    fc = nn.Linear(H, V)

written twice:

* :func:`np_forward_backward`: plain NumPy in any float dtype (float64 for the
  reference, float32 for the "naive float32" error baseline), forward with an
  optional initial state and full backpropagation through time, gradients
  named as PyTorch's ``state_dict``, for the mean cross-entropy with
  ``ignore_index=-100``. PyTorch's gate orders and formulas:

  LSTM (i, f, g, o): i, f, o = sigmoid, g = tanh of
      x W_ih^T + b_ih + h W_hh^T + b_hh;  c' = f c + i g;  h' = o tanh(c')
  GRU (r, z, n): r, z = sigmoid(x W_ih^T + b_ih + h W_hh^T + b_hh) of their rows,
      n = tanh(W_in x + b_in + r * (W_hn h + b_hn)),  h' = (1 - z) n + z h

* :func:`make_torch_rnn`: the ``torch.nn.Module`` itself (when torch imports),
  built from a state dict.

Also the optimizers as PyTorch defines them (:func:`np_adam_step`,
:func:`np_sgd_step`), in place on float64 parameter dicts.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import numpy as np

from .train import cross_entropy_ref, decay_mask, np_adamw_step

GATES = {"lstm": 4, "gru": 3}


# ----------------------------------------------------------------------- names

def param_names(num_layers: int) -> List[str]:
    """PyTorch's state_dict order for the module above."""
    names = ["embedding.weight"]
    for k in range(num_layers):
        names += [f"rnn.weight_ih_l{k}", f"rnn.weight_hh_l{k}", f"rnn.bias_ih_l{k}", f"rnn.bias_hh_l{k}"]
    return names + ["fc.weight", "fc.bias"]


def param_shapes(cell: str, vocab_size: int, embed_dim: int, hidden_size: int,
                 num_layers: int) -> Dict[str, Tuple[int, ...]]:
    G = GATES[cell] * hidden_size
    shapes: Dict[str, Tuple[int, ...]] = {"embedding.weight": (vocab_size, embed_dim)}
    for k in range(num_layers):
        shapes[f"rnn.weight_ih_l{k}"] = (G, embed_dim if k == 0 else hidden_size)
        shapes[f"rnn.weight_hh_l{k}"] = (G, hidden_size)
        shapes[f"rnn.bias_ih_l{k}"] = (G,)
        shapes[f"rnn.bias_hh_l{k}"] = (G,)
    shapes["fc.weight"] = (vocab_size, hidden_size)
    shapes["fc.bias"] = (vocab_size,)
    return shapes


def random_state_dict(cell: str, vocab_size: int, embed_dim: int, hidden_size: int, num_layers: int,
                      seed: int = 0, scale: float = 0.5) -> Dict[str, np.ndarray]:
    """float32 weights a bit larger than PyTorch's init (so that the gates
    saturate in places and every path carries gradient); biases non-zero."""
    rng = np.random.default_rng(seed)
    sd: Dict[str, np.ndarray] = {}
    for name, shape in param_shapes(cell, vocab_size, embed_dim, hidden_size, num_layers).items():
        if name == "embedding.weight":
            a = rng.standard_normal(shape)
        else:
            fan_in = shape[1] if len(shape) == 2 else hidden_size
            a = rng.uniform(-1, 1, shape) * (scale * 2.0 / math.sqrt(max(fan_in, 1)) + 0.1)
        sd[name] = a.astype(np.float32)
    return sd


# ----------------------------------------------------------------------- NumPy

def _sigmoid(x):
    one = x.dtype.type(1)
    return one / (one + np.exp(-x))


def _infer(sd) -> Tuple[str, int, int, int, int]:
    V, E = sd["embedding.weight"].shape
    L = sum(1 for k in sd if k.startswith("rnn.weight_ih_l"))
    H = sd["rnn.weight_hh_l0"].shape[1]
    G = sd["rnn.weight_hh_l0"].shape[0] // H
    cell = {4: "lstm", 3: "gru"}[G]
    return cell, V, E, H, L


def np_forward_backward(sd: Dict[str, np.ndarray], idx: np.ndarray, targets: Optional[np.ndarray] = None,
                        h0: Optional[np.ndarray] = None, c0: Optional[np.ndarray] = None, dtype=np.float64,
                        drop: Optional[List[np.ndarray]] = None):
    """Forward (and, with targets, backward) of the Embedding -> LSTM/GRU -> Linear LM.

    sd: state dict by PyTorch name (the cell is read from the gate count);
    idx, targets: (B, T) integer, batch first, targets == -100 ignored;
    h0, c0: optional initial states (L, B, H) (c0 LSTM only; zeros if None).
    Returns (logits (B, T, V), loss or None, grads or None, (h_T, c_T)) with
    h_T, c_T (L, B, H) as ``nn.LSTM`` returns them (c_T None for a GRU).
    The gradients (the full BPTT of the mean loss over the non-ignored
    targets) are named as the state dict; the initial state is a constant.
    drop: dropout factors (keep / (1 - p) or 0), one (B, T, H) array per layer
    but the last, applied to that layer's outputs as ``nn.LSTM(dropout=p)``.
    """
    cell, V, E, H, L = _infer(sd)
    lstm = cell == "lstm"
    p = {k: np.asarray(v, dtype=dtype) for k, v in sd.items()}
    idx = np.asarray(idx)
    B, T = idx.shape
    one = dtype(1)
    h_init = np.zeros((L, B, H), dtype) if h0 is None else np.asarray(h0, dtype)
    c_init = np.zeros((L, B, H), dtype) if c0 is None else np.asarray(c0, dtype)

    x = p["embedding.weight"][idx]  # (B, T, E)
    caches = []
    hT, cT = [], []
    for l in range(L):
        Wih, Whh = p[f"rnn.weight_ih_l{l}"], p[f"rnn.weight_hh_l{l}"]
        bih, bhh = p[f"rnn.bias_ih_l{l}"], p[f"rnn.bias_hh_l{l}"]
        h = h_init[l]
        c = c_init[l]
        hs = [h]
        cs = [c]
        acts = []
        for t in range(T):
            gi = x[:, t] @ Wih.T + bih
            gh = h @ Whh.T + bhh
            if lstm:
                pre = gi + gh
                i = _sigmoid(pre[:, :H])
                f = _sigmoid(pre[:, H:2 * H])
                g = np.tanh(pre[:, 2 * H:3 * H])
                o = _sigmoid(pre[:, 3 * H:])
                c = f * c + i * g
                tc = np.tanh(c)
                h = o * tc
                acts.append((i, f, g, o, tc))
            else:
                r = _sigmoid(gi[:, :H] + gh[:, :H])
                z = _sigmoid(gi[:, H:2 * H] + gh[:, H:2 * H])
                ghn = gh[:, 2 * H:]
                n = np.tanh(gi[:, 2 * H:] + r * ghn)
                h = (one - z) * n + z * h
                acts.append((r, z, n, ghn))
            hs.append(h)
            cs.append(c)
        caches.append((x, hs, cs, acts))
        x = np.stack(hs[1:], axis=1)  # (B, T, H)
        if drop is not None and l < L - 1:
            x = x * np.asarray(drop[l], dtype)
        hT.append(h)
        cT.append(c)
    top = x
    logits = top @ p["fc.weight"].T + p["fc.bias"]
    state = (np.stack(hT), np.stack(cT) if lstm else None)
    if targets is None:
        return logits, None, None, state

    loss, dlogits = cross_entropy_ref(logits, targets, dtype)

    grads = {k: np.zeros_like(v) for k, v in p.items()}
    grads["fc.weight"] += dlogits.reshape(-1, V).T @ top.reshape(-1, H)
    grads["fc.bias"] += dlogits.reshape(-1, V).sum(0)
    dout = dlogits @ p["fc.weight"]  # (B, T, H): gradient of the top layer's outputs
    for l in reversed(range(L)):
        xin, hs, cs, acts = caches[l]
        Wih, Whh = p[f"rnn.weight_ih_l{l}"], p[f"rnn.weight_hh_l{l}"]
        dx = np.zeros_like(xin)
        dh = np.zeros((B, H), dtype)
        dc = np.zeros((B, H), dtype)
        for t in reversed(range(T)):
            dh = dh + dout[:, t]
            hp = hs[t]
            if lstm:
                i, f, g, o, tc = acts[t]
                do = dh * tc
                dct = dc + dh * o * (one - tc * tc)
                di, dg, df = dct * g, dct * i, dct * cs[t]
                dc = dct * f
                dpre = np.concatenate([di * i * (one - i), df * f * (one - f), dg * (one - g * g),
                                       do * o * (one - o)], axis=1)
                dgi = dgh = dpre
            else:
                r, z, n, ghn = acts[t]
                dn = dh * (one - z) * (one - n * n)
                dz = dh * (hp - n) * z * (one - z)
                dr = dn * ghn * r * (one - r)
                dgi = np.concatenate([dr, dz, dn], axis=1)
                dgh = np.concatenate([dr, dz, dn * r], axis=1)
            grads[f"rnn.weight_ih_l{l}"] += dgi.T @ xin[:, t]
            grads[f"rnn.bias_ih_l{l}"] += dgi.sum(0)
            grads[f"rnn.weight_hh_l{l}"] += dgh.T @ hp
            grads[f"rnn.bias_hh_l{l}"] += dgh.sum(0)
            dx[:, t] = dgi @ Wih
            dh_prev = dgh @ Whh
            if not lstm:
                dh_prev = dh_prev + dh * acts[t][1]
            dh = dh_prev
        dout = dx if drop is None or l == 0 else dx * np.asarray(drop[l - 1], dtype)
    np.add.at(grads["embedding.weight"], idx.reshape(-1), dout.reshape(-1, E))
    return logits, loss, grads, state


# ------------------------------------------------------------------ optimizers

def np_adam_step(params: Dict[str, np.ndarray], grads: Dict[str, np.ndarray], state: Dict[str, list], step: int,
                 lr: float, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0) -> None:
    """``torch.optim.Adam`` defaults (``AdamW`` when weight_decay > 0)."""
    np_adamw_step(params, grads, state, step, lr, betas, eps, weight_decay)


def np_sgd_step(params: Dict[str, np.ndarray], grads: Dict[str, np.ndarray], bufs: Dict[str, np.ndarray],
                lr: float, momentum: float = 0.9, weight_decay: float = 0.0) -> None:
    """``torch.optim.SGD(momentum=...)`` in place (no dampening, not Nesterov),
    L2 decay added to the gradient of 2-D tensors only."""
    for name, w in params.items():
        g = grads[name]
        if weight_decay and decay_mask(w.shape):
            g = g + weight_decay * w
        if name in bufs:
            bufs[name] = momentum * bufs[name] + g
        else:
            bufs[name] = g.copy()
        w -= lr * bufs[name]


# ----------------------------------------------------------------------- torch

def make_torch_rnn(sd: Dict[str, np.ndarray], dtype: str = "float64"):
    """The PyTorch module (``embedding``, ``rnn`` batch first, ``fc``) loaded
    with ``sd`` (torch must import). ``model(idx, targets=None, state=None)``
    returns (logits, loss or None, final state as nn.LSTM/nn.GRU return it);
    ``state`` is (h0, c0) for an LSTM, h0 for a GRU."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    cell, V, E, H, L = _infer(sd)
    tdtype = getattr(torch, dtype)

    class RNNLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(V, E)
            rnn_cls = nn.LSTM if cell == "lstm" else nn.GRU
            self.rnn = rnn_cls(E, H, num_layers=L, batch_first=True)
            self.fc = nn.Linear(H, V)

        def forward(self, idx, targets=None, state=None):
            out, new_state = self.rnn(self.embedding(idx), state)
            logits = self.fc(out)
            loss = None
            if targets is not None:
                loss = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), ignore_index=-100)
            return logits, loss, new_state

    model = RNNLM().to(tdtype)
    model.load_state_dict({k: torch.from_numpy(np.array(v, dtype=np.float64)).to(tdtype) for k, v in sd.items()})
    return model


def torch_grads(model) -> Dict[str, np.ndarray]:
    """Gradients of a :func:`make_torch_rnn` module by name, float64 NumPy."""
    return {name: p.grad.detach().double().numpy().copy() for name, p in model.named_parameters()}


def torch_param_groups(model, weight_decay: float):
    """Decay on the 2-D weights only (what fastlm's AdamW/SGD do)."""
    params = list(model.parameters())
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]

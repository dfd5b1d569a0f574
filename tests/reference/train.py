"""What the model references (reference/gpt.py, reference/rnn.py)
share: the mean cross-entropy with ignore_index -100 and its gradient, and
torch.optim.AdamW, in NumPy."""
import math
from typing import Dict, Tuple

import numpy as np


def cross_entropy_ref(logits: np.ndarray, targets: np.ndarray, dtype=np.float64):
    """logits (..., V), targets (...) -> (mean loss over targets != -100 (NaN if
    none), dlogits shaped like logits in ``dtype``)."""
    V = logits.shape[-1]
    tflat = np.asarray(targets).reshape(-1)
    lflat = logits.reshape(-1, V)
    valid = tflat != -100
    n = int(valid.sum())
    m = lflat.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(lflat - m).sum(-1, keepdims=True)))[:, 0]
    safe_t = np.where(valid, tflat, 0)
    rows = np.arange(lflat.shape[0])
    nll = lse - lflat[rows, safe_t]
    loss = float(nll[valid].sum() / n) if n else float("nan")
    probs = np.exp(lflat - lse[:, None])
    probs[rows, safe_t] -= 1
    dlogits = np.where(valid[:, None], probs / dtype(max(n, 1)), dtype(0)).astype(dtype)
    return loss, dlogits.reshape(logits.shape)


def decay_mask(shape: Tuple[int, ...]) -> bool:
    """nanoGPT's optimizer groups: weight decay on every tensor with >= 2 dims."""
    return len(shape) >= 2


def np_adamw_step(params: Dict[str, np.ndarray], grads: Dict[str, np.ndarray], state: Dict[str, list],
                  step: int, lr: float, betas: Tuple[float, float], eps: float, weight_decay: float) -> None:
    """One ``torch.optim.AdamW`` update in place on float64 ``params`` (Adam when
    weight_decay is 0), decay on 2-D tensors only. ``state`` maps name -> [m, v];
    ``step`` counts this update (>= 1)."""
    b1, b2 = betas
    for name, w in params.items():
        g = grads[name]
        m, v = state.setdefault(name, [np.zeros_like(w), np.zeros_like(w)])
        if decay_mask(w.shape):
            w *= 1.0 - lr * weight_decay
        m *= b1
        m += (1 - b1) * g
        v *= b2
        v += (1 - b2) * g * g
        denom = np.sqrt(v) / math.sqrt(1 - b2 ** step) + eps
        w -= (lr / (1 - b1 ** step)) * m / denom

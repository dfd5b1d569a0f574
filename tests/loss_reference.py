"""Mean cross-entropy with ignore_index -100 and its gradient, in NumPy, for the
model references (tests/gpt_reference.py, tests/rnn_reference.py)."""
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

"""The kernels on NumPy arrays, or on GPU arrays.

Every op takes C-contiguous ``float32`` arrays (ids as ``int32``/``int64``),
checks them where they enter (``TypeError`` for a wrong type or dtype,
``ValueError`` for a wrong shape, layout or value, naming the argument),
releases the GIL and runs the active CPU kernel table (see
``fastlm.cpu_isa()``). Outputs are new arrays unless stated otherwise.

Given device arrays instead (``fastlm.DeviceArray``, or objects exporting
``__cuda_array_interface__`` such as CuPy arrays and PyTorch CUDA tensors),
an op runs the CUDA kernels and returns ``fastlm.DeviceArray`` outputs, with
no copy to the host (the loss of :func:`cross_entropy` is the one value that
comes back). ``matmul`` and ``attention`` (and its backward) also take
bfloat16 device arrays, computing in float32 on tensor cores. Mixing host
and device arrays in one call raises ``ValueError``; device arrays without a
usable GPU raise ``RuntimeError``. See :mod:`fastlm.cuda`.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from . import _C
from .cuda import device_args as _device_args

__all__ = [
    "matmul",
    "softmax",
    "softmax_backward",
    "layernorm",
    "layernorm_backward",
    "gelu",
    "gelu_backward",
    "attention",
    "attention_backward",
    "cross_entropy",
    "lstm_cell",
    "lstm_cell_backward",
    "gru_cell",
    "gru_cell_backward",
    "adamw_step",
]


def matmul(a: np.ndarray, b: np.ndarray, *, trans_a: bool = False, trans_b: bool = False,
           bias: Optional[np.ndarray] = None, precision: str = "highest") -> np.ndarray:
    """``op(a) @ op(b) (+ bias)``.

    a: (M, K), or (K, M) with ``trans_a``; b: (K, N), or (N, K) with ``trans_b``;
    bias: (N,) added to every row, or None. Returns c (M, N) float32.
    Transposes are read in place (no copies).

    precision: ``"highest"`` (float32 arithmetic) or ``"tf32"``, which lets
    float32 GPU operands be rounded to TF32 on tensor cores (as PyTorch's
    ``allow_tf32``); the CPU always computes in float32. bfloat16 GPU operands
    (a, b and bias all bfloat16) give a bfloat16 c, accumulated in float32.
    """
    if precision not in ("highest", "tf32"):
        raise ValueError(f"matmul: precision must be 'highest' or 'tf32', got {precision!r}")
    dev = _device_args("matmul", a=a, b=b, bias=bias)
    if dev is not None:
        return _C.cuda_matmul(dev["a"], dev["b"], bool(trans_a), bool(trans_b), dev["bias"],
                              precision)
    return _C.matmul(a, b, bool(trans_a), bool(trans_b), bias)


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis of x (any shape, float32); stable for large inputs."""
    dev = _device_args("softmax", x=x)
    if dev is not None:
        return _C.cuda_softmax(dev["x"])
    return _C.softmax(x)


def softmax_backward(dy: np.ndarray, y: np.ndarray) -> np.ndarray:
    """dx = y * (dy - sum(dy * y, last axis)), given y = softmax(x); all the same shape."""
    dev = _device_args("softmax_backward", dy=dy, y=y)
    if dev is not None:
        return _C.cuda_softmax_backward(dev["dy"], dev["y"])
    return _C.softmax_backward(dy, y)


def layernorm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray,
              eps: float = 1e-5) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LayerNorm over the last axis.

    x: (..., C); weight, bias: (C,). Returns (y, mean, rstd): y like x, and
    mean, rstd of shape x.shape[:-1] (rstd = 1/sqrt(var + eps)) for the backward.
    """
    dev = _device_args("layernorm", x=x, weight=weight, bias=bias)
    if dev is not None:
        return _C.cuda_layernorm(dev["x"], dev["weight"], dev["bias"], float(eps))
    return _C.layernorm(x, weight, bias, float(eps))


def layernorm_backward(dy: np.ndarray, x: np.ndarray, weight: np.ndarray, mean: np.ndarray,
                       rstd: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of :func:`layernorm`: returns (dx like x, dweight (C,), dbias (C,))."""
    dev = _device_args("layernorm_backward", dy=dy, x=x, weight=weight, mean=mean, rstd=rstd)
    if dev is not None:
        return _C.cuda_layernorm_backward(dev["dy"], dev["x"], dev["weight"], dev["mean"],
                                          dev["rstd"])
    return _C.layernorm_backward(dy, x, weight, mean, rstd)


def gelu(x: np.ndarray) -> np.ndarray:
    """GPT-2's tanh GELU, elementwise: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    dev = _device_args("gelu", x=x)
    if dev is not None:
        return _C.cuda_gelu(dev["x"])
    return _C.gelu(x)


def gelu_backward(dy: np.ndarray, x: np.ndarray) -> np.ndarray:
    """dx = dy * gelu'(x); dy and x of the same shape."""
    dev = _device_args("gelu_backward", dy=dy, x=x)
    if dev is not None:
        return _C.cuda_gelu_backward(dev["dy"], dev["x"])
    return _C.gelu_backward(dy, x)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, *,
              causal: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """Scaled dot-product attention, tiled with an online softmax (no T x T matrix).

    q: (B, H, T, D); k, v: (B, H, Tk, D) (Tk = T for self-attention); scale
    1/sqrt(D). With ``causal`` query i sees keys j <= i + (Tk - T).
    Returns (out (B, H, T, D), lse (B, H, T)): lse is the natural log-sum-exp of
    each row of scaled scores, kept for the backward.

    On the GPU q, k, v may be float32 or bfloat16 (out then bfloat16, lse
    float32), with D <= 128.
    """
    dev = _device_args("attention", q=q, k=k, v=v)
    if dev is not None:
        return _C.cuda_attention(dev["q"], dev["k"], dev["v"], bool(causal))
    return _C.attention(q, k, v, bool(causal))


def attention_backward(dout: np.ndarray, q: np.ndarray, k: np.ndarray, v: np.ndarray,
                       out: np.ndarray, lse: np.ndarray, *,
                       causal: bool = True) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of :func:`attention` (self-attention, all (B, H, T, D); lse (B, H, T)).

    Returns (dq, dk, dv), each (B, H, T, D).
    """
    dev = _device_args("attention_backward", dout=dout, q=q, k=k, v=v, out=out, lse=lse)
    if dev is not None:
        return _C.cuda_attention_backward(dev["dout"], dev["q"], dev["k"], dev["v"], dev["out"],
                                          dev["lse"], bool(causal))
    return _C.attention_backward(dout, q, k, v, out, lse, bool(causal))


def cross_entropy(logits: np.ndarray, targets: np.ndarray, *, ignore_index: int = -100,
                  out: Optional[np.ndarray] = None,
                  compute_grad: bool = True) -> Tuple[float, Optional[np.ndarray]]:
    """Fused softmax cross-entropy, forward and backward in one pass over the logits.

    logits: (N, V) float32; targets: (N,) int32 or int64, each in [0, V) or
    equal to ``ignore_index``. Returns (loss, dlogits): the mean loss over rows
    not ignored (NaN when every row is ignored, as PyTorch) and d loss / d
    logits (N, V), zero on ignored rows. ``out`` receives dlogits and may be
    ``logits`` itself (the gradient overwrites the logits in place). With
    ``compute_grad=False`` only the loss is computed and dlogits is None.
    """
    dev = _device_args("cross_entropy", logits=logits, targets=targets, out=out)
    if dev is not None:
        loss, grad = _C.cuda_cross_entropy(dev["logits"], dev["targets"], int(ignore_index),
                                           dev["out"], bool(compute_grad))
        # A given out comes back as the caller's own object (a torch tensor stays one).
        return loss, (out if out is not None and grad is not None else grad)
    return _C.cross_entropy(logits, targets, int(ignore_index), out, bool(compute_grad))


def lstm_cell(x: np.ndarray, h: np.ndarray, c: np.ndarray, w_ih: np.ndarray,
              w_hh: np.ndarray, b_ih: np.ndarray,
              b_hh: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One LSTM step in PyTorch's layout and gate order (i, f, g, o).

    x: (N, I); h, c: (N, H); w_ih: (4H, I); w_hh: (4H, H); b_ih, b_hh: (4H,).
    Returns (h_next (N, H), c_next (N, H), gates (N, 4H)), gates being the
    activated (sigmoid i, f, o; tanh g) values the backward needs.
    """
    dev = _device_args("lstm_cell", x=x, h=h, c=c, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh)
    if dev is not None:
        return _C.cuda_lstm_cell(*dev.values())
    return _C.lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh)


def lstm_cell_backward(dh_next: np.ndarray, dc_next: np.ndarray, x: np.ndarray, h: np.ndarray,
                       c: np.ndarray, c_next: np.ndarray, gates: np.ndarray, w_ih: np.ndarray,
                       w_hh: np.ndarray) -> Tuple[np.ndarray, ...]:
    """Gradients of :func:`lstm_cell`.

    dh_next, dc_next: (N, H). Returns (dx (N, I), dh (N, H), dc (N, H),
    dw_ih (4H, I), dw_hh (4H, H), db (4H,)); db is the gradient of either bias.
    """
    dev = _device_args("lstm_cell_backward", dh_next=dh_next, dc_next=dc_next, x=x, h=h, c=c,
                       c_next=c_next, gates=gates, w_ih=w_ih, w_hh=w_hh)
    if dev is not None:
        return _C.cuda_lstm_cell_backward(*dev.values())
    return _C.lstm_cell_backward(dh_next, dc_next, x, h, c, c_next, gates, w_ih, w_hh)


def gru_cell(x: np.ndarray, h: np.ndarray, w_ih: np.ndarray, w_hh: np.ndarray,
             b_ih: np.ndarray, b_hh: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """One GRU step in PyTorch's layout and gate order (r, z, n).

    x: (N, I); h: (N, H); w_ih: (3H, I); w_hh: (3H, H); b_ih, b_hh: (3H,).
    r = sigmoid(x W_ir^T + b_ir + h W_hr^T + b_hr), z likewise,
    n = tanh(x W_in^T + b_in + r * (h W_hn^T + b_hn)), h_next = (1 - z) n + z h.
    Returns (h_next (N, H), gates (N, 4H)): r, z, n and h W_hn^T + b_hn, kept
    for the backward.
    """
    dev = _device_args("gru_cell", x=x, h=h, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh)
    if dev is not None:
        return _C.cuda_gru_cell(*dev.values())
    return _C.gru_cell(x, h, w_ih, w_hh, b_ih, b_hh)


def gru_cell_backward(dh_next: np.ndarray, x: np.ndarray, h: np.ndarray, gates: np.ndarray,
                      w_ih: np.ndarray, w_hh: np.ndarray) -> Tuple[np.ndarray, ...]:
    """Gradients of :func:`gru_cell` given dh_next (N, H).

    Returns (dx (N, I), dh (N, H), dw_ih (3H, I), dw_hh (3H, H), db_ih (3H,),
    db_hh (3H,)); the two bias gradients differ in the n gate, where b_hn is
    scaled by r.
    """
    dev = _device_args("gru_cell_backward", dh_next=dh_next, x=x, h=h, gates=gates, w_ih=w_ih,
                       w_hh=w_hh)
    if dev is not None:
        return _C.cuda_gru_cell_backward(*dev.values())
    return _C.gru_cell_backward(dh_next, x, h, gates, w_ih, w_hh)


def adamw_step(param: np.ndarray, grad: np.ndarray, m: np.ndarray, v: np.ndarray, *,
               lr: float, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
               weight_decay: float = 0.0, step: int) -> None:
    """One AdamW update in place, as ``torch.optim.AdamW``.

    param, m, v (updated in place) and grad: float32 arrays of one shape.
    ``step`` counts updates including this one (>= 1) for the bias correction.
    """
    dev = _device_args("adamw_step", param=param, grad=grad, m=m, v=v)
    if dev is not None:
        _C.cuda_adamw_step(dev["param"], dev["grad"], dev["m"], dev["v"], float(lr), float(beta1),
                           float(beta2), float(eps), float(weight_decay), int(step))
        return
    _C.adamw_step(param, grad, m, v, float(lr), float(beta1), float(beta2), float(eps),
                  float(weight_decay), int(step))

"""The kernels on NumPy arrays, or on GPU arrays.

Every op takes C-contiguous ``float32`` arrays (ids as ``int32``/``int64``),
checks them where they enter (``TypeError`` for a wrong type or dtype,
``ValueError`` for a wrong shape, layout or value, naming the argument),
releases the GIL and runs the kernel table of the arrays' device: for NumPy
arrays the active CPU kernel table (see ``fastlm.cpu_isa()``). Outputs are
new arrays unless stated otherwise. Each op is one call into ``fastlm._C``,
which does all of this for every device (``csrc/bindings/ops.cpp``).

Given device arrays instead (``fastlm.DeviceArray``, or objects exporting
``__cuda_array_interface__`` such as CuPy arrays and PyTorch CUDA tensors),
an op runs the CUDA kernels and returns ``fastlm.DeviceArray`` outputs, with
no copy to the host (the loss of :func:`cross_entropy` is the one value that
comes back). ``matmul`` and ``attention`` (and its backward) also take
bfloat16 device arrays, computing in float32 on tensor cores, and
``cross_entropy`` takes bfloat16 logits. Mixing host
and device arrays in one call raises ``ValueError``; device arrays without a
usable GPU raise ``RuntimeError``. With ``FASTLM_EMULATE_CUDA=1`` device
arrays live on the emulated device (host memory; the CPU kernels compute
them, float32 only). See :mod:`fastlm.cuda`.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np

from . import _C
from ._checks import INT64_MAX, INT64_MIN, check_bool, check_float, check_int

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
    "dropout",
    "dropout_backward",
    "cross_entropy",
    "lstm_cell",
    "lstm_cell_backward",
    "gru_cell",
    "gru_cell_backward",
    "adamw_step",
    "sum_squares",
]


# ---- argument checks --------------------------------------------------------------
# Scalar arguments go through fastlm._checks before the call, so that the C++
# signatures (int64_t, double) never see a value they would reject with pybind11's
# "incompatible function arguments" message or silently convert. Arrays (their
# device, dtype, shape, layout and overlaps) are checked once, in _C.


def matmul(a: np.ndarray, b: np.ndarray, *, trans_a: bool = False, trans_b: bool = False,
           bias: Optional[np.ndarray] = None, precision: str = "highest") -> np.ndarray:
    """``op(a) @ op(b) (+ bias)``.

    a: (M, K), or (K, M) with ``trans_a``; b: (K, N), or (N, K) with ``trans_b``;
    bias: (N,) added to every row, or None. Returns c (M, N) float32.
    Transposes are read in place (no copies).

    precision: ``"highest"`` (float32 arithmetic), ``"tf32"``, which lets
    float32 GPU operands be rounded to TF32 on tensor cores (as PyTorch's
    ``allow_tf32``; the CPU computes in float32), or ``"bf16"`` (CPU): a and b
    rounded to bfloat16 (nearest even, subnormals to zero), products
    accumulated and c returned in float32. ``"bf16"`` needs the ``avx512bf16``
    CPU ISA (AVX512_BF16) and raises ValueError on any other. bfloat16 GPU
    operands (a, b and bias all bfloat16) give a bfloat16 c, accumulated in
    float32.
    """
    if not isinstance(precision, str):
        raise TypeError(f"matmul: precision must be a str ('highest', 'tf32' or 'bf16'), got "
                        f"{type(precision).__name__}")
    if precision not in ("highest", "tf32", "bf16"):
        raise ValueError(f"matmul: precision must be 'highest', 'tf32' or 'bf16', got {precision!r}")
    trans_a = check_bool(trans_a, "matmul: trans_a")
    trans_b = check_bool(trans_b, "matmul: trans_b")
    return _C.matmul(a, b, trans_a, trans_b, bias, precision)


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis of x (any shape, float32); stable for large inputs."""
    return _C.softmax(x)


def softmax_backward(dy: np.ndarray, y: np.ndarray) -> np.ndarray:
    """dx = y * (dy - sum(dy * y, last axis)), given y = softmax(x); all the same shape."""
    return _C.softmax_backward(dy, y)


def layernorm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray,
              eps: float = 1e-5) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LayerNorm over the last axis.

    x: (..., C) with C >= 1 (unless x has no rows); weight, bias: (C,); eps:
    finite and >= 0. Returns (y, mean, rstd): y like x, and mean, rstd of shape
    x.shape[:-1] (rstd = 1/sqrt(var + eps)) for the backward.
    """
    eps = check_float(eps, "layernorm: eps", 0.0)
    return _C.layernorm(x, weight, bias, eps)


def layernorm_backward(dy: np.ndarray, x: np.ndarray, weight: np.ndarray, mean: np.ndarray,
                       rstd: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of :func:`layernorm`: returns (dx like x, dweight (C,), dbias (C,))."""
    return _C.layernorm_backward(dy, x, weight, mean, rstd)


def _gelu_exact(op: str, approximate: str) -> bool:
    """PyTorch's ``approximate`` argument: "tanh" or "none" (the erf GELU)."""
    if approximate not in ("tanh", "none"):
        raise ValueError(f"{op}: approximate must be 'tanh' or 'none', got {approximate!r}")
    return approximate == "none"


def gelu(x: np.ndarray, approximate: str = "tanh") -> np.ndarray:
    """GELU, elementwise, float32 of any shape. ``approximate="tanh"`` (GPT-2's):
    0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))); ``"none"``: the exact
    x Phi(x) = 0.5 x (1 + erf(x / sqrt(2))), as ``torch.nn.functional.gelu``."""
    exact = _gelu_exact("gelu", approximate)
    return _C.gelu(x, exact)


def gelu_backward(dy: np.ndarray, x: np.ndarray, approximate: str = "tanh") -> np.ndarray:
    """dx = dy * gelu'(x); dy and x float32 of the same shape; ``approximate`` as :func:`gelu`."""
    exact = _gelu_exact("gelu_backward", approximate)
    return _C.gelu_backward(dy, x, exact)


def _dropout_args(op: str, p: Any, seed: Any) -> Tuple[float, int]:
    return (check_float(p, f"{op}: dropout", 0.0, below=1.0),
            check_int(seed, f"{op}: dropout_seed", 0, 2**64 - 1))


def dropout(x: np.ndarray, p: float, *, seed: int) -> np.ndarray:
    """Inverted dropout: ``x * keep / (1 - p)``, any shape, float32.

    ``keep`` is a pure function of ``(seed, flat index)`` (a counter-based hash,
    ``csrc/dropout_hash.h``), true with probability ``1 - p``; p in [0, 1),
    seed an integer in [0, 2**64). The same seed gives the same mask, so the
    backward (:func:`dropout_backward`) needs no stored mask. Device arrays
    run the CUDA kernel, which keeps the same elements.
    """
    p, seed = _dropout_args("dropout", p, seed)
    return _C.dropout(x, p, seed)


def dropout_backward(dy: np.ndarray, p: float, *, seed: int) -> np.ndarray:
    """Gradient of :func:`dropout` with the same ``p`` and ``seed``:
    ``dy * keep / (1 - p)`` (the forward's own mask, regenerated)."""
    p, seed = _dropout_args("dropout_backward", p, seed)
    return _C.dropout_backward(dy, p, seed)


def _attention_precision(op: str, precision) -> str:
    """attention's ``precision`` argument, checked for its type (its value and
    the device's and CPU's support are checked in _C)."""
    if not isinstance(precision, str):
        raise TypeError(f"{op}: precision must be a str ('fp32' or 'bf16'), got "
                        f"{type(precision).__name__}")
    return precision


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, *,
              causal: bool = True, dropout: float = 0.0, dropout_seed: int = 0,
              precision: str = "fp32") -> Tuple[np.ndarray, np.ndarray]:
    """Scaled dot-product attention, tiled with an online softmax (no T x T matrix).

    q: (B, H, T, D); k, v: (B, H, Tk, D) (Tk = T for self-attention); scale
    1/sqrt(D). With ``causal`` query i sees keys j <= i + (Tk - T).
    Returns (out (B, H, T, D), lse (B, H, T)): lse is the natural log-sum-exp of
    each row of scaled scores, kept for the backward.

    ``dropout`` in [0, 1) drops probabilities (training): entry
    (b, h, i, j) under the key ``hash(dropout_seed, b * H + h)`` at index
    ``i * Tk + j`` (``csrc/dropout_hash.h``), kept ones scaled by 1 / (1 - p);
    lse stays that of the undropped softmax. Pass the same ``dropout`` and
    ``dropout_seed`` to :func:`attention_backward`.

    precision ``"bf16"`` (float32 CPU arrays): the products q k^T and P v
    take bfloat16 operands (q, k, v and the probabilities P rounded to
    nearest even) and accumulate in float32; the softmax statistics (max,
    sum, lse) and out stay float32. It needs the ``avx512bf16`` CPU ISA
    (ValueError on any other); a single query (T = 1, no dropout) runs in
    float32. On the GPU q, k, v may be float32 or bfloat16 (out then
    bfloat16, lse float32), with D <= 128.
    """
    causal = check_bool(causal, "attention: causal")
    p, seed = _dropout_args("attention", dropout, dropout_seed)
    return _C.attention(q, k, v, causal, p, seed, _attention_precision("attention", precision))


def attention_backward(dout: np.ndarray, q: np.ndarray, k: np.ndarray, v: np.ndarray,
                       out: np.ndarray, lse: np.ndarray, *,
                       causal: bool = True, dropout: float = 0.0,
                       dropout_seed: int = 0,
                       precision: str = "fp32") -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of :func:`attention` (self-attention, all (B, H, T, D) float32;
    lse (B, H, T)).

    Returns (dq, dk, dv), each (B, H, T, D) float32. precision ``"bf16"``
    (CPU, ``avx512bf16`` only, as :func:`attention`): the five products
    (q k^T, dO v^T, P^T dO, dS^T q, dS k) on bfloat16 operands (dO, P and
    dS = P (dP - delta) rounded too), float32 accumulation and gradients.
    """
    causal = check_bool(causal, "attention_backward: causal")
    p, seed = _dropout_args("attention_backward", dropout, dropout_seed)
    return _C.attention_backward(dout, q, k, v, out, lse, causal, p, seed,
                                 _attention_precision("attention_backward", precision))


def cross_entropy(logits: np.ndarray, targets: np.ndarray, *, ignore_index: int = -100,
                  out: Optional[np.ndarray] = None,
                  compute_grad: bool = True) -> Tuple[float, Optional[np.ndarray]]:
    """Fused softmax cross-entropy, forward and backward in one pass over the logits.

    logits: (N, V) float32; targets: (N,) int32 or int64, each in [0, V) or
    equal to ``ignore_index``. Returns (loss, dlogits): the mean loss over rows
    not ignored (NaN when every row is ignored, as PyTorch) and d loss / d
    logits (N, V), zero on ignored rows. ``out`` receives dlogits and may be
    ``logits`` itself (the gradient overwrites the logits in place), but must
    not overlap logits otherwise, nor targets. ``ignore_index`` is an integer
    in the int64 range. With ``compute_grad=False`` only the loss is computed
    and dlogits is None. On the GPU logits may also be bfloat16: the max, sum
    and loss are float32, and dlogits (and ``out``) are bfloat16, rounded once.
    """
    ignore_index = check_int(ignore_index, "cross_entropy: ignore_index", INT64_MIN, INT64_MAX)
    compute_grad = check_bool(compute_grad, "cross_entropy: compute_grad")
    # A given out comes back as the caller's own object (a torch tensor stays one).
    return _C.cross_entropy(logits, targets, ignore_index, out, compute_grad)


def lstm_cell(x: np.ndarray, h: np.ndarray, c: np.ndarray, w_ih: np.ndarray,
              w_hh: np.ndarray, b_ih: np.ndarray,
              b_hh: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One LSTM step in PyTorch's layout and gate order (i, f, g, o).

    x: (N, I); h, c: (N, H); w_ih: (4H, I); w_hh: (4H, H); b_ih, b_hh: (4H,).
    Returns (h_next (N, H), c_next (N, H), gates (N, 4H)), gates being the
    activated (sigmoid i, f, o; tanh g) values the backward needs.
    """
    return _C.lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh)


def lstm_cell_backward(dh_next: np.ndarray, dc_next: np.ndarray, x: np.ndarray, h: np.ndarray,
                       c: np.ndarray, c_next: np.ndarray, gates: np.ndarray, w_ih: np.ndarray,
                       w_hh: np.ndarray) -> Tuple[np.ndarray, ...]:
    """Gradients of :func:`lstm_cell`.

    dh_next, dc_next: (N, H). Returns (dx (N, I), dh (N, H), dc (N, H),
    dw_ih (4H, I), dw_hh (4H, H), db (4H,)); db is the gradient of either bias.
    """
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
    return _C.gru_cell(x, h, w_ih, w_hh, b_ih, b_hh)


def gru_cell_backward(dh_next: np.ndarray, x: np.ndarray, h: np.ndarray, gates: np.ndarray,
                      w_ih: np.ndarray, w_hh: np.ndarray) -> Tuple[np.ndarray, ...]:
    """Gradients of :func:`gru_cell` given dh_next (N, H).

    Returns (dx (N, I), dh (N, H), dw_ih (3H, I), dw_hh (3H, H), db_ih (3H,),
    db_hh (3H,)); the two bias gradients differ in the n gate, where b_hn is
    scaled by r.
    """
    return _C.gru_cell_backward(dh_next, x, h, gates, w_ih, w_hh)


def adamw_step(param: np.ndarray, grad: np.ndarray, m: np.ndarray, v: np.ndarray, *,
               lr: float, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
               weight_decay: float = 0.0, step: int) -> None:
    """One AdamW update in place, as ``torch.optim.AdamW``.

    param, m, v (updated in place) and grad: float32 arrays of one shape, no two
    of them sharing memory. lr, weight_decay: finite and >= 0; beta1, beta2 in
    [0, 1); eps: finite and > 0. ``step`` counts updates including this one
    (an integer >= 1) for the bias correction.
    """
    op = "adamw_step"
    lr = check_float(lr, f"{op}: lr", 0.0)
    beta1 = check_float(beta1, f"{op}: beta1", 0.0, below=1.0)
    beta2 = check_float(beta2, f"{op}: beta2", 0.0, below=1.0)
    eps = check_float(eps, f"{op}: eps", 0.0, strict=True)
    weight_decay = check_float(weight_decay, f"{op}: weight_decay", 0.0)
    step = check_int(step, f"{op}: step (updates including this one)", 1, INT64_MAX)
    _C.adamw_step(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step)


def sum_squares(x: np.ndarray) -> float:
    """The sum of the squares of every element of ``x`` (float32, any shape),
    accumulated in float64 in fixed blocks: the same value for the same ``x``
    whatever the thread count. Gradient norms are its square root."""
    return float(_C.sum_squares(x))

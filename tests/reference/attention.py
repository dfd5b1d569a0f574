"""Scaled dot-product attention (causal: query i sees keys j <= i + Tk - T) in
float64 with the full probability matrix, its backward, and test inputs."""
from __future__ import annotations

import numpy as np

from .bf16 import bf16_round


def ref_forward(q, k, v, causal, dtype=np.float64):
    """(out, lse, p) of softmax(q k^T / sqrt(D)) v, query i seeing keys j <= i + Tk - T."""
    q, k, v = (np.asarray(x, dtype) for x in (q, k, v))
    T, Tk, D = q.shape[2], k.shape[2], q.shape[3]
    s = q @ np.swapaxes(k, -1, -2) * dtype(1 / np.sqrt(D))
    if causal:
        hidden = np.arange(Tk)[None, :] > np.arange(T)[:, None] + (Tk - T)
        s = np.where(hidden, dtype(-np.inf), s)
    m = s.max(-1, keepdims=True)
    e = np.exp(s - m)
    l = e.sum(-1, keepdims=True)
    return (e / l) @ v, (m + np.log(l))[..., 0], e / l


def ref_backward(dout, q, k, v, causal, dtype=np.float64):
    """Analytic gradients (dq, dk, dv) of <dout, attention(q, k, v)>."""
    _, _, p = ref_forward(q, k, v, causal, dtype)
    dout, q, k, v = (np.asarray(x, dtype) for x in (dout, q, k, v))
    scale = dtype(1 / np.sqrt(q.shape[3]))
    dv = np.swapaxes(p, -1, -2) @ dout
    dp = dout @ np.swapaxes(v, -1, -2)
    ds = p * (dp - np.sum(dp * p, -1, keepdims=True)) * scale
    return ds @ k, np.swapaxes(ds, -1, -2) @ q, dv


def ref_backward_from_lse(dout, q, k, v, causal, lse):
    """ref_backward in float64, but with the probabilities recomputed from a given
    lse as the flash backward does: what the float32 lse itself permits."""
    dout, q, k, v, lse = (np.asarray(x, np.float64) for x in (dout, q, k, v, lse))
    T, D = q.shape[2], q.shape[3]
    s = q @ np.swapaxes(k, -1, -2) / np.sqrt(D)
    if causal:
        s = np.where(np.arange(T)[None, :] > np.arange(T)[:, None], -np.inf, s)
    p = np.exp(s - lse[..., None])
    dv = np.swapaxes(p, -1, -2) @ dout
    dp = dout @ np.swapaxes(v, -1, -2)
    ds = p * (dp - np.sum(dout * (p @ v), -1, keepdims=True)) / np.sqrt(D)
    return ds @ k, np.swapaxes(ds, -1, -2) @ q, dv


def inputs(rng, B, H, T, D, Tk=None, scale=1.0):
    """float32 q (B, H, T, D), k and v (B, H, Tk, D); q and k scaled by scale."""
    Tk = T if Tk is None else Tk
    q = (rng.standard_normal((B, H, T, D)) * scale).astype(np.float32)
    k = (rng.standard_normal((B, H, Tk, D)) * scale).astype(np.float32)
    v = rng.standard_normal((B, H, Tk, D)).astype(np.float32)
    return q, k, v


def naive_bf16_attention(q, k, v, dout, causal, z=None):
    """Attention in float32 from bfloat16 inputs, rounding to bfloat16 where a
    bfloat16 flash kernel must: probabilities and dS before their products,
    and every output. The yardstick of the bfloat16 error bound. z: dropout
    factors (reference.dropout.attention_mask), applied to P and to dP.
    Returns (out, dq, dk, dv)."""
    q, k, v, dout = (np.asarray(x, np.float32) for x in (q, k, v, dout))
    out, _, p = ref_forward(q, k, v, causal, np.float32)
    p = p.astype(np.float32)
    z = np.float32(1) if z is None else np.asarray(z, np.float32)
    scale = np.float32(1 / np.sqrt(q.shape[3]))
    out_b = bf16_round(bf16_round(p * z) @ v)
    dv = bf16_round(np.swapaxes(bf16_round(p * z), -1, -2) @ dout)
    dp = dout @ np.swapaxes(v, -1, -2) * z
    delta = np.sum(dout * out_b, -1, keepdims=True)
    ds = bf16_round(p * (dp - delta))
    dq = bf16_round(ds @ k * scale)
    dk = bf16_round(np.swapaxes(ds, -1, -2) @ q * scale)
    return out_b, dq, dk, dv

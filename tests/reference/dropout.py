"""The dropout mask (csrc/dropout_hash.h) in NumPy, and attention with dropped
probabilities in float64."""
from __future__ import annotations

import numpy as np

from reference.bf16 import bf16_round

M32, M64 = np.uint64(0xFFFFFFFF), np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix64(z):
    z = np.asarray(z, np.uint64)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def ref_key(seed: int, stream: int) -> int:
    with np.errstate(over="ignore"):
        inner = _mix64(np.uint64(stream) + np.uint64(0x9E3779B97F4A7C15))
        return int(_mix64(np.uint64(seed) + inner))


def _fmix32(x):
    x = np.asarray(x, np.uint64) & M32
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(0x85EBCA6B)) & M32
    x ^= x >> np.uint64(13)
    x = (x * np.uint64(0xC2B2AE35)) & M32
    return x ^ (x >> np.uint64(16))


def ref_keep(key: int, index, p: float) -> np.ndarray:
    """The kept elements: bits(key, index) >= round(p 2^32)."""
    index = np.asarray(index, np.uint64)
    k = np.uint64(key)
    x = _fmix32((index & M32) ^ (k & M32))
    x = _fmix32(x ^ (((index >> np.uint64(32)) + (k >> np.uint64(32))) & M32))
    thr = min(int(p * 2**32 + 0.5), 2**32 - 1)
    return x >= np.uint64(thr)


def attention_mask(B, H, T, Tk, p, seed):
    """(B, H, T, Tk) keep factors: 1 / (1 - p) where kept, 0 where dropped."""
    z = np.empty((B, H, T, Tk))
    idx = (np.arange(T)[:, None] * Tk + np.arange(Tk)[None, :]).astype(np.uint64)
    for b in range(B):
        for h in range(H):
            z[b, h] = ref_keep(ref_key(seed, b * H + h), idx, p) / (1 - np.float32(p))
    return z


def _bf16_rounder(round_p, dtype):
    """x -> x rounded to bfloat16 (nearest even) in dtype when round_p, else x."""
    if not round_p:
        return lambda x: x
    return lambda x: bf16_round(np.asarray(x, np.float32)).astype(dtype)


def ref_attention(q, k, v, z, causal, dtype=np.float64, round_p=False):
    """(out, lse, P) of softmax(q k^T / sqrt(D)) (times the keep factors z) v,
    query i seeing keys j <= i + Tk - T; with round_p, P z rounded to bfloat16
    before its product with v (as precision="bf16" kernels round)."""
    q, k, v, z = (np.asarray(x, dtype) for x in (q, k, v, z))
    T, Tk, D = q.shape[2], k.shape[2], q.shape[3]
    s = q @ np.swapaxes(k, -1, -2) * dtype(1 / np.sqrt(D))
    if causal:
        s = np.where(np.arange(Tk)[None, :] > np.arange(T)[:, None] + (Tk - T), dtype(-np.inf), s)
    m = s.max(-1, keepdims=True)
    e = np.exp(s - m)
    l = e.sum(-1, keepdims=True)
    p = e / l
    return _bf16_rounder(round_p, dtype)(p * z) @ v, (m + np.log(l))[..., 0], p


def ref_attention_backward(dout, q, k, v, z, causal, dtype=np.float64, round_p=False):
    """(dq, dk, dv) of <dout, attention>; with round_p, P z and dS rounded to
    bfloat16 before their products."""
    _, _, p = ref_attention(q, k, v, z, causal, dtype)
    dout, q, k, v, z = (np.asarray(x, dtype) for x in (dout, q, k, v, z))
    rnd = _bf16_rounder(round_p, dtype)
    scale = dtype(1 / np.sqrt(q.shape[3]))
    dv = np.swapaxes(rnd(p * z), -1, -2) @ dout
    dp = (dout @ np.swapaxes(v, -1, -2)) * z
    ds = rnd(p * (dp - np.sum(dp * p, -1, keepdims=True))) * scale
    return ds @ k, np.swapaxes(ds, -1, -2) @ q, dv

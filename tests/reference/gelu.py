"""GELU, tanh approximation and exact (erf), with their gradients."""
from __future__ import annotations

import math

import numpy as np


def gelu_ref(x, dtype=np.float64):
    x = np.asarray(x, dtype=dtype)
    s, c = dtype(np.sqrt(2 / np.pi)), dtype(0.044715)
    return dtype(0.5) * x * (1 + np.tanh(s * (x + c * x ** 3)))


def gelu_grad_ref(dy, x, dtype=np.float64):
    dy, x = np.asarray(dy, dtype=dtype), np.asarray(x, dtype=dtype)
    s, c = dtype(np.sqrt(2 / np.pi)), dtype(0.044715)
    t = np.tanh(s * (x + c * x ** 3))
    return dy * (dtype(0.5) * (1 + t) + dtype(0.5) * x * (1 - t * t) * s * (1 + 3 * c * x * x))


def _erfc(z):
    return np.vectorize(math.erfc, otypes=[np.float64])(z)


def gelu_erf_ref(x, dtype=np.float64):
    """x Phi(x). In float64 through erfc (accurate on both tails); in float32
    the plain 0.5 x (1 + erf(x / sqrt 2)) with erf rounded to float32."""
    if dtype == np.float64:
        x = np.asarray(x, np.float64)
        return x * 0.5 * _erfc(-x / np.sqrt(2))
    x = np.asarray(x, np.float32)
    erf = np.vectorize(math.erf, otypes=[np.float64])(x.astype(np.float64) / np.sqrt(2))
    return np.float32(0.5) * x * (np.float32(1) + erf.astype(np.float32))


def gelu_erf_grad_ref(dy, x, dtype=np.float64):
    """dy (Phi(x) + x phi(x))."""
    dy, x = np.asarray(dy, dtype=dtype), np.asarray(x, dtype=dtype)
    phi_cdf = (0.5 * _erfc(-x.astype(np.float64) / np.sqrt(2))).astype(dtype)
    density = np.exp(dtype(-0.5) * x * x) / dtype(np.sqrt(2 * np.pi))
    return dy * (phi_cdf + x * density)

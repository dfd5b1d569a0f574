"""One LSTM and one GRU step (PyTorch's LSTMCell / GRUCell formulas), forward and
backward, and their test inputs."""
from __future__ import annotations

import numpy as np


def sigmoid(z):
    with np.errstate(over="ignore"):  # exp(-z) = inf gives the right limit, 0
        return 1 / (1 + np.exp(-z))


def lstm_ref(x, h, c, w_ih, w_hh, b_ih, b_hh, dtype=np.float64):
    """PyTorch's LSTMCell in `dtype`: returns (h_next, c_next, gates)."""
    x, h, c, w_ih, w_hh, b_ih, b_hh = (np.asarray(a, dtype=dtype)
                                       for a in (x, h, c, w_ih, w_hh, b_ih, b_hh))
    pre = x @ w_ih.T + b_ih + h @ w_hh.T + b_hh
    i, f, g, o = np.split(pre, 4, axis=1)
    i, f, g, o = sigmoid(i), sigmoid(f), np.tanh(g), sigmoid(o)
    c_next = f * c + i * g
    return o * np.tanh(c_next), c_next, np.concatenate([i, f, g, o], axis=1)


def lstm_backward_ref(dh_next, dc_next, x, h, c, w_ih, w_hh, b_ih, b_hh, dtype=np.float64):
    """Returns (dx, dh, dc, dw_ih, dw_hh, db) for loss <dh_next, h_next> + <dc_next, c_next>."""
    _, c_next, gates = lstm_ref(x, h, c, w_ih, w_hh, b_ih, b_hh, dtype)
    dh_next, dc_next, x, h, c, w_ih, w_hh = (np.asarray(a, dtype=dtype)
                                             for a in (dh_next, dc_next, x, h, c, w_ih, w_hh))
    i, f, g, o = np.split(gates, 4, axis=1)
    tc = np.tanh(c_next)
    dct = dc_next + dh_next * o * (1 - tc * tc)
    dpre = np.concatenate([dct * g * i * (1 - i), dct * c * f * (1 - f),
                           dct * i * (1 - g * g), dh_next * tc * o * (1 - o)], axis=1)
    return dpre @ w_ih, dpre @ w_hh, dct * f, dpre.T @ x, dpre.T @ h, dpre.sum(0)


def make_lstm(rng, n, inp, hid, scale=1.0):
    """LSTMCell inputs as a dict of float32 arrays (PyTorch's init for the weights)."""
    k = 1 / np.sqrt(hid)
    f = lambda *s: rng.uniform(-k, k, s).astype(np.float32)  # noqa: E731  (PyTorch's init)
    return dict(
        x=(rng.standard_normal((n, inp)) * scale).astype(np.float32),
        h=(rng.standard_normal((n, hid)) * 0.5 * scale).astype(np.float32),
        c=(rng.standard_normal((n, hid)) * scale).astype(np.float32),
        w_ih=f(4 * hid, inp) * np.float32(scale), w_hh=f(4 * hid, hid) * np.float32(scale),
        b_ih=f(4 * hid), b_hh=f(4 * hid))


def upstream(rng, n, hid):
    """(dh_next, dc_next) of an LSTM step, float32 (n, hid)."""
    return (rng.standard_normal((n, hid)).astype(np.float32),
            rng.standard_normal((n, hid)).astype(np.float32))


def gru_ref(x, h, w_ih, w_hh, b_ih, b_hh):
    """Float64 (or float32, for the naive yardstick) GRU step in PyTorch's formulas."""
    H = h.shape[1]
    gi = x @ w_ih.T + b_ih
    gh = h @ w_hh.T + b_hh
    r = sigmoid(gi[:, :H] + gh[:, :H])
    z = sigmoid(gi[:, H:2 * H] + gh[:, H:2 * H])
    n = np.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])
    return (1 - z) * n + z * h, (r, z, n, gh[:, 2 * H:])


def gru_ref_backward(dy, x, h, w_ih, w_hh, b_ih, b_hh):
    _, (r, z, n, hn) = gru_ref(x, h, w_ih, w_hh, b_ih, b_hh)
    dn = dy * (1 - z) * (1 - n * n)
    dz = dy * (h - n) * z * (1 - z)
    dr = dn * hn * r * (1 - r)
    dgi = np.concatenate([dr, dz, dn], axis=1)
    dgh = np.concatenate([dr, dz, dn * r], axis=1)
    dx = dgi @ w_ih
    dh = dgh @ w_hh + dy * z
    return dx, dh, dgi.T @ x, dgh.T @ h, dgi.sum(0), dgh.sum(0)


def make_gru(rng, n, i, hdim):
    """GRUCell inputs (x, h, w_ih, w_hh, b_ih, b_hh), float32."""
    s = 1 / np.sqrt(hdim)
    f = lambda *shape: rng.uniform(-s, s, shape).astype(np.float32) * 3
    return (rng.standard_normal((n, i)).astype(np.float32), rng.standard_normal((n, hdim)).astype(np.float32),
            f(3 * hdim, i), f(3 * hdim, hdim), f(3 * hdim), f(3 * hdim))

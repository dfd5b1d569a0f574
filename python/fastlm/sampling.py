"""Autoregressive generation: the decoding loop and the C++ sampler.

Each model supplies a decoding session (``model._decoder(ids)``): the
Transformer's keeps a KV cache, the recurrent models' the recurrent state, so
each new token costs one incremental step of the C++ model. Sampling
(temperature, top-k, top-p, greedy) runs in C++ (``fastlm._C.Sampler``) with a
seeded generator: the same seed gives the same tokens.
"""
from __future__ import annotations

from typing import Any, Iterator, List, Optional, Union

import numpy as np

from . import _C
from ._checks import check_bool, check_float as _check_float, check_int as _check_int
from .lm import _as_ids

__all__ = ["generate"]


def _check_prompt(model: Any, prompt: Any) -> tuple:
    """(ids (B, T0) int64, was_1d)."""
    if isinstance(prompt, str):
        if model.tokenizer is None:
            raise TypeError("prompt is a str but the model has no tokenizer; pass token ids "
                            "(or build the model with tokenizer=...)")
        prompt = model.tokenizer.encode(prompt)
    ids = _as_ids(prompt, "prompt", model.vocab_size, ndim=None)
    if ids.ndim not in (1, 2):
        raise ValueError(f"prompt must be 1-D ids or a 2-D batch (B, T), got shape {ids.shape}")
    one = ids.ndim == 1
    if one:
        ids = ids[None, :]
    if ids.shape[0] < 1 or ids.shape[1] < 1:
        raise ValueError(f"prompt must hold at least one token, got shape {ids.shape if not one else ids.shape[1:]}")
    return np.ascontiguousarray(ids), one


def generate(model: Any, prompt: Any, max_new_tokens: int, *, temperature: float = 1.0,
             top_k: Optional[int] = None, top_p: Optional[float] = None, do_sample: bool = True,
             seed: Optional[int] = None, eos_token_id: Optional[int] = None,
             stream: bool = False) -> Union[np.ndarray, Iterator[Any]]:
    """Continue ``prompt`` by up to ``max_new_tokens`` tokens (Hugging Face's names).

    prompt: 1-D integer ids (T0,), a 2-D batch (B, T0), or a str when the
        model has a tokenizer (encoded with it; the result is still ids).
        Non-empty, every id in [0, vocab_size). Longer than block_size is
        fine: the model sees the last block_size tokens.
    max_new_tokens: >= 0.
    temperature: > 0, divides the logits (only used when sampling).
    top_k: keep the k most likely tokens (>= 1; None: all); clamped to the
        number of ids drawn from (below).
    top_p: nucleus sampling, keep the smallest set with probability >= top_p
        (0 < top_p <= 1; None: off).
    do_sample: False picks the argmax (greedy; temperature, top_k, top_p unused).
    seed: seeds the C++ sampler (an int in [0, 2**64)); the same seed, prompt
        and settings give the same tokens. None draws a fresh seed.
    eos_token_id: a sequence that emits it is finished; in a batch, finished
        rows keep emitting it, and generation stops once every row is finished.
    stream: return an iterator yielding each new token as it is made (an int
        for a 1-D prompt, an int64 array (B,) for a batch) instead of the array.

    New ids are drawn from [0, vocab_size), or from [0, tokenizer.vocab_size)
    when the model has a tokenizer with fewer ids (a padded vocabulary): the
    logits (B, vocab_size) float32 are cut to the ids it can decode before
    sampling or the argmax.

    Returns the prompt followed by the new ids, int64: (T0 + n,) for a 1-D
    prompt, (B, T0 + n) for a batch, n <= max_new_tokens (less only on eos).
    Arguments are checked at the call, also with ``stream=True``.
    """
    ids, one = _check_prompt(model, prompt)
    max_new_tokens = _check_int(max_new_tokens, "max_new_tokens", 0)
    do_sample = check_bool(do_sample, "do_sample")
    temperature = _check_float(temperature, "temperature")
    if do_sample and temperature <= 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature} (use do_sample=False for greedy)")
    V = model.vocab_size
    n_ids = V if model.tokenizer is None else model.tokenizer.vocab_size  # <= V
    k = 0 if top_k is None else min(_check_int(top_k, "top_k", 1), n_ids)
    p = 1.0 if top_p is None else _check_float(top_p, "top_p")
    if not 0.0 < p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    if seed is None:
        seed = int(np.random.SeedSequence().entropy) % (1 << 64)
    else:
        seed = _check_int(seed, "seed", 0, (1 << 64) - 1)
    if eos_token_id is not None:
        eos_token_id = _check_int(eos_token_id, "eos_token_id", 0, V - 1)
    stream = check_bool(stream, "stream")

    it = _decode_loop(model, ids, max_new_tokens, n_ids, float(temperature) if do_sample else 1.0, k, p,
                      bool(do_sample), seed, eos_token_id)
    if stream:
        return (int(t[0]) for t in it) if one else it
    new: List[np.ndarray] = list(it)
    out = np.concatenate([ids] + [t[:, None] for t in new], axis=1) if new else ids.copy()
    return out[0] if one else out


def _decode_loop(model: Any, ids: np.ndarray, max_new_tokens: int, n_ids: int, temperature: float, top_k: int,
                 top_p: float, do_sample: bool, seed: int, eos: Optional[int]) -> Iterator[np.ndarray]:
    """Yield the new tokens (B,) one step at a time, each drawn from the ids
    [0, n_ids)."""
    if max_new_tokens == 0:
        return
    sampler = _C.Sampler(seed)
    session = model._decoder(ids)
    finished = np.zeros(ids.shape[0], dtype=bool)
    for i in range(max_new_tokens):
        if not np.isfinite(session.logits).all():
            raise FloatingPointError(f"generate: the model's logits hold NaN or inf at new token {i + 1}; its "
                                     "weights have likely diverged (a learning rate too high for them)")
        logits = np.ascontiguousarray(session.logits[:, :n_ids])
        nxt = np.asarray(sampler.sample(logits, temperature, top_k, top_p, do_sample), dtype=np.int64)
        if eos is not None:
            nxt = np.where(finished, eos, nxt)
            finished |= nxt == eos
        yield nxt.copy()
        if i + 1 == max_new_tokens or (eos is not None and finished.all()):
            return
        session.push(nxt)

"""Autoregressive generation: the decoding loop and the C++ sampler.

Each model supplies a decoding session (``model._decoder(ids, lengths)``):
the Transformer's keeps a KV cache, the recurrent models' the recurrent
state, so each new token costs one incremental step of the C++ model.
Sampling (temperature, top-k, top-p, greedy) and the per-token logits
processors (repetition penalty, eos suppressed until ``min_new_tokens``) run
in C++ (``fastlm._C.Sampler``) with a seeded generator: the same seed gives
the same tokens. Hugging Face's ``generate`` is the model for every name and
its meaning.
"""
from __future__ import annotations

from typing import Any, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _C
from ._checks import as_ids as _as_ids, check_bool, check_float as _check_float, check_int as _check_int

__all__ = ["generate"]


def _encode(model: Any, text: str, name: str) -> np.ndarray:
    if model.tokenizer is None:
        raise TypeError(f"{name} is a str but the model has no tokenizer; pass token ids "
                        "(or build the model with tokenizer=...)")
    return np.asarray(model.tokenizer.encode(text), dtype=np.int64)


def _check_prompt(model: Any, prompt: Any) -> Tuple[np.ndarray, Optional[np.ndarray], str]:
    """The prompts as ids (B, T) int64, right-padded with 0 when ``lengths``
    (B,) is not None (prompts of different lengths); and the form of the
    result: ``"one"`` (a 1-D prompt or a str), ``"batch"`` (a rectangular
    (B, T) batch) or ``"list"`` (a list of str prompts, or of id prompts of
    different lengths)."""
    V = model.vocab_size
    if isinstance(prompt, str):
        rows, kind = [_encode(model, prompt, "prompt")], "one"
    elif isinstance(prompt, (list, tuple)) and prompt and any(isinstance(p, str) for p in prompt):
        if not all(isinstance(p, str) for p in prompt):
            raise TypeError("prompt mixes str and token ids; pass all prompts as str or all as ids")
        rows, kind = [_encode(model, p, f"prompt[{i}]") for i, p in enumerate(prompt)], "list"
    elif isinstance(prompt, (list, tuple)) and prompt and all(
            isinstance(p, (list, tuple, np.ndarray)) for p in prompt) and len({len(p) for p in prompt}) > 1:
        rows, kind = [_as_ids(p, f"prompt[{i}]", V, ndim=1) for i, p in enumerate(prompt)], "list"
    else:
        ids = _as_ids(prompt, "prompt", V, ndim=None)
        if ids.ndim not in (1, 2):
            raise ValueError(f"prompt must be 1-D ids or a 2-D batch (B, T) (or a list of prompts), got shape "
                             f"{ids.shape}")
        one = ids.ndim == 1
        if one:
            ids = ids[None, :]
        if ids.shape[0] < 1 or ids.shape[1] < 1:
            raise ValueError(f"prompt must hold at least one token, got shape {ids.shape[1:] if one else ids.shape}")
        return np.ascontiguousarray(ids), None, "one" if one else "batch"
    for i, r in enumerate(rows):
        where = "" if kind == "one" else f"[{i}]"
        if r.size < 1:
            raise ValueError(f"prompt{where} must hold at least one token")
        if r.max() >= V:  # a tokenizer's ids beyond the model's vocabulary
            raise ValueError(f"prompt{where} holds id {int(r.max())}, outside [0, {V})")
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    ids = np.zeros((len(rows), int(lengths.max())), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
    return ids, (None if kind == "one" else lengths), kind


def _check_ids(v: Any, name: str, vocab_size: int) -> Optional[np.ndarray]:
    """An int or a non-empty list of ints, each in [0, vocab_size), as a 1-D
    int64 array (None stays None)."""
    if v is None:
        return None
    items = list(v) if isinstance(v, (list, tuple)) or (isinstance(v, np.ndarray) and v.ndim > 0) else [v]
    if not items:
        raise ValueError(f"{name} must be an int or a non-empty list of ints, got an empty list")
    items = [t.item() if isinstance(t, np.ndarray) and t.ndim == 0 else t for t in items]
    # In the order given (the first is the default pad_token_id, as Hugging Face's), once each.
    return np.array(list(dict.fromkeys(_check_int(t, name, 0, vocab_size - 1) for t in items)), dtype=np.int64)


def _check_stop(stop_strings: Any, model: Any) -> Optional[List[str]]:
    if stop_strings is None:
        return None
    items = [stop_strings] if isinstance(stop_strings, str) else stop_strings
    if not isinstance(items, (list, tuple)) or not items or not all(isinstance(s, str) for s in items):
        raise TypeError("stop_strings must be a str or a non-empty list of str, got "
                        f"{type(stop_strings).__name__}")
    if any(s == "" for s in items):
        raise ValueError("stop_strings must not contain an empty string (it would stop at once)")
    if model.tokenizer is None:
        raise ValueError("stop_strings needs the model's tokenizer to decode the tokens; this model has none")
    return list(items)


def generate(model: Any, prompt: Any, max_new_tokens: int, *, temperature: float = 1.0,
             top_k: Optional[int] = None, top_p: Optional[float] = None, do_sample: bool = True,
             seed: Optional[int] = None, eos_token_id: Union[None, int, Sequence[int]] = None,
             stream: bool = False, repetition_penalty: float = 1.0,
             stop_strings: Union[None, str, Sequence[str]] = None, min_new_tokens: int = 0,
             num_return_sequences: int = 1, return_logprobs: bool = False,
             pad_token_id: Optional[int] = None) -> Any:
    """Continue ``prompt`` by up to ``max_new_tokens`` tokens (Hugging Face's names).

    prompt: 1-D integer ids (T0,), a 2-D batch (B, T0), a str when the model
        has a tokenizer (encoded with it; the result is still ids), or a list
        of prompts of different lengths (lists of ids, or strs): a ragged
        batch, whose result is a list with one 1-D array per row, each what
        that prompt alone would give (greedy: the same ids). Non-empty, every
        id in [0, vocab_size). Longer than block_size is fine: the model sees
        the last block_size tokens.
    max_new_tokens: >= 0.
    temperature: > 0, divides the logits (only used when sampling).
    top_k: keep the k most likely tokens (>= 1; None: all); clamped to the
        number of ids drawn from (below).
    top_p: nucleus sampling, keep the smallest set with probability >= top_p
        (0 < top_p <= 1; None: off).
    do_sample: False picks the argmax (greedy; temperature, top_k, top_p unused).
    seed: seeds the C++ sampler (an int in [0, 2**64)); the same seed, prompt
        and settings give the same tokens. None draws a fresh seed.
    eos_token_id: an id or a list of ids; a sequence that emits one is
        finished (the id is kept as its last token).
    repetition_penalty: > 0 (1: off). Hugging Face's: the logit of every id
        already in the sequence (prompt included) is divided by it when
        positive and multiplied by it when negative, before temperature,
        top-k and top-p; > 1 discourages repeats.
    stop_strings: a str or a list of str (non-empty; needs the model's
        tokenizer). A sequence is finished by the token that completes one
        of them in its decoded text (Hugging Face's StopStringCriteria: the
        match must overlap that token's text, and may begin in the prompt);
        that token is kept.
    min_new_tokens: >= 0; the eos ids are never drawn before this many new
        tokens (Hugging Face's MinNewTokensLengthLogitsProcessor).
    num_return_sequences: >= 1 continuations per prompt, rows i*n .. i*n+n-1
        for prompt i (as Hugging Face orders them); needs do_sample=True (a
        greedy search would repeat one sequence). A 1-D prompt then gives a
        2-D result.
    return_logprobs: also return, for every new token, its log-probability
        under the distribution it was drawn from: the logits after the
        processors (repetition penalty, eos suppression, and when sampling
        temperature, top-k, top-p), log-softmaxed; Hugging Face's
        ``compute_transition_scores(sequences, scores, normalize_logits=True)``
        with ``output_scores=True``. float32, shaped as the new tokens.
    pad_token_id: fills a batch row after it finished (eos or a stop string)
        while others go on; default: the first eos id. A batch that returns
        one array (a 2-D prompt, or num_return_sequences > 1) or streams,
        with stop_strings and no eos id, needs it.
    stream: return an iterator yielding each new token as it is made (an int
        for a 1-D prompt, an int64 array (B,) otherwise, finished rows
        yielding pad_token_id), or with return_logprobs (token, logprob)
        pairs, instead of the array.

    New ids are drawn from [0, vocab_size), or from [0, tokenizer.vocab_size)
    when the model has a tokenizer with fewer ids (a padded vocabulary): the
    logits (B, vocab_size) float32 are cut to the ids it can decode before
    sampling or the argmax.

    Returns the prompt followed by the new ids, int64: (T0 + n,) for a 1-D
    prompt, (B * num_return_sequences, T0 + n) for a batch, n <=
    max_new_tokens (less when every row finished); a list of such 1-D arrays
    for a ragged batch, each ending where its row finished. With
    return_logprobs a pair (ids, logprobs), logprobs (n,), (rows, n) or a
    list, 0.0 where a finished row was padded. Arguments are checked at the
    call (TypeError or ValueError naming the argument), also with ``stream=True``.
    """
    ids, lengths, kind = _check_prompt(model, prompt)
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
    eos = _check_ids(eos_token_id, "eos_token_id", V)
    stream = check_bool(stream, "stream")
    penalty = _check_float(repetition_penalty, "repetition_penalty", 0.0, strict=True)
    stops = _check_stop(stop_strings, model)
    min_new_tokens = _check_int(min_new_tokens, "min_new_tokens", 0)
    n_ret = _check_int(num_return_sequences, "num_return_sequences", 1)
    if n_ret > 1 and not do_sample:
        raise ValueError(f"num_return_sequences={n_ret} needs do_sample=True: greedy decoding gives one sequence "
                         "per prompt")
    return_logprobs = check_bool(return_logprobs, "return_logprobs")
    pad = None if pad_token_id is None else _check_int(pad_token_id, "pad_token_id", 0, V - 1)
    if pad is None and eos is not None:
        pad = int(eos[0])
    suppress = None
    if eos is not None and min_new_tokens > 0:
        suppress = eos[eos < n_ids]
        if len(suppress) == n_ids:
            raise ValueError(f"min_new_tokens={min_new_tokens} with eos_token_id covering every id the model can "
                             "draw leaves nothing to draw")
        suppress = suppress if len(suppress) else None
    if n_ret > 1:
        ids = np.repeat(ids, n_ret, axis=0)
        lengths = None if lengths is None else np.repeat(lengths, n_ret)
        kind = "batch" if kind == "one" else kind
    B = ids.shape[0]
    if stops is not None and pad is None and (kind == "batch" or (stream and B > 1)):
        raise ValueError("stop_strings in a batch needs pad_token_id (or eos_token_id) for the rows that stop "
                         "early; or pass the prompts as a list to get one array per row")

    it = _decode_loop(model, ids, lengths, max_new_tokens, n_ids, float(temperature) if do_sample else 1.0, k, p,
                      do_sample, seed, eos, pad, penalty, suppress, min_new_tokens, stops, return_logprobs, stream)
    if stream:
        steps = ((t[:, j].copy(), lp[:, j].copy()) for t, lp, _ in it for j in range(t.shape[1]))
        if kind == "one":
            return ((int(t[0]), float(lp[0])) if return_logprobs else int(t[0]) for t, lp in steps)
        return ((t, lp) if return_logprobs else t for t, lp in steps)
    chunks = list(it)
    new = np.concatenate([t for t, _, _ in chunks], axis=1) if chunks else np.zeros((B, 0), np.int64)
    lps = np.concatenate([lp for _, lp, _ in chunks], axis=1) if chunks and return_logprobs else \
        np.zeros(new.shape, np.float32)
    if kind == "list":
        # Each row ends at the step it finished in (the last step it was live).
        live = np.concatenate([a for _, _, a in chunks], axis=1) if chunks else np.zeros((B, 0), bool)
        ends = live.sum(axis=1)
        n0 = np.full(B, ids.shape[1]) if lengths is None else lengths
        out: Any = [np.concatenate([ids[i, :n0[i]], new[i, :ends[i]]]) for i in range(B)]
        lp_out: Any = [lps[i, :ends[i]].copy() for i in range(B)]
    else:
        out = np.concatenate([ids, new], axis=1)
        lp_out = lps
        if kind == "one":
            out, lp_out = out[0], lp_out[0]
    return (out, lp_out) if return_logprobs else out


class _StopStrings:
    """Hugging Face's stop-string test per row: after each token, whether a
    stop string occurs in the row's decoded text overlapping that token's
    text. Decoding is incremental (ids are held while they decode to a
    partial character), so the cost per token does not grow with the text."""

    def __init__(self, tokenizer: Any, stops: List[str], rows: Sequence[np.ndarray]) -> None:
        self.tok, self.stops = tokenizer, stops
        keep = max(len(s) for s in stops) - 1
        self.keep = keep
        self.text = [self._tail(r) if keep else "" for r in rows]  # where a stop string may begin
        self.pending: List[List[int]] = [[] for _ in rows]

    def _tail(self, ids: np.ndarray) -> str:
        """The last ``keep`` characters of the prompt ``ids`` (a few ids more
        than that are decoded, in case some decode to nothing)."""
        tail = ids[-(self.keep + 8):]
        return self.tok.decode(tail[tail < self.tok.vocab_size])[-self.keep:]

    def hit(self, row: int, token: int) -> bool:
        self.pending[row].append(token)
        piece = self.tok.decode(self.pending[row])
        if piece.endswith("\ufffd"):  # the start of a character: wait for the rest
            return False
        self.pending[row] = []
        text = self.text[row] + piece
        found = any(s in text[max(0, len(text) - len(piece) - len(s) + 1):] for s in self.stops)
        self.text[row] = text[-self.keep:] if self.keep else ""
        return found


# Tests set this to run the per-token Python loop where the C++ one would run.
_PYTHON_LOOP = False


def _nonfinite(step: int) -> FloatingPointError:
    return FloatingPointError(f"generate: the model's logits hold NaN or inf at new token {step}; its weights "
                              "have likely diverged (a learning rate too high for them)")


def _seen(ids: np.ndarray, n0: np.ndarray, n_ids: int) -> np.ndarray:
    """(B, n_ids) float32: 1 where an id occurs in a row's prompt ids[i, :n0[i]]."""
    B, T = ids.shape
    seen = np.zeros((B, n_ids), dtype=np.float32)
    r, c = np.nonzero((ids < n_ids) & (np.arange(T) < n0[:, None]))
    seen[r, ids[r, c]] = 1.0
    return seen


def _decode_loop(model: Any, ids: np.ndarray, lengths: Optional[np.ndarray], max_new_tokens: int, n_ids: int,
                 temperature: float, top_k: int, top_p: float, do_sample: bool, seed: int,
                 eos: Optional[np.ndarray], pad: Optional[int], penalty: float, suppress: Optional[np.ndarray],
                 min_new_tokens: int, stops: Optional[List[str]], want_logprobs: bool, stream: bool = False
                 ) -> Iterator[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield chunks of steps (tokens (B, k) int64, logprobs (B, k) float32,
    live (B, k) bool): the new ids, drawn from [0, n_ids) (``pad`` for rows
    finished before the step, whose ``live`` is False; -1 if there is no
    pad), and their log-probabilities (0 where padded or not asked for). Row
    i's prompt is ``ids[i, :lengths[i]]`` (all of ``ids[i]`` when lengths is
    None).

    Without stop strings the whole loop runs in C++ (``_C.DecodeLoop``: one
    call for every step, or one per step when streaming); stop strings need
    the Python tokenizer after every token, so they keep the loop in Python
    (one chunk per step). Both draw the same tokens for the same seed."""
    if max_new_tokens == 0:
        return
    B, T = ids.shape
    n0 = np.full(B, T, dtype=np.int64) if lengths is None else lengths
    ragged = not (n0 == T).all()
    session = model._decoder(ids, n0 if ragged else None)
    seen = _seen(ids, n0, n_ids) if penalty != 1.0 else None
    if stops is None and not _PYTHON_LOOP:
        loop = _C.DecodeLoop(seed, np.ascontiguousarray(session.logits, dtype=np.float32), n_ids, max_new_tokens,
                             temperature, top_k, top_p, do_sample, penalty, seen, eos, -1 if pad is None else pad,
                             suppress, min_new_tokens, want_logprobs)
        while not loop.done:
            tok, lp, live, bad = session.run(loop, 1 if stream else max_new_tokens)
            if tok.shape[1]:
                yield tok, lp, live
            if bad:
                raise _nonfinite(loop.step + 1)
        return
    yield from _python_loop(model, session, ids, n0, max_new_tokens, n_ids, temperature, top_k, top_p, do_sample,
                            seed, eos, pad, penalty, seen, suppress, min_new_tokens, stops, want_logprobs)


def _python_loop(model: Any, session: Any, ids: np.ndarray, n0: np.ndarray, max_new_tokens: int, n_ids: int,
                 temperature: float, top_k: int, top_p: float, do_sample: bool, seed: int,
                 eos: Optional[np.ndarray], pad: Optional[int], penalty: float, seen: Optional[np.ndarray],
                 suppress: Optional[np.ndarray], min_new_tokens: int, stops: Optional[List[str]],
                 want_logprobs: bool) -> Iterator[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The loop of :func:`_decode_loop` in Python, one step per chunk, with
    the stop strings tested after every token."""
    B = ids.shape[0]
    sampler = _C.Sampler(seed)
    finished = np.zeros(B, dtype=bool)
    stopper = None if stops is None else _StopStrings(model.tokenizer, stops, [ids[i, :n0[i]] for i in range(B)])
    lp = np.zeros(B, dtype=np.float32)
    fill = -1 if pad is None else pad
    can_finish = eos is not None or stopper is not None
    live = np.ones(B, dtype=bool)
    for i in range(max_new_tokens):
        if not np.isfinite(session.logits).all():
            raise _nonfinite(i + 1)
        logits = np.ascontiguousarray(session.logits[:, :n_ids])
        nxt = sampler.sample(logits, temperature, top_k, top_p, do_sample, penalty, seen,
                             suppress if i < min_new_tokens else None, lp if want_logprobs else None)
        if can_finish:
            live = ~finished
            done = np.zeros(B, dtype=bool) if eos is None else (nxt[:, None] == eos).any(axis=1)
            if stopper is not None:
                for r in np.flatnonzero(live):
                    done[r] |= stopper.hit(int(r), int(nxt[r]))
        if seen is not None:
            seen[live, nxt[live]] = 1.0
        all_done = False
        if can_finish:
            if finished.any():
                nxt[finished] = fill
                lp[finished] = 0.0
            finished |= done
            all_done = finished.all()
        yield nxt[:, None].copy(), lp[:, None].copy(), live[:, None].copy()
        if i + 1 == max_new_tokens or all_done:
            return
        # Finished rows still step (the batch keeps its shape); what they
        # emit is never shown.
        session.push(nxt if fill >= 0 or not can_finish or not finished.any() else np.where(finished, 0, nxt))

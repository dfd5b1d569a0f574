"""The training loop: nanoGPT's ``train.py`` as a function.

:func:`fit` draws random windows (:func:`fastlm.data.get_batch`) with a
seeded ``np.random.Generator``, accumulates gradients over ``grad_accum``
micro-batches, clips by global norm, steps AdamW with a linear-warmup +
cosine learning rate (:func:`get_lr`), evaluates, checkpoints and reports
progress. A run resumed from its checkpoint continues with exactly the losses
the uninterrupted run would have had (same CPU, same thread count), because
the checkpoint holds everything the next step depends on: weights, AdamW
moments and step count, the batch sampler's RNG state, the step and the
count of micro-batches the dropout masks derive from.
"""
from __future__ import annotations

import math
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from . import distributed
from ._checks import MAX_SIZE, check_bool, check_float, check_int as _int
from .data import _check_tokens_1d, get_batch, iter_eval_batches, open_tokens
from .optim import OPTIMIZERS, check_betas as _check_betas, step_options as _step_options
from .zero import Zero1

__all__ = ["History", "fit", "evaluate", "estimate_loss", "get_lr"]

_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")


class History(list):
    """The log of a :func:`fit` run: a list with one dict per optimizer step::

        {"step": 1, "loss": 4.19, "lr": 1e-3, "grad_norm": 0.93,
         "tokens_per_sec": 51234.0, "mfu": 0.21, "train_loss": None, "val_loss": None}

    ``step`` counts completed steps (1-based); ``loss`` is the mean training
    loss of the step's micro-batches; ``mfu`` the step's model FLOPs
    utilisation (:mod:`fastlm.mfu`); ``train_loss`` and ``val_loss`` are
    set on evaluation steps (:func:`estimate_loss`) and None otherwise.
    Plain JSON-serialisable data.
    """

    def as_dict(self) -> Dict[str, List[Any]]:
        """Columns: ``{"step": [...], "loss": [...], ...}`` (keys of the first entry)."""
        keys: List[str] = []
        for e in self:
            for k in e:
                if k not in keys:
                    keys.append(k)
        return {k: [e.get(k) for e in self] for k in keys}

    @property
    def losses(self) -> List[float]:
        """The training loss of every step."""
        return [e["loss"] for e in self]

    @property
    def val_losses(self) -> List[Tuple[int, float]]:
        """``(step, val_loss)`` of every evaluation."""
        return [(e["step"], e["val_loss"]) for e in self if e.get("val_loss") is not None]


def get_lr(it: int, *, lr: float, warmup_steps: int, decay_steps: int, min_lr: float) -> float:
    """nanoGPT's schedule: the learning rate of step ``it`` (0-based).

    Linear warmup ``lr * (it + 1) / (warmup_steps + 1)`` for ``it <
    warmup_steps``; then cosine decay from ``lr`` to ``min_lr`` until
    ``decay_steps``; ``min_lr`` after.
    """
    if it < warmup_steps:
        return lr * (it + 1) / (warmup_steps + 1)
    if it > decay_steps or decay_steps <= warmup_steps:
        return min_lr
    ratio = (it - warmup_steps) / (decay_steps - warmup_steps)
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))
    return min_lr + coeff * (lr - min_lr)


# -------------------------------------------------------------------- arguments

def _tokens(tokens: Any, name: str, vocab_size: int, min_len: int) -> np.ndarray:
    """A 1-D integer array (memmaps stay memmaps) with ids in range; a str or
    path opens a token file."""
    if isinstance(tokens, (str, os.PathLike)):
        tokens = open_tokens(tokens)
    elif hasattr(tokens, "detach") and hasattr(tokens, "cpu"):
        tokens = tokens.detach().cpu().numpy()
    tokens = _check_tokens_1d(tokens, name)
    n = int(tokens.shape[0])
    if n < min_len:
        raise ValueError(f"{name} has {n} tokens; need at least {min_len}")
    lo, hi = int(tokens.min()), int(tokens.max())
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        pos = int(np.argmax(tokens == bad))
        raise ValueError(f"{name}[{pos}] = {bad} is out of range [0, {vocab_size}) (vocab_size of the model)")
    return tokens


def _rng_from_state(state: Any, where: str) -> np.random.Generator:
    try:
        name = state["bit_generator"]
        if name not in _BIT_GENERATORS:
            raise ValueError(name)
        bg = getattr(np.random, name)()
        bg.state = state
    except Exception:
        raise ValueError(f"{where}: corrupt data RNG state {str(state)[:80]!r}") from None
    return np.random.Generator(bg)


def _check_fit_record(rec: Any) -> None:
    """Check ``rec``, fit's record of its settings (``fit_args`` in :func:`fit`,
    kept as trainer_state.json's ``"fit"`` entry and reused by ``fastlm train
    --resume``), as fit checks its arguments; settings it lacks are fine.
    Raises ``TypeError`` or ``ValueError`` naming the first bad one."""
    if not isinstance(rec, dict):
        raise TypeError(f"fit's settings must be an object, got {type(rec).__name__}")
    for key, low, high in (("steps", 1, None), ("warmup_steps", 0, None), ("lr_decay_iters", 1, None),
                           ("batch_size", 1, MAX_SIZE),
                           ("grad_accum", 1, MAX_SIZE), ("block_size", 1, MAX_SIZE)):
        if key in rec and not (key == "lr_decay_iters" and rec[key] is None):  # None: decay over steps
            _int(rec[key], key, low, high)
    for key in ("lr", "min_lr", "weight_decay", "grad_clip", "momentum"):
        if key in rec:
            check_float(rec[key], key, 0.0, strict=key == "lr", below=1.0 if key == "momentum" else None)
    if "lr" in rec and rec.get("min_lr", 0.0) > rec["lr"]:
        raise ValueError(f"min_lr ({rec['min_lr']}) must not exceed lr ({rec['lr']})")
    if "betas" in rec:
        _check_betas(rec["betas"])
    for key in ("stateful", "decay_lr", "keep_best"):
        if key in rec:
            check_bool(rec[key], key)
    if "zero" in rec:
        _int(rec["zero"], "zero", 0, 1)
    if rec.get("optimizer", "adamw") not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {rec['optimizer']!r}")


# ------------------------------------------------------------------------- eval

def estimate_loss(model: Any, tokens: Any, *, batches: Optional[int], batch_size: int, block_size: int,
                  rng: np.random.Generator, world: Optional[distributed.World] = None) -> float:
    """nanoGPT's ``estimate_loss`` for one split: the mean loss of ``batches``
    random batches (:func:`fastlm.data.get_batch` with ``rng``) of
    ``batch_size`` windows of ``block_size`` tokens, no dropout, no gradients.
    ``batches=None``, or a split too short for one window, gives the loss over
    the whole split (:func:`evaluate`) instead. With a ``world`` of N ranks
    (same ``rng`` state on each) the batches are those of N * batch_size rows,
    rank r scoring rows r*b .. (r+1)*b - 1, and the sums are reduced."""
    if batches is None or int(tokens.shape[0]) < block_size + 1:
        return _eval_loss(model, tokens, batch_size, None, world)
    model._cache_owner = None
    if world is None:
        return float(np.mean([model._loss(*get_batch(tokens, batch_size, block_size, rng)) for _ in range(batches)]))
    rows = slice(world.rank * batch_size, (world.rank + 1) * batch_size)
    sums = np.zeros(2)  # loss * rows, rows
    for _ in range(batches):
        x, y = get_batch(tokens, batch_size * world.size, block_size, rng)
        sums += (model._loss(x[rows], y[rows]) * batch_size, batch_size)
    world.all_reduce(sums, "sum")
    return float(sums[0] / sums[1])


def evaluate(model: Any, tokens: Any, *, batch_size: int = 16, max_batches: Optional[int] = None) -> Dict[str, float]:
    """Mean next-token cross-entropy of ``model`` over ``tokens``.

    tokens: 1-D integer ids (array, memmap, or a token file path), at least 2.
    They are cut into consecutive windows of the model's training window
    (the Transformer's ``block_size``; 64 for the recurrent models, each window
    from a zero state), or ``len - 1`` when shorter, and grouped into batches of ``batch_size`` windows
    (:func:`fastlm.data.iter_eval_batches`), at most ``max_batches`` of them.
    Every predicted token weighs the same. Returns ``{"loss": float,
    "perplexity": exp(loss)}``; deterministic, no gradients.
    """
    batch_size = _int(batch_size, "batch_size", 1)
    if max_batches is not None:
        max_batches = _int(max_batches, "max_batches", 1)
    arr = _tokens(tokens, "tokens", model.vocab_size, 2)
    loss = _eval_loss(model, arr, batch_size, max_batches, None)
    perplexity = math.exp(loss) if loss < 700 else (float("nan") if math.isnan(loss) else float("inf"))
    return {"loss": loss, "perplexity": perplexity}


def _eval_loss(model: Any, arr: np.ndarray, batch_size: int, max_batches: Optional[int],
               world: Optional[distributed.World]) -> float:
    """:func:`evaluate`'s mean loss. With a ``world`` of N ranks, the batches
    are those of one process with ``N * batch_size`` rows, rank r scoring rows
    r*b .. (r+1)*b - 1 of each, and the sums are reduced over the ranks."""
    T = min(model._train_window(None), int(arr.shape[0]) - 1)
    model._cache_owner = None
    r, n = (world.rank, world.size) if world is not None else (0, 1)
    sums = np.zeros(2)  # loss * rows, rows
    for x, y in iter_eval_batches(arr, batch_size * n, T, max_batches):
        x, y = x[r * batch_size:(r + 1) * batch_size], y[r * batch_size:(r + 1) * batch_size]
        if x.shape[0]:
            sums += (model._loss(x, y) * x.shape[0], x.shape[0])
    if world is not None:
        world.all_reduce(sums, "sum")
    return float(sums[0] / sums[1])


# -------------------------------------------------------------------------- fit

class _Progress:
    """tqdm when it imports, otherwise a line on stderr now and then."""

    def __init__(self, enabled: bool, total: int, initial: int) -> None:
        self.bar = None
        self.enabled = enabled
        self.every = max(1, total // 20)
        if not enabled:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return
        self.bar = tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)

    def update(self, entry: Dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{entry['loss']:.4f}", lr=f"{entry['lr']:.2e}",
                                 tok_s=f"{entry['tokens_per_sec']:,.0f}", mfu=f"{entry['mfu']:.1%}",
                                 refresh=False)
            self.bar.update(1)
        elif entry["step"] % self.every == 0:
            self.write(f"step {entry['step']}: loss {entry['loss']:.4f}, lr {entry['lr']:.2e}, "
                       f"{entry['tokens_per_sec']:,.0f} tok/s, mfu {entry['mfu']:.1%}")

    def write(self, msg: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@distributed.collective("fit")
def fit(model: Any, train: Any, *, steps: int, batch_size: int, lr: float = 1e-3, warmup_steps: int = 0,
        min_lr: Optional[float] = None, lr_decay_iters: Optional[int] = None, decay_lr: bool = True,
        keep_best: bool = False, betas: Optional[Tuple[float, float]] = None,
        weight_decay: Optional[float] = None,
        grad_clip: Optional[float] = 1.0, grad_accum: int = 1, val: Any = None, eval_interval: int = 250,
        eval_batches: Optional[int] = 50, checkpoint_dir: Any = None, checkpoint_interval: Optional[int] = None,
        resume: bool = False, seed: Optional[int] = None, progress: bool = True,
        callback: Optional[Callable[[int, Dict[str, Any]], Any]] = None, block_size: Optional[int] = None,
        stateful: bool = False, optimizer: Optional[str] = None, momentum: Optional[float] = None,
        zero: int = 0) -> History:
    """Train ``model`` (any :class:`fastlm.lm.LanguageModel`), nanoGPT-style.

    train, val: 1-D integer token ids (array, ``np.memmap`` from
        :func:`fastlm.data.open_tokens`, or a token file path); ``train``
        needs at least block_size + 1 tokens, ``val`` (optional) at least 2.
    steps: total optimizer steps of the run (a resumed run continues up to
        ``steps``).
    batch_size: windows per micro-batch; each step uses ``grad_accum``
        micro-batches of ``batch_size`` windows of block_size + 1 tokens, drawn
        uniformly (:func:`fastlm.data.get_batch`), their gradients averaged.
    lr, warmup_steps, min_lr, lr_decay_iters: :func:`get_lr`, nanoGPT's
        schedule: warmup, cosine from lr to ``min_lr`` (default lr / 10) at
        step ``lr_decay_iters`` (default ``steps``), ``min_lr`` after.
    decay_lr: False trains at the constant ``lr`` (no warmup, no decay), as
        nanoGPT's ``decay_lr=False``.
    optimizer, betas, weight_decay, momentum: as :meth:`LanguageModel.step`;
        None takes the model's defaults (the Transformer: nanoGPT's AdamW,
        betas (0.9, 0.95), decay 0.1 on 2-D weights; the recurrent models:
        Adam, betas (0.9, 0.999), no decay).
    grad_clip: clip the global gradient norm to this (None or 0: off), as
        ``torch.nn.utils.clip_grad_norm_``.
    eval_interval, eval_batches: every ``eval_interval`` steps and at the end,
        estimate the train and the val loss as nanoGPT's ``estimate_loss``:
        the mean over ``eval_batches`` random batches of ``batch_size``
        windows of each split (None: over the whole splits), without dropout.
        The batches are drawn from a generator seeded by (seed, step), so
        evaluating never changes the training batches.
    checkpoint_dir, checkpoint_interval: save a checkpoint (:meth:`save`) every
        ``checkpoint_interval`` steps (default: ``eval_interval``), at the end
        and when stopped by ``callback``.
    keep_best: instead, save only at evaluations whose val loss is the best
        so far (nanoGPT's ``always_save_checkpoint=False``); the checkpoint
        then holds the best model and resumes from its step. Needs ``val``
        and ``checkpoint_dir``.
    resume: continue from the checkpoint in ``checkpoint_dir`` (weights,
        optimizer, step, batch RNG, history); ``FileNotFoundError`` if none.
    seed: seeds the batch sampler (default: the model's seed); ignored on resume.
    progress: show a tqdm bar (loss, lr, tokens/s, MFU against
        :func:`fastlm.mfu.peak_flops`) when tqdm imports.
    callback: ``callback(step, metrics)`` after every step, metrics being that
        step's history entry; returning ``False`` stops training.
    zero: 1 shards the Adam(W) moments over the ranks of an MPI job, ZeRO-1
        (:mod:`fastlm.zero`): each rank keeps and updates 1/N of them; the
        result, the checkpoints and the model when fit returns are those
        of the unsharded run (0, the default), up to float rounding.

    Under an MPI launcher (``mpirun -n N``), every rank runs ``fit`` with the
    same arguments and trains one model data-parallel: ``batch_size`` is per
    rank, rank r taking rows r*b .. (r+1)*b - 1 of the batch one process with
    ``N * batch_size`` would draw, so the run equals that process's up to the
    order of float sums (:mod:`fastlm.distributed`, docs/distributed.md).
    Rank 0 alone shows progress, calls ``callback`` (what it returns stops
    every rank) and writes checkpoints, which resume with any N.

    Returns the :class:`History` of the whole run (including the steps before
    a resume). Raises ``FloatingPointError`` if the loss becomes NaN or inf.
    """
    world = distributed.world()
    nranks, lead = world.size, world.rank == 0
    steps = _int(steps, "steps", 1)
    batch_size = _int(batch_size, "batch_size", 1)
    grad_accum = _int(grad_accum, "grad_accum", 1)
    warmup_steps = _int(warmup_steps, "warmup_steps", 0)
    lr = check_float(lr, "lr", 0.0, strict=True)
    min_lr = lr / 10 if min_lr is None else check_float(min_lr, "min_lr", 0.0)
    if min_lr > lr:
        raise ValueError(f"min_lr ({min_lr}) must not exceed lr ({lr})")
    if lr_decay_iters is not None:
        lr_decay_iters = _int(lr_decay_iters, "lr_decay_iters", 1)
    decay_lr = check_bool(decay_lr, "decay_lr")
    keep_best = check_bool(keep_best, "keep_best")
    opts = _step_options(model, optimizer=optimizer, betas=betas, weight_decay=weight_decay, momentum=momentum)
    optimizer, momentum = opts["optimizer"], check_float(opts["momentum"], "momentum", 0.0)
    b1, b2 = _check_betas(opts["betas"])
    weight_decay = check_float(opts["weight_decay"], "weight_decay", 0.0)
    grad_clip = 0.0 if grad_clip is None else check_float(grad_clip, "grad_clip", 0.0)
    eval_interval = _int(eval_interval, "eval_interval", 1)
    if eval_batches is not None:
        eval_batches = _int(eval_batches, "eval_batches", 1)
    checkpoint_interval = eval_interval if checkpoint_interval is None else _int(checkpoint_interval,
                                                                                 "checkpoint_interval", 1)
    if not isinstance(resume, bool):
        raise TypeError(f"resume must be a bool, got {type(resume).__name__}")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir (the directory to resume from)")
    if keep_best and (checkpoint_dir is None or val is None):
        raise ValueError("keep_best=True needs val (to judge by) and checkpoint_dir (to keep the best in)")
    if checkpoint_dir is not None:
        try:
            checkpoint_dir = os.fspath(checkpoint_dir)
        except TypeError:
            raise TypeError("checkpoint_dir must be a str or os.PathLike, got "
                            f"{type(checkpoint_dir).__name__}") from None
        from .checkpoint import check_save_target
        check_save_target(checkpoint_dir)  # refused now rather than at the first save
    if seed is not None:
        seed = _int(seed, "seed", 0, 2**63 - 1)  # a checkpoint stores it as an int64
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, got {type(callback).__name__}")
    if not isinstance(stateful, bool):
        raise TypeError(f"stateful must be a bool, got {type(stateful).__name__}")
    if stateful and not model.STATEFUL:
        raise ValueError(f"stateful=True needs a recurrent model; {type(model).__name__} has no state to carry")
    zero = _int(zero, "zero (0: off, 1: ZeRO-1)", 0, 1)
    if zero and optimizer == "sgd":
        raise ValueError("zero=1 shards the Adam(W) moments; optimizer='sgd' cannot use it (pass zero=0)")
    block = model._train_window(block_size)
    V = model.vocab_size
    # Stateful: each of the batch_size streams of every rank needs a window plus its target.
    train = _tokens(train, "train", V, batch_size * nranks * (block + 1) if stateful else block + 1)
    if val is not None:
        val = _tokens(val, "val", V, 2)

    fit_args = {"steps": steps, "batch_size": batch_size, "grad_accum": grad_accum, "lr": lr,
                "warmup_steps": warmup_steps, "min_lr": min_lr, "betas": [b1, b2], "weight_decay": weight_decay,
                "grad_clip": grad_clip, "block_size": block, "stateful": stateful, "optimizer": optimizer,
                "momentum": momentum, "world_size": nranks, "lr_decay_iters": lr_decay_iters, "decay_lr": decay_lr,
                "keep_best": keep_best, "zero": zero}
    if resume:
        from .checkpoint import TRAINER_STATE_FILE, load_checkpoint
        ckpt = load_checkpoint(checkpoint_dir)
        state = ckpt.trainer_state
        where = os.path.join(checkpoint_dir, TRAINER_STATE_FILE)
        if state is None or state.get("data_rng") is None:
            raise ValueError(f"cannot resume from {checkpoint_dir!r}: {where!r} is missing or has no data RNG state "
                             "(the checkpoint was not written by fit)")
        rng = _rng_from_state(state["data_rng"], where)
        model._restore(ckpt)  # only once the checkpoint can be resumed: a refusal leaves the model as it was
        state = model._train_state
        start = int(state["step"])
        stream_pos = int(state.get("stream_pos", 0))
        history = History(state.get("history", []))
        seed = state.get("seed", seed)
        best_val = state.get("best_val_loss")
    else:
        seed = model.config["seed"] if seed is None else seed
        rng = np.random.default_rng(seed)
        start = 0
        stream_pos = 0
        history = History()
        best_val = None
    if nranks > 1:
        # Rank 0's weights and moments on every rank; under ZeRO-1 each rank takes its range of the moments (Zero1).
        which = ("params",) if zero else ("params", "adam_m", "adam_v")
        shared = [model._tensors.flat(w) for w in which]
        world.start("fit", {
            "model": f"{type(model).__name__} {model.config}", "settings": fit_args, "seed": seed,
            "resume": resume, "start step": start, "optimizer step": model.optimizer_step,
            "train tokens": distributed.data_fingerprint(train), "val tokens": distributed.data_fingerprint(val),
            "data RNG": rng.bit_generator.state}, shared)
        for w, buf in zip(which, shared):
            model._tensors.write_flat(w, buf)  # a no-op copy onto itself for a CPU model's views
    sharded = Zero1(world, model) if zero else None  # from the moments every rank now holds
    # Each rank's rows of the global batch of nranks * batch_size.
    rows = slice(world.rank * batch_size, (world.rank + 1) * batch_size)

    if stateful:
        # batch_size * nranks contiguous streams side by side, walked window by window; this rank's rows.
        stream_len = int(train.shape[0]) // (batch_size * nranks)
        streams = np.asarray(train[:stream_len * batch_size * nranks]).reshape(-1, stream_len)[rows]
        if nranks > 1 and resume:
            model._carried = distributed.state_rows(model._carried, rows, batch_size * nranks)

    def save() -> None:
        """Rank 0 writes the checkpoint; a stateful run's holds every rank's streams."""
        gather = stateful and nranks > 1
        if gather:
            own = model._carried
            model._carried = distributed.gather_state(world, own)
        if sharded is not None:
            sharded.gather_moments(root=0)
        try:
            if lead:
                model.save(checkpoint_dir)
        finally:
            if gather:
                model._carried = own
            if sharded is not None:
                sharded.shard_moments()

    def next_batch() -> Tuple[np.ndarray, np.ndarray, bool]:
        nonlocal stream_pos
        if not stateful:
            x, y = get_batch(train, batch_size * nranks, block, rng)
            return x[rows], y[rows], False
        if stream_pos + block + 1 > stream_len:
            stream_pos = 0
        carry = stream_pos > 0
        x = np.ascontiguousarray(streams[:, stream_pos:stream_pos + block], dtype=np.int64)
        y = np.ascontiguousarray(streams[:, stream_pos + 1:stream_pos + block + 1], dtype=np.int64)
        stream_pos += block
        return x, y, carry

    g = model._g
    model._cache_owner = None
    tokens_per_step = batch_size * block * grad_accum * nranks
    from .mfu import mfu, peak_flops
    # Every rank's threads: the peak of one process times the ranks (of one machine's kind).
    flops_per_token = model._flops_per_token(block)
    peak = peak_flops(model.config.get("precision", "fp32")) * nranks
    bar = _Progress(bool(progress) and lead, steps, start)
    saved_at = -1
    try:
        for it in range(start, steps):
            lr_t = get_lr(it, lr=lr, warmup_steps=warmup_steps, decay_steps=lr_decay_iters or steps,
                          min_lr=min_lr) if decay_lr else lr
            t0 = time.perf_counter()
            g.zero_grad()
            loss_sum = 0.0
            for _ in range(grad_accum):
                x, y, carry = next_batch()
                loss_sum += model._forward_backward(x, y, 1.0 / (grad_accum * nranks), carry)
            loss = loss_sum / grad_accum
            if sharded is not None:  # this rank's range of the gradients, and the global norm
                loss, norm = sharded.reduce(loss)
            elif nranks > 1:  # scaled by 1 / nranks above, so the sums are the means
                grads = model._tensors.flat("grads")  # a CPU model's is a view, reduced in place
                world.all_reduce(grads, "sum")
                if not model._tensors.host:
                    model._tensors.write_flat("grads", grads)
                loss = float(world.all_reduce(np.array([loss]), "mean")[0])
            if not math.isfinite(loss):
                raise distributed.raised_alike(FloatingPointError(  # the loss is every rank's mean
                    f"training diverged: loss is {loss} at step {it + 1} (try a lower lr or a smaller grad_clip)"))
            if sharded is None:
                norm = float(g.grad_norm())
            scale = min(1.0, grad_clip / (norm + 1e-6)) if grad_clip > 0 else 1.0
            step_opts = {"optimizer": optimizer, "betas": (b1, b2), "eps": 1e-8, "weight_decay": weight_decay,
                         "momentum": momentum, "grad_scale": scale}
            if sharded is None:
                model._apply_step(lr_t, step_opts)
            else:
                sharded.step(lr_t, step_opts)
            dt = time.perf_counter() - t0
            step = it + 1
            tok_s = tokens_per_step / dt if dt > 0 else float("inf")
            entry: Dict[str, Any] = {"step": step, "loss": loss, "lr": lr_t, "grad_norm": norm,
                                     "tokens_per_sec": tok_s, "mfu": mfu(flops_per_token, tok_s, peak),
                                     "train_loss": None, "val_loss": None}
            improved = False
            if step % eval_interval == 0 or step == steps:
                splits = {"train_loss": train} if val is None else {"train_loss": train, "val_loss": val}
                for key, split in splits.items():
                    entry[key] = estimate_loss(model, split, batches=eval_batches, batch_size=batch_size,
                                               block_size=block, rng=np.random.default_rng([seed, step]),
                                               world=world if nranks > 1 else None)
                msg = f"step {step}: train loss {entry['train_loss']:.4f}"
                if val is not None:
                    msg += f", val loss {entry['val_loss']:.4f}"
                    improved = best_val is None or entry["val_loss"] < best_val
                    best_val = entry["val_loss"] if improved else best_val
                bar.write(msg)
            history.append(entry)
            model._train_state = {"step": step, "seed": seed, "data_rng": rng.bit_generator.state,
                                  "stream_pos": stream_pos, "dropout_calls": model._dropout_calls,
                                  "best_val_loss": best_val, "history": history, "fit": fit_args}
            bar.update(entry)
            if checkpoint_dir is not None and (improved if keep_best else
                                               step % checkpoint_interval == 0 or step == steps):
                save()
                saved_at = step
            stop = lead and callback is not None and callback(step, dict(entry)) is False
            if callback is not None and nranks > 1:
                stop = world.broadcast_object(stop)
            if stop:
                if checkpoint_dir is not None and saved_at != step and not keep_best:
                    save()
                break
    finally:
        bar.close()
    if sharded is not None:  # the model fit returns holds every moment, as an unsharded run's
        sharded.gather_moments()
    world.barrier()  # the last checkpoint is complete when fit returns on any rank
    return history

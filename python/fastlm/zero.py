"""ZeRO-1: the AdamW state of a data-parallel :func:`fastlm.train.fit` sharded
over its ranks (``fit(zero=1)``, ``fastlm train --zero 1``), as llm.c's
``-z 1`` and DeepSpeed's stage 1.

Rank r of N owns a contiguous range of the model's flat parameter vector, an
N-th of it (:func:`shard_counts`) whose ends fall wherever they fall, inside
a tensor or not, and its model holds the AdamW moments of that range alone
(``core.set_moment_range``: the C++ parameter store's moment buffers, on the
model's device, ``8n/N`` bytes instead of ``8n``). Each step replaces plain
data parallelism's all-reduce of the gradients with:

1. a reduce-scatter of the gradients, in place: each rank's gradient buffer
   receives, on its range, the sum over the ranks (each rank scaled its own
   by 1/N as it made them, so the sum is the mean);
2. one all-reduce of two numbers, the loss and the range's sum of squares,
   which gives the global gradient norm for clipping;
3. AdamW on the range alone: the store's step over [lo, hi) (the kernel
   calls of the whole-vector step, cut at lo and hi; weight decay follows the
   tensor each element belongs to);
4. an all-gather of the parameters: every rank's range onto every rank.

Every element goes through the same float32 arithmetic as in the unsharded
step, so the run equals plain data parallelism up to the order of the sums
in the two reductions. The full moments exist only when gathered: onto rank
0 for a checkpoint (and sharded again after it), and onto every rank when
``fit`` returns, so a checkpoint is that of an unsharded run, and either kind
resumes the other. The model's gradient buffer holds the reduced gradients
on the rank's range and unspecified values (partial sums) elsewhere.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from . import ops

__all__ = ["Zero1", "shard_counts"]

MOMENTS = ("adam_m", "adam_v")


def shard_counts(n: int, nranks: int) -> List[int]:
    """How many of ``n`` elements each of ``nranks`` ranks owns, in rank order:
    ``n // nranks``, one more for the first ``n % nranks`` ranks."""
    return [n // nranks + (r < n % nranks) for r in range(nranks)]


class Zero1:
    """The sharded AdamW of one data-parallel fit of ``model`` on ``world``
    (a :class:`fastlm.distributed.World`). Made once the ranks hold the same
    parameters: each rank takes its range of rank 0's moments (as the start
    of an unsharded fit broadcasts them) and its model releases the rest."""

    def __init__(self, world: Any, model: Any) -> None:
        self.world, self.model = world, model
        g = model._g
        self.n = int(g.num_parameters())
        self.counts = shard_counts(self.n, world.size)
        self.lo = sum(self.counts[:world.rank])
        self.hi = self.lo + self.counts[world.rank]
        model._use_optimizer("adamw")
        # Moments never used are zeros: nothing to send, and the full ones are never allocated.
        held = world.broadcast_object(int(g.moment_bytes()) > 0)
        mine: Dict[str, np.ndarray] = {}
        for which in MOMENTS if held else ():
            full = model._tensors.flat(which) if world.rank == 0 else None
            mine[which] = world.scatter(full, np.empty(self.hi - self.lo, np.float32), self.counts)
            del full
        with model._lock:
            g.set_moment_range(self.lo, self.hi)  # releases the full moments
            for which, values in mine.items():
                g.write(which, values, self.lo)

    def reduce(self, loss: float) -> Tuple[float, float]:
        """Reduce-scatter the model's gradients, in place, into this rank's
        range of its gradient buffer; returns the loss averaged over the ranks
        and the global gradient norm."""
        w, tensors = self.world, self.model._tensors
        grads = tensors.flat("grads")  # a CPU model's is a view: no second buffer
        mine = w.reduce_scatter_in_place(grads, self.counts)[self.lo:self.hi]
        if not tensors.host:
            self.model._g.write("grads", mine, self.lo)
        sums = np.array([loss, ops.sum_squares(mine)])
        w.all_reduce(sums, "sum")
        return float(sums[0] * (1.0 / w.size)), math.sqrt(sums[1])

    def step(self, lr: float, opts: Any) -> None:
        """One AdamW update of this rank's range from the reduced gradients
        (``opts``: fit's betas, eps, weight_decay, grad_scale), then the
        parameters all-gathered."""
        model, g, tensors = self.model, self.model._g, self.model._tensors
        b1, b2 = opts["betas"]
        with model._lock:
            model._cache_owner = None
            g.step(lr, b1, b2, opts["eps"], opts["weight_decay"], opts["grad_scale"], self.lo, self.hi)
            if tensors.host:
                self.world.all_gather(tensors.flat("params"), self.counts)  # in place, a view
                g.weights_changed()
            else:
                params = np.empty(self.n, np.float32)
                params[self.lo:self.hi] = g.read("params", self.lo, self.hi - self.lo)
                tensors.write_flat("params", self.world.all_gather(params, self.counts))

    def gather_moments(self, root: Optional[int] = None) -> None:
        """Assemble the full moments in the model: on rank ``root`` alone (for
        its checkpoint; :meth:`shard_moments` then releases them), or on every
        rank (None: the end of the fit)."""
        model, g, tensors = self.model, self.model._g, self.model._tensors
        whole = root is None or self.world.rank == root
        with model._lock:
            mine = {w: g.read(w, self.lo, self.hi - self.lo) for w in MOMENTS}
            if whole:
                g.set_moment_range(0, self.n)
        for which in MOMENTS:
            if not whole:
                self.world.gather_blocks(mine.pop(which), None, self.counts, root)
                continue
            full = tensors.flat(which) if tensors.host else np.empty(self.n, np.float32)
            if root is None:
                full[self.lo:self.hi] = mine.pop(which)
                self.world.all_gather(full, self.counts)
            else:
                self.world.gather_blocks(mine.pop(which), full, self.counts, root)
            if not tensors.host:
                tensors.write_flat(which, full)
            del full

    def shard_moments(self) -> None:
        """Back to this rank's range alone after :meth:`gather_moments` (a
        no-op where the moments stayed sharded)."""
        g = self.model._g
        with self.model._lock:
            if tuple(g.moment_range()) == (self.lo, self.hi):
                return
            mine = {w: g.read(w, self.lo, self.hi - self.lo) for w in MOMENTS}
            g.set_moment_range(self.lo, self.hi)
            for which, values in mine.items():
                g.write(which, values, self.lo)

"""ZeRO-1: the AdamW state of a data-parallel :func:`fastlm.train.fit` sharded
over its ranks (``fit(zero=1)``, ``fastlm train --zero 1``), as llm.c's
``-z 1`` and DeepSpeed's stage 1.

Rank r of N owns a contiguous range of the model's flat parameter vector, an
N-th of it (:func:`shard_counts`) whose ends fall wherever they fall, inside
a tensor or not. Each step replaces plain data parallelism's all-reduce of
the gradients with:

1. a reduce-scatter of the gradients: each rank receives the sum over the
   ranks of its range (each rank scaled its own by 1/N as it made them, so
   the sum is the mean);
2. one all-reduce of two numbers, the loss and the range's sum of squares,
   which gives the global gradient norm for clipping;
3. AdamW on the range alone (:func:`fastlm.ops.adamw_step`, the kernel the
   unsharded step runs), with moments of the range's size; weight decay
   follows the tensor each element belongs to (:func:`fastlm.optim.decays`);
4. an all-gather of the parameters: every rank's range onto every rank.

Every element goes through the same float32 arithmetic as in the unsharded
step, so the run equals plain data parallelism up to the order of the sums
in the two reductions. The full moments exist only when gathered: onto rank
0 for a checkpoint, and onto every rank when ``fit`` returns, so a checkpoint
is that of an unsharded run, and either kind resumes the other. The reduced
gradients exist only as ranges: the model's gradient buffer keeps the rank's
own contribution.
"""
from __future__ import annotations

import math
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from . import ops
from .optim import decays

__all__ = ["Zero1", "shard_counts"]


def shard_counts(n: int, nranks: int) -> List[int]:
    """How many of ``n`` elements each of ``nranks`` ranks owns, in rank order:
    ``n // nranks``, one more for the first ``n % nranks`` ranks."""
    return [n // nranks + (r < n % nranks) for r in range(nranks)]


def decay_runs(layout: Sequence[Tuple[str, Tuple[int, ...], int]], lo: int, hi: int) -> List[Tuple[int, int, bool]]:
    """The elements [lo, hi) of a flat parameter vector that belong to a tensor
    of ``layout`` ((name, shape, offset) each), as ranges ``(a, b, decay)``
    relative to ``lo`` with whether weight decay applies: the per-element
    decay mask, run-length coded so that each run is one kernel call."""
    runs: List[Tuple[int, int, bool]] = []
    for _, shape, off in sorted(layout, key=lambda t: t[2]):
        a, b = max(off, lo), min(off + int(np.prod(shape, dtype=np.int64)), hi)
        if a >= b:
            continue
        decay = decays(shape)
        if runs and runs[-1][1] == a - lo and runs[-1][2] == decay:
            runs[-1] = (runs[-1][0], b - lo, decay)
        else:
            runs.append((a - lo, b - lo, decay))
    return runs


class Zero1:
    """The sharded AdamW of one data-parallel fit of ``model`` on ``world``
    (a :class:`fastlm.distributed.World`). Made once the ranks hold the same
    parameters and moments; it keeps this rank's range of the moments."""

    def __init__(self, world: Any, model: Any) -> None:
        self.world, self.model = world, model
        self.counts = shard_counts(int(model._g.num_parameters()), world.size)
        self.lo = sum(self.counts[:world.rank])
        self.hi = self.lo + self.counts[world.rank]
        model._use_optimizer("adamw")
        self.runs = decay_runs(model._tensors.layout, self.lo, self.hi)
        self.m = np.array(model._tensors.flat("adam_m")[self.lo:self.hi])
        self.v = np.array(model._tensors.flat("adam_v")[self.lo:self.hi])
        self.grad = np.empty(self.hi - self.lo, np.float32)  # this rank's range of the reduced gradients

    def reduce(self, loss: float) -> Tuple[float, float]:
        """Reduce-scatter the model's gradients into this rank's range; returns
        the loss averaged over the ranks and the global gradient norm."""
        w = self.world
        w.reduce_scatter(self.model._tensors.flat("grads"), self.grad, self.counts)
        sums = np.array([loss, ops.sum_squares(self.grad)])
        w.all_reduce(sums, "sum")
        return float(sums[0] * (1.0 / w.size)), math.sqrt(sums[1])

    def step(self, lr: float, opts: Any) -> None:
        """One AdamW update of this rank's range from the reduced gradients
        (``opts``: fit's betas, eps, weight_decay, grad_scale), then the
        parameters all-gathered."""
        model, tensors = self.model, self.model._tensors
        b1, b2 = opts["betas"]
        scale = np.float32(opts["grad_scale"])
        with model._lock:
            model._cache_owner = None
            if scale != 1:  # rounded to float32 as the kernel's own grad_scale would be
                np.multiply(self.grad, scale, out=self.grad)
            step = int(model._g.step_count) + 1
            params = tensors.flat("params")
            mine = params[self.lo:self.hi]
            for a, b, decay in self.runs:
                ops.adamw_step(mine[a:b], self.grad[a:b], self.m[a:b], self.v[a:b], lr=lr, beta1=b1, beta2=b2,
                               eps=opts["eps"], weight_decay=opts["weight_decay"] if decay else 0.0, step=step)
            model._g.step_count = step
            self.world.all_gather(params, self.counts)
            if tensors.host:
                model._g.weights_changed()
            else:
                tensors.write_flat("params", params)

    def gather_moments(self, root: Optional[int] = None) -> None:
        """Assemble the full moments in the model's buffers: on rank ``root``
        alone (for its checkpoint), or on every rank (None)."""
        tensors = self.model._tensors
        for which, mine in (("adam_m", self.m), ("adam_v", self.v)):
            full = tensors.flat(which)
            full[self.lo:self.hi] = mine
            if root is None:
                self.world.all_gather(full, self.counts)
            else:
                self.world.gather(full, self.counts, root)
            if not tensors.host:
                tensors.write_flat(which, full)

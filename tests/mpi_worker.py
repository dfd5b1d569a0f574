"""One rank of the jobs tests/test_distributed.py starts with ``mpirun -n N``.

    python mpi_worker.py SCENARIO OUT_DIR [ARGS...]

Scenarios write what the test checks into OUT_DIR (rank 0's parameters as
.npy; a line per checkpoint save in saves.txt) or fail on purpose.
"""
from __future__ import annotations

import os
import sys

import numpy as np

import fastlm
from fastlm import distributed as dist

V = 29


def corpus() -> np.ndarray:
    return np.random.default_rng(0).integers(0, V, 4000)


def make(kind: str, seed: int = 1, device: str = "cpu") -> fastlm.LanguageModel:
    """``kind``: transformer, transformer-odd (16,835 parameters: neither 2 nor
    3 ranks share them evenly), lstm (10,021), or lstm-stateful (trained with
    stateful=True)."""
    if kind == "transformer":
        return fastlm.Transformer(V, block_size=16, n_layer=2, n_head=2, n_embd=32, seed=seed, device=device)
    if kind == "transformer-odd":
        return fastlm.Transformer(V + 1, block_size=16, n_layer=1, n_head=5, n_embd=35, seed=seed, device=device)
    return fastlm.LSTMLM(V, embed_dim=16, hidden_size=24, num_layers=2, seed=seed, device=device)


def fit_args(batch_size: int, steps: int, kind: str = "") -> dict:
    """The settings every scenario trains with (the test's one-process run too)."""
    data = corpus()
    return dict(train=data, steps=steps, batch_size=batch_size, lr=1e-3, block_size=16, val=data[:700],
                eval_interval=2, eval_batches=3, progress=False, seed=3, stateful=kind.endswith("stateful"),
                grad_accum=2 if kind == "lstm" else 1)


def count_saves(out: str) -> None:
    """Log every checkpoint save with the rank that made it."""
    save = fastlm.LanguageModel.save

    def logged(self, path):  # type: ignore[no-untyped-def]
        with open(os.path.join(out, "saves.txt"), "a") as f:
            f.write(f"{dist.rank()}\n")
        save(self, path)

    fastlm.LanguageModel.save = logged


def fail_on_rank1_at(model: fastlm.LanguageModel, step: int, how: str) -> None:
    """Make rank 1 fail in its forward/backward of ``step`` (1-based): after step
    ``step - 1``'s all-reduce, so rank 0 has written the checkpoints before it."""
    if dist.rank() != 1:
        return
    inner = model._forward_backward
    calls = [0]

    def failing(*a):  # type: ignore[no-untyped-def]
        calls[0] += 1
        if calls[0] == step:
            if how == "raise":
                raise RuntimeError("injected failure on rank 1")
            if how == "exit":
                sys.exit(3)
            os.kill(os.getpid(), 9)
        return inner(*a)

    model._forward_backward = failing


def record_moments(model: fastlm.LanguageModel) -> list:
    """A list that gets, at every forward/backward, [bytes of optimizer moments
    the model holds, the range they cover]."""
    inner, seen = model._forward_backward, []

    def recording(*a):  # type: ignore[no-untyped-def]
        seen.append([model._g.moment_bytes(), *model._g.moment_range()])
        return inner(*a)

    model._forward_backward = recording
    return seen


def main() -> None:
    scenario, out = sys.argv[1], sys.argv[2]
    rest = sys.argv[3:]
    if scenario == "train":  # KIND BATCH STEPS [resume | STOP_AT (a callback stops there)] [zero]
        kind, b, steps = rest[0], int(rest[1]), int(rest[2])
        resume = "resume" in rest[3:]
        stop_at = next((int(a) for a in rest[3:] if a.isdigit()), None)
        count_saves(out)
        model = make(kind)
        ckpt = os.path.join(out, "ckpt")
        hist = model.fit(checkpoint_dir=ckpt, checkpoint_interval=2, resume=resume, **fit_args(b, steps, kind),
                         callback=None if stop_at is None else (lambda step, m: step < stop_at),
                         zero=int("zero" in rest[3:]))
        if dist.rank() == 0:
            np.save(os.path.join(out, "params.npy"), model._g.flat_params().copy())
            np.save(os.path.join(out, "losses.npy"), np.array([[e["loss"], e["val_loss"] or 0] for e in hist]))
    elif scenario == "zero":  # KIND GRAD_CLIP: plain data-parallel and ZeRO-1, 10 steps each
        kind, clip = rest[0], float(rest[1])
        runs, held = {}, {}
        for zero in (0, 1):
            model = make(kind)
            held[zero] = record_moments(model)
            hist = model.fit(**fit_args(2, 10, kind), grad_clip=clip, optimizer="adamw", weight_decay=0.1, zero=zero)
            held[zero].append([model._g.moment_bytes(), *model._g.moment_range()])  # after fit: all of them
            runs[zero] = [model._tensors.flat(w).copy() for w in ("params", "adam_m", "adam_v")]
            runs[zero].append(np.array([e["grad_norm"] for e in hist] + [model.optimizer_step]))
        np.save(os.path.join(out, f"zero{dist.rank()}.npy"), np.stack(runs[1][:3]))
        np.save(os.path.join(out, f"held{dist.rank()}.npy"), np.array([held[0], held[1]]))
        if dist.rank() == 0:
            for zero, arrays in runs.items():
                np.savez(os.path.join(out, f"run{zero}.npz"), *arrays)
    elif scenario == "blocks":  # every block collective, on blocks of 3, 0 and 2 elements
        w = dist.world()
        counts = [3, 0, 2][:w.size]
        n = sum(counts)
        mine = np.empty(counts[w.rank], np.float32)
        w.reduce_scatter(np.arange(n, dtype=np.float32) * (w.rank + 1), mine, counts)
        lo = sum(counts[:w.rank])
        gathered = np.full(n, -1.0, np.float32)
        gathered[lo:lo + counts[w.rank]] = 10 * w.rank + np.arange(counts[w.rank])
        on_root = gathered.copy()
        w.all_gather(gathered, counts)
        w.gather(on_root, counts, root=w.size - 1)
        # The same from blocks held alone: rank 0's vector scattered, then gathered onto the last rank.
        block = w.scatter(np.arange(n, dtype=np.float32) + 100 if w.rank == 0 else None,
                          np.empty(counts[w.rank], np.float32), counts)
        whole = w.gather_blocks(block * 2, np.zeros(n, np.float32) if w.rank == w.size - 1 else None, counts,
                                root=w.size - 1)
        in_place = w.reduce_scatter_in_place(np.arange(n, dtype=np.float32) * (w.rank + 1), counts)
        np.save(os.path.join(out, f"blocks{w.rank}.npy"),
                np.concatenate([mine, gathered, on_root, block, in_place] + ([whole] if whole is not None else [])))
    elif scenario == "fail":  # HOW: raise, exit or kill on rank 1 at step 4
        model = make("transformer")
        fail_on_rank1_at(model, 4, rest[0])
        model.fit(checkpoint_dir=os.path.join(out, "ckpt"), checkpoint_interval=2, **fit_args(2, 50))
    elif scenario == "zero-on-rank1":  # ZeRO-1 asked for on one rank only: refused at the start
        make("transformer").fit(**fit_args(2, 3), zero=int(dist.rank() == 1))
    elif scenario == "seeds":  # each rank a different seed: refused at the start
        make("transformer", seed=1 + dist.rank()).fit(**fit_args(2, 3))
    elif scenario == "bad-batch":  # a bad argument on every rank: reported once
        make("transformer").fit(**dict(fit_args(2, 3), batch_size=0))
    elif scenario == "bad-batch-rank1":  # a bad argument on rank 1 alone: agreed on, reported once
        make("transformer").fit(**dict(fit_args(2, 3), batch_size=0 if dist.rank() == 1 else 2))
    elif scenario == "raise-outside-fit":  # rank 1 raises while rank 0 waits in a barrier
        dist.world()
        if dist.rank() == 1:
            raise KeyError("raised outside fit on rank 1")
        dist.barrier()
    elif scenario == "collectives":
        w = dist.world()
        x = np.full(5, float(w.rank + 1), dtype=np.float32)
        dist.all_reduce(x)
        y = np.arange(3.0) * (w.rank + 1)
        dist.all_reduce(y, "sum")
        z = np.full(4, w.rank, dtype=np.int32)
        dist.broadcast(z, root=1)
        dist.barrier()
        np.save(os.path.join(out, f"collectives{w.rank}.npy"),
                np.concatenate([x, y, z, [w.size, w.local_rank, w.local_size]]))
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")


if __name__ == "__main__":
    main()

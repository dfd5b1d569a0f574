"""Data-parallel training on one machine: N ranks x 1 thread against 1 rank x N
threads on the same work, N ranks with ZeRO-1 beside them, and the all-reduce
bandwidth MPI reaches.

    PYTHONPATH=python python bench/distributed.py                 # ~2 minutes on 2 cores
    PYTHONPATH=python python bench/distributed.py --rounds 2 --steps 4 --max-mib 4   # a smoke run

Needs mpi4py and mpirun (``pip install 'fastlm[mpi]'``). Each round runs
``mpirun -n N`` (N ranks, 1 kernel thread each, ``batch/N`` rows per rank)
again with ``zero=1`` (ZeRO-1: the AdamW moments sharded over the ranks),
and one process (N threads, ``batch`` rows), in turn, so that load from
other processes hits each alike; all train the same model on the same
global batch, so their steps do the same arithmetic. Prints the median
training tokens/s and step time of each (steps after the first two), the
bytes of AdamW moments each rank's model holds, and the ratios, then
``MPI_Allreduce`` of float32 buffers from 4 KiB up: time, algorithm bandwidth
(bytes / time) and bus bandwidth (2(N-1)/N bytes / time, the ring's traffic
per link, as nccl-tests reports it); last, the memory per rank of plain
data-parallel against ZeRO-1 on a wider GPT (``--mem-model``): the moment
bytes its parameter store holds and the peak RSS during training.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.abspath(__file__)
MODELS = {  # bench/README's small GPT and LSTM configurations, and a wider GPT for the memory table
    "gpt": dict(kind="transformer", arch=dict(block_size=64, n_layer=4, n_head=4, n_embd=128), vocab=65),
    "lstm": dict(kind="lstm", arch=dict(embed_dim=256, hidden_size=256, num_layers=2), vocab=65),
    "gpt-wide": dict(kind="transformer", arch=dict(block_size=64, n_layer=4, n_head=8, n_embd=512), vocab=65),
}


def _peak_rss() -> int:
    """This process's peak resident set so far, bytes (VmHWM)."""
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _train_worker(a: argparse.Namespace) -> None:
    import numpy as np
    import fastlm
    from fastlm import distributed as dist
    fastlm.set_num_threads(a.threads)
    spec = MODELS[a.model]
    cls = fastlm.Transformer if spec["kind"] == "transformer" else fastlm.LSTMLM
    model = cls(spec["vocab"], seed=1, **spec["arch"])
    data = np.random.default_rng(0).integers(0, spec["vocab"], 200_000)
    n = dist.world_size()
    # Memory as each step begins (the last one's: the peak of every step before), on every rank: the
    # moment bytes the model's store holds and the process's peak RSS. When fit returns, ZeRO-1 gathers
    # the full moments onto every rank, so the peak after it is no longer the training's.
    inner, seen = model._forward_backward, {}

    def measured(*args):  # type: ignore[no-untyped-def]
        seen.update(moments=int(model._g.moment_bytes()), rss=_peak_rss())
        return inner(*args)

    model._forward_backward = measured
    hist = model.fit(data, steps=a.steps, batch_size=a.batch // n, block_size=64, progress=False, zero=a.zero)
    ranks = dist.world().all_gather_object(seen)
    if dist.rank() == 0:
        tok_s = statistics.median(e["tokens_per_sec"] for e in hist[2:])
        print(json.dumps({"tok_s": tok_s, "step_ms": 1e3 * a.batch * 64 / tok_s, "params": model.num_parameters(),
                          "state_bytes": max(r["moments"] for r in ranks), "rss": max(r["rss"] for r in ranks),
                          "threads": fastlm.get_num_threads(), "ranks": n}), flush=True)


def _allreduce_worker(a: argparse.Namespace) -> None:
    import numpy as np
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    n = comm.Get_size()
    rows = []
    size = 4096
    while size <= a.max_mib << 20:
        buf = np.ones(size // 4, dtype=np.float32)
        reps = max(3, min(200, (64 << 20) // size))
        comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)  # warm-up: pages, connections
        times = []
        for _ in range(reps):
            comm.Barrier()
            t0 = time.perf_counter()
            comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
            times.append(time.perf_counter() - t0)
        t = comm.allreduce(statistics.median(times), op=MPI.MAX)
        rows.append((size, t, size / t / 1e9, 2 * (n - 1) / n * size / t / 1e9))
        size *= 4
    if comm.Get_rank() == 0:
        print(json.dumps(rows), flush=True)


def _run(cmd, env) -> str:
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}{p.stderr}")
    return p.stdout.strip().splitlines()[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--model", choices=sorted(MODELS), default="gpt")
    ap.add_argument("--batch", type=int, default=16, help="global batch (rows per step)")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--max-mib", type=int, default=256, help="largest all-reduce buffer, MiB")
    ap.add_argument("--worker", choices=["train", "allreduce"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--zero", type=int, choices=(0, 1), default=0)
    ap.add_argument("--mem-model", choices=sorted(MODELS), default="gpt-wide",
                    help="the model of the per-rank memory table")
    ap.add_argument("--mem-rounds", type=int, default=3)
    a = ap.parse_args()
    if a.worker == "train":
        return _train_worker(a)
    if a.worker == "allreduce":
        return _allreduce_worker(a)
    if a.batch % a.ranks:
        ap.error(f"--batch {a.batch} must be divisible by --ranks {a.ranks}")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    common = [HERE, "--worker", "train", "--model", a.model, "--batch", str(a.batch), "--steps", str(a.steps)]
    mpi = ["mpirun", "-n", str(a.ranks), sys.executable] + common + ["--threads", "1"]
    runs = {f"{a.ranks} ranks x 1 thread": mpi, f"{a.ranks} ranks, ZeRO-1": mpi + ["--zero", "1"],
            f"1 rank x {a.ranks} threads": [sys.executable] + common + ["--threads", str(a.ranks)]}
    res: dict = {name: [] for name in runs}
    for r in range(a.rounds):
        for name in list(runs)[r % 3:] + list(runs)[:r % 3]:  # each goes first in turn
            res[name].append(json.loads(_run(runs[name], env)))
    print(f"{a.model}, global batch {a.batch} x T 64, {a.steps} steps, {a.rounds} rounds (medians)")
    print(f"  {'':24} {'tokens/s':>10} {'ms/step':>9} {'AdamW moments/rank':>19}   rounds (tokens/s)")
    med = {}
    for name, rows in res.items():
        med[name] = statistics.median(x["tok_s"] for x in rows)
        step_ms = statistics.median(x["step_ms"] for x in rows)
        rounds = ", ".join(f"{x['tok_s']:,.0f}" for x in rows)
        print(f"  {name:24} {med[name]:10,.0f} {step_ms:9.1f} {rows[0]['state_bytes']:>17,} B   {rounds}")
    plain, sharded, one = med.values()
    print(f"  ratio ranks / threads: {plain / one:.2f}; ZeRO-1 / plain ranks: {sharded / plain:.2f}")
    rows = json.loads(_run(["mpirun", "-n", str(a.ranks), sys.executable, HERE, "--worker", "allreduce",
                            "--max-mib", str(a.max_mib)], env))
    print(f"MPI_Allreduce (sum, float32, in place) over {a.ranks} ranks, median of each size")
    print(f"  {'bytes':>12} {'time':>12} {'algbw GB/s':>11} {'busbw GB/s':>11}")
    for size, t, alg, bus in rows:
        print(f"  {size:>12,} {t * 1e6:>10.1f}us {alg:>11.2f} {bus:>11.2f}")
    _memory(a, env)


def _memory(a: argparse.Namespace, env: dict) -> None:
    """Per-rank memory of plain data-parallel against ZeRO-1 on ``--mem-model``:
    the moment bytes the store holds and the peak RSS during training (the
    larger rank's; medians of rounds run in turn)."""
    cmd = ["mpirun", "-n", str(a.ranks), sys.executable, HERE, "--worker", "train", "--model", a.mem_model,
           "--batch", str(2 * a.ranks), "--steps", "4", "--threads", "1"]
    res: dict = {0: [], 1: []}
    for r in range(a.mem_rounds):
        for z in ((0, 1) if r % 2 == 0 else (1, 0)):
            res[z].append(json.loads(_run(cmd + ["--zero", str(z)], env)))
    params = res[0][0]["params"]
    print(f"Memory per rank, {a.mem_model} ({params / 1e6:.2f} M parameters) on {a.ranks} ranks, 4 steps, "
          f"{a.mem_rounds} rounds (medians)")
    print(f"  {'':24} {'moments held':>14} {'peak RSS in training':>21}")
    med = {}
    for z, name in ((0, "plain data-parallel"), (1, "ZeRO-1")):
        med[z] = statistics.median(x["rss"] for x in res[z])
        print(f"  {name:24} {res[z][0]['state_bytes'] / 2**20:>10.1f} MiB {med[z] / 2**20:>17.1f} MiB")
    saved = (res[0][0]["state_bytes"] - res[1][0]["state_bytes"]) / 2**20
    print(f"  ZeRO-1 saves {(med[0] - med[1]) / 2**20:.1f} MiB of peak RSS per rank "
          f"({saved:.1f} MiB of moments; 8n(N-1)/N = {8 * params * (a.ranks - 1) / a.ranks / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()

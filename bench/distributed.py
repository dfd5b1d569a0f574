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
bytes of AdamW moments each rank keeps, and the ratios, then
``MPI_Allreduce`` of float32 buffers from 4 KiB up: time, algorithm bandwidth
(bytes / time) and bus bandwidth (2(N-1)/N bytes / time, the ring's traffic
per link, as nccl-tests reports it).
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
MODELS = {  # bench/README's small GPT and LSTM configurations
    "gpt": dict(kind="transformer", arch=dict(block_size=64, n_layer=4, n_head=4, n_embd=128), vocab=65),
    "lstm": dict(kind="lstm", arch=dict(embed_dim=256, hidden_size=256, num_layers=2), vocab=65),
}


def _train_worker(a: argparse.Namespace) -> None:
    import numpy as np
    import fastlm
    from fastlm import distributed as dist
    fastlm.set_num_threads(a.threads)
    spec = MODELS[a.model]
    cls = fastlm.Transformer if spec["kind"] == "transformer" else fastlm.LSTMLM
    model = cls(spec["vocab"], seed=1, **spec["arch"])
    data = np.random.default_rng(0).integers(0, spec["vocab"], 200_000)
    from fastlm.zero import shard_counts
    n = dist.world_size()
    hist = model.fit(data, steps=a.steps, batch_size=a.batch // n, block_size=64, progress=False, zero=a.zero)
    if dist.rank() == 0:
        tok_s = statistics.median(e["tokens_per_sec"] for e in hist[2:])
        params = model.num_parameters()
        moments = 8 * (max(shard_counts(params, n)) if a.zero else params)  # two float32 moments
        print(json.dumps({"tok_s": tok_s, "step_ms": 1e3 * a.batch * 64 / tok_s, "state_bytes": moments,
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


if __name__ == "__main__":
    main()

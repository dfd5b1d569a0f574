"""Data-parallel training on one machine: N ranks x 1 thread against 1 rank x N
threads on the same work, and the all-reduce bandwidth MPI reaches.

    PYTHONPATH=python python bench/distributed.py                 # ~2 minutes on 2 cores
    PYTHONPATH=python python bench/distributed.py --rounds 2 --steps 4 --max-mib 4   # a smoke run

Needs mpi4py and mpirun (``pip install 'fastlm[mpi]'``). Each round runs
``mpirun -n N`` (N ranks, 1 kernel thread each, ``batch/N`` rows per rank)
and one process (N threads, ``batch`` rows), alternately, so that load from
other processes hits both alike; both train the same model on the same
global batch, so their steps do the same arithmetic. Prints the median
training tokens/s of each (steps after the first two) and their ratio, then
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
    n = dist.world_size()
    hist = model.fit(data, steps=a.steps, batch_size=a.batch // n, block_size=64, progress=False)
    if dist.rank() == 0:
        print(json.dumps({"tok_s": statistics.median(e["tokens_per_sec"] for e in hist[2:]),
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
    one = [sys.executable] + common + ["--threads", str(a.ranks)]
    res = {"mpi": [], "one": []}
    for r in range(a.rounds):
        for name, cmd in (("mpi", mpi), ("one", one)) if r % 2 == 0 else (("one", one), ("mpi", mpi)):
            res[name].append(json.loads(_run(cmd, env))["tok_s"])
    m_mpi, m_one = statistics.median(res["mpi"]), statistics.median(res["one"])
    print(f"{a.model}, global batch {a.batch} x T 64, {a.steps} steps, {a.rounds} rounds (median tokens/s)")
    print(f"  {a.ranks} ranks x 1 thread : {m_mpi:12,.0f}   (rounds: {', '.join(f'{x:,.0f}' for x in res['mpi'])})")
    print(f"  1 rank x {a.ranks} threads: {m_one:12,.0f}   (rounds: {', '.join(f'{x:,.0f}' for x in res['one'])})")
    print(f"  ratio ranks / threads: {m_mpi / m_one:.2f}")
    rows = json.loads(_run(["mpirun", "-n", str(a.ranks), sys.executable, HERE, "--worker", "allreduce",
                            "--max-mib", str(a.max_mib)], env))
    print(f"MPI_Allreduce (sum, float32, in place) over {a.ranks} ranks, median of each size")
    print(f"  {'bytes':>12} {'time':>12} {'algbw GB/s':>11} {'busbw GB/s':>11}")
    for size, t, alg, bus in rows:
        print(f"  {size:>12,} {t * 1e6:>10.1f}us {alg:>11.2f} {bus:>11.2f}")


if __name__ == "__main__":
    main()

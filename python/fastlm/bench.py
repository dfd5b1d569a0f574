"""``fastlm bench``: fastlm against PyTorch (NumPy where PyTorch is absent) on this machine.

Also the one place the pytest benchmarks in ``bench/`` import what they share
from: the interleaved timer (:mod:`fastlm.bench_timing`), the workloads
("cases": the kernels at model sizes, and whole training steps and sampling
loops; :mod:`fastlm.bench_workloads`) and the PyTorch reference models they run
against (:mod:`fastlm.bench_models`): nanoGPT's GPT (eager,
``scaled_dot_product_attention``, tied head) with nanoGPT's ``generate`` and a
KV-cache decode, and the Embedding -> LSTM/GRU -> Linear language model.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

import fastlm

from .bench_models import F, TorchGPT, TorchRNNLM, nn, torch  # noqa: F401
from .bench_timing import SCALE, Case, Contender, Fn, Result, interleaved_times, steady_allocator, use_threads  # noqa: F401
from .bench_workloads import (F32, GPT_MEDIUM, GPT_SMALL, RNN_LARGE, RNN_SMALL, _agree, _same_weights,  # noqa: F401
                              _training, adamw_case, attention_case, cross_entropy_case, fastlm_generate,
                              gelu_case, gpt_sample_case, gpt_train_case, layernorm_case, matmul_case,
                              numpy_attention, numpy_cross_entropy, numpy_gelu, numpy_layernorm, rnn_train_case)

__all__ = ["Case", "Result", "interleaved_times", "steady_allocator", "use_threads", "TorchGPT",
           "TorchRNNLM", "fastlm_generate", "main"]


Entry = Tuple[Callable[..., Case], tuple, dict]


def _suite(full: bool) -> List[Entry]:
    """(builder, args, kwargs) of each case, built one at a time as the table runs."""
    def entry(builder, *args, **kw) -> Entry:
        return builder, args, kw

    rows = [entry(matmul_case, 1024, 1024, 1024), entry(matmul_case, 768, 128, 384)]
    if full:
        rows += [entry(matmul_case, 2048, 2048, 2048), entry(matmul_case, 768, 512, 128)]
    rows += [entry(attention_case, 8, 6, 256, 64), entry(cross_entropy_case, 4096, 8192)]
    if full:
        rows.append(entry(cross_entropy_case, 1024, 50304))
    rows += [entry(layernorm_case, 2048, 384), entry(gelu_case, 2048, 1536),
             entry(adamw_case, 10_000_000),
             entry(gpt_train_case, **GPT_SMALL, batch=12), entry(gpt_train_case, **GPT_MEDIUM, batch=8),
             entry(gpt_sample_case, **GPT_SMALL)]
    for kind in ("lstm", "gru"):
        rows.append(entry(rnn_train_case, kind, **RNN_SMALL, batch=32, length=64))
        if full:
            rows.append(entry(rnn_train_case, kind, **RNN_LARGE, batch=32, length=35))
    return rows


def _names(builder, args, kw) -> str:
    """A case's searchable name without building it: its builder and arguments."""
    return " ".join([builder.__name__.replace("_case", "")] + [str(a) for a in args]
                    + [f"{k}={v}" for k, v in kw.items()])


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``fastlm bench [--quick | --full] [--threads N] [--only SUBSTRING]``; returns the exit code."""
    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> None:  # type: ignore[override]
            print(f"fastlm bench: error: {message} (see 'fastlm bench --help')", file=sys.stderr)
            raise SystemExit(2)

    p = Parser(prog="fastlm bench", description=(
        "Time fastlm's kernels and models beside PyTorch (NumPy without it) on this machine; "
        "ratio = reference time / fastlm time, above 1 is faster."))
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="full", action="store_false", help="few rounds (default)")
    mode.add_argument("--full", dest="full", action="store_true",
                      help="more rounds and sizes (several minutes)")
    p.set_defaults(full=False)
    p.add_argument("--threads", type=int, default=None,
                   help="threads for fastlm and PyTorch (default: fastlm's current count)")
    p.add_argument("--only", default=None, metavar="SUBSTRING",
                   help="run the benchmarks whose name contains SUBSTRING (e.g. matmul, gpt, lstm)")
    try:
        args = p.parse_args(argv)
    except SystemExit as e:  # --help, or a bad flag (argparse printed why)
        return e.code if isinstance(e.code, int) else 2
    if args.threads is not None and not 1 <= args.threads <= fastlm.MAX_THREADS:
        print(f"fastlm bench: error: --threads must be between 1 and {fastlm.MAX_THREADS}, got {args.threads}",
              file=sys.stderr)
        return 2
    suite = [s for s in _suite(args.full)
             if args.only is None or args.only.lower() in _names(*s).lower()]
    if not suite:
        print(f"fastlm bench: error: no benchmark matches --only {args.only!r}", file=sys.stderr)
        return 2
    threads = args.threads or fastlm.get_num_threads()
    steady_allocator()
    ref_lib = f"torch {torch.__version__}" if torch is not None else f"numpy {np.__version__}"
    print(f"fastlm {fastlm.__version__} bench ({'full' if args.full else 'quick'}): "
          f"{fastlm.cpu_isa()}, {threads} threads; reference {ref_lib}; ratio = "
          "reference time / fastlm time (median over rounds)")
    w = 50
    print(f"{'benchmark':<{w}} {'fastlm':>10} {'reference':>26} {'ratio':>7}  units")
    with use_threads(threads):
        for builder, a, kw in suite:
            case = builder(*a, **kw)
            refs = [k for k in case.contenders if k.startswith("torch") or k.startswith("nanoGPT")]
            refs = refs or [k for k in case.contenders if k == "numpy"]
            res = case.run(rounds=None if args.full else min(3, case.rounds),
                           keep=["fastlm"] + refs)
            ours = f"{res.rate('fastlm'):>10,.1f}"
            if not refs:
                print(f"{case.name:<{w}} {ours} {'-':>26} {'-':>7}  {case.unit}", flush=True)
            for i, r in enumerate(refs):
                name = case.name if i == 0 else ""
                ref = f"{res.rate(r):,.1f} ({r})"
                print(f"{name:<{w}} {ours if i == 0 else '':>10} {ref:>26} "
                      f"{res.ratio(r):>6.2f}x  {case.unit}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

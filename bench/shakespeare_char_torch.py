"""The PyTorch side of bench/shakespeare_char.py: nanoGPT's CPU shakespeare_char
recipe (4 layers, 4 heads, 128 wide, T64, B12, 2000 steps; lr 1e-3, 100 warmup
steps, cosine to 1e-4; AdamW betas (0.9, 0.99), weight decay 0.1 on 2-D
tensors; clip 1.0) on nanoGPT's model in PyTorch eager, scored the way fastlm's
run is: the loss over the whole val split and nanoGPT's 20-batch estimate.

    PYTHONPATH=python python bench/shakespeare_char_torch.py [path/to/tinyshakespeare.txt] [--seed N]

About 90 s on 2 threads. It tells how much of a val-loss figure is the recipe's
and how much the library's.
"""
from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np
import torch

from fastlm.bench_models import TorchGPT
from fastlm.data import get_batch, iter_eval_batches, read_text, train_val_split
from fastlm.tokenizers import CharTokenizer

DEFAULT = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "tinyshakespeare.txt")
STEPS, WARMUP, LR, MIN_LR, T, B = 2000, 100, 1e-3, 1e-4, 64, 12


def lr_at(step: int) -> float:
    """nanoGPT's get_lr: linear warmup, then cosine down to MIN_LR at STEPS."""
    if step < WARMUP:
        return LR * (step + 1) / (WARMUP + 1)
    ratio = min((step - WARMUP) / (STEPS - WARMUP), 1.0)
    return MIN_LR + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (LR - MIN_LR)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("path", nargs="?", default=DEFAULT)
    ap.add_argument("--seed", type=int, default=1337)
    a = ap.parse_args()
    text = read_text(a.path)
    tok = CharTokenizer.from_text(text)
    train, val = train_val_split(tok.encode(text), 0.1)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    model = TorchGPT(tok.vocab_size, T, 4, 4, 128)
    opt = model.configure_optimizers(0.1, LR, (0.9, 0.99))
    t0 = time.perf_counter()
    for step in range(STEPS):
        x, y = (torch.from_numpy(v) for v in get_batch(train, B, T, rng))
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    wall = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        total = rows = 0
        for x, y in iter_eval_batches(val, 64, T):
            total += model(torch.from_numpy(x), torch.from_numpy(y)).item() * x.shape[0]
            rows += x.shape[0]
        estimate = np.mean([model(*(torch.from_numpy(v) for v in get_batch(val, B, T, rng))).item()
                            for _ in range(20)])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads: {wall:.1f} s; val loss: whole val "
          f"split {total / rows:.4f}, nanoGPT estimate (20 random batches) {estimate:.4f}")


if __name__ == "__main__":
    main()

"""Convergence check: nanoGPT's CPU shakespeare_char run on fastlm.

    PYTHONPATH=python python bench/shakespeare_char.py [path/to/tinyshakespeare.txt] [--precision bf16]

Character tokenizer, first 90% train / last 10% val; vocab 65, block 64, 4
layers, 4 heads, n_embd 128, batch 12; lr 1e-3 with 100 warmup steps, cosine
to 1e-4 over 2000 steps; AdamW betas (0.9, 0.99), weight decay 0.1; clip 1.0.
nanoGPT reports a val loss of about 1.88 for this setting, measured by its
estimate_loss: the mean over 20 random batches of 12 windows of the val split.
Prints that estimate (seeded, and over 200 batches for a steadier figure), the
loss over the whole val split, and the wall time.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

import fastlm
from fastlm.data import get_batch, read_text, train_val_split

DEFAULT = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "tinyshakespeare.txt")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    precision = "fp32"
    if "--precision" in argv:  # bf16: the same run in mixed precision (AVX512_BF16)
        i = argv.index("--precision")
        precision = argv[i + 1] if i + 1 < len(argv) else ""
        del argv[i:i + 2]
    path = argv[0] if argv else DEFAULT
    if not os.path.exists(path):
        print(f"corpus {path!r} not found", file=sys.stderr)
        return 2
    text = read_text(path)
    tok = fastlm.CharTokenizer.from_text(text)
    train, val = train_val_split(tok.encode(text), 0.1)
    model = fastlm.Transformer(tok.vocab_size, block_size=64, n_layer=4, n_head=4, n_embd=128, seed=1337,
                               tokenizer=tok, precision=precision)
    t0 = time.perf_counter()
    history = model.fit(train, steps=2000, batch_size=12, lr=1e-3, min_lr=1e-4, warmup_steps=100,
                        betas=(0.9, 0.99), weight_decay=0.1, grad_clip=1.0, val=val, eval_interval=250,
                        eval_batches=20, seed=1337, progress=False)
    wall = time.perf_counter() - t0
    final = model.evaluate(val, batch_size=64)["loss"]
    rng = np.random.default_rng(0)

    def estimate(batches: int) -> float:  # nanoGPT's estimate_loss on the val split
        return float(np.mean([model._loss(*get_batch(val, 12, 64, rng)) for _ in range(batches)]))

    print(f"threads {fastlm.get_num_threads()}, isa {fastlm.cpu_isa()}, {precision}: {len(history)} steps in {wall:.1f} s "
          f"({wall / len(history) * 1e3:.1f} ms/step); train loss {history[-1]['loss']:.4f}; val loss: "
          f"nanoGPT estimate (20 random batches) {estimate(20):.4f}, over 200 random batches "
          f"{estimate(200):.4f}, whole val split {final:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

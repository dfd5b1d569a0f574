"""Convergence check: nanoGPT's CPU shakespeare_char run on fastlm, through
``fastlm train --config examples/shakespeare_char.toml`` (the settings live in
that file alone).

    PYTHONPATH=python python bench/shakespeare_char.py [path/to/tinyshakespeare.txt] [--key=value ...]  (e.g. --precision=bf16)

Character tokenizer, first 90% train / last 10% val; vocab 65, block 64, 4
layers, 4 heads, n_embd 128, batch 12, dropout 0; lr 1e-3 with 100 warmup
steps, cosine to 1e-4 at step 2000 (lr_decay_iters); AdamW betas (0.9, 0.99),
weight decay 0.1; clip 1.0; the checkpoint kept at the best val estimate
(keep_best, nanoGPT's always_save_checkpoint=False). nanoGPT reports a val
loss of about 1.88 here, by its estimate_loss (20 random batches of 12
windows). Extra arguments override the file, e.g. nanoGPT's dropout run:
``--steps=5000 --lr_decay_iters=5000 --dropout=0.2``.

Prints the kept checkpoint's step, its val loss over the whole val split (the
steadier figure), nanoGPT's 20-batch estimate and one over 200 batches, and the
wall time. The run directory is a fresh temporary one.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time

import numpy as np

import fastlm
from fastlm.cli import main as cli
from fastlm.data import get_batch, read_text, train_val_split

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT = os.path.join(HERE, "..", "..", "shared", "data", "tinyshakespeare.txt")
CONFIG = os.path.join(HERE, "..", "examples", "shakespeare_char.toml")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    path = argv[0] if argv and not argv[0].startswith("--") else DEFAULT
    overrides = [a for a in argv if a.startswith("--")]
    if not os.path.exists(path):
        print(f"corpus {path!r} not found", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "run")
        t0 = time.perf_counter()
        rc = cli(["train", path, "--config", CONFIG, "--out", out, "--no-progress"] + overrides)
        wall = time.perf_counter() - t0
        if rc:
            return rc
        model = fastlm.LanguageModel.load(out)
    text = read_text(path)
    _, val = train_val_split(model.tokenizer.encode(text), 0.1)
    final = model.evaluate(val, batch_size=64)["loss"]
    rng = np.random.default_rng(0)

    def estimate(batches: int) -> float:  # nanoGPT's estimate_loss on the val split
        return float(np.mean([model._loss(*get_batch(val, 12, 64, rng)) for _ in range(batches)]))

    print(f"threads {fastlm.get_num_threads()}, isa {fastlm.cpu_isa()}: {wall:.1f} s; kept step "
          f"{model.optimizer_step} (dropout {model.dropout}); val loss: whole val split {final:.4f}, "
          f"nanoGPT estimate (20 random batches) {estimate(20):.4f}, over 200 random batches {estimate(200):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

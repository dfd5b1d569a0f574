"""GPT-2 124M on the CPU, side by side with PyTorch eager and transformers:

    PYTHONPATH=python python bench/gpt2_cpu.py [--threads N] [--batch 1] [--new-tokens 64] [--rounds 3]
                                            [--only train|sample] [--tiny]

- training tokens/s (forward + backward + AdamW over a (batch, 1024) window of
  random ids): fastlm's Transformer vs nanoGPT's GPT in PyTorch eager, same
  weights (fastlm.bench.gpt_train_case);
- batch-1 greedy sampling tokens/s (a 16-token prompt, --new-tokens new
  tokens): fastlm's KV-cache generate vs ``transformers``' ``generate`` with
  ``use_cache=True``, on the same random-init GPT2LMHeadModel, which fastlm
  reads back with ``Transformer.from_pretrained`` (its save_pretrained and
  from_pretrained times are printed too).

Shapes are GPT-2 small's: vocab 50304, block 1024, 12 layers, 12 heads, 768
wide. Before timing, each case checks both sides agree (loss; logits and the
greedy tokens). Timings are interleaved rounds, medians, ratio = reference
time / fastlm time. --tiny runs the same at a toy size, to check the script.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

import fastlm
from fastlm.bench import Case, gpt_train_case, steady_allocator, use_threads

GPT2 = dict(vocab_size=50304, block_size=1024, n_layer=12, n_head=12, n_embd=768)
TINY = dict(vocab_size=503, block_size=64, n_layer=2, n_head=2, n_embd=32)


def sample_case(cfg: dict, new_tokens: int, prompt_len: int, workdir: str) -> Case:
    """Greedy batch-1 generation; prompt and new tokens stay within block_size
    (transformers' GPT-2 has no sliding window)."""
    new_tokens = min(new_tokens, cfg["block_size"] - prompt_len)
    import torch
    import transformers
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    ref = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=cfg["vocab_size"], n_positions=cfg["block_size"], n_layer=cfg["n_layer"], n_head=cfg["n_head"],
        n_embd=cfg["n_embd"], activation_function="gelu_new", bos_token_id=None, eos_token_id=None)).eval()
    path = os.path.join(workdir, "gpt2")
    t0 = time.perf_counter()
    ref.save_pretrained(path, safe_serialization=True)
    t1 = time.perf_counter()
    ours = fastlm.Transformer.from_pretrained(path)
    t2 = time.perf_counter()
    ours.save_pretrained(os.path.join(workdir, "again"))
    t3 = time.perf_counter()
    print(f"transformers save_pretrained {t1 - t0:.2f} s; fastlm from_pretrained {t2 - t1:.2f} s, "
          f"save_pretrained {t3 - t2:.2f} s ({ours.num_parameters() / 1e6:.1f}M parameters)", flush=True)
    prompt = np.random.default_rng(0).integers(0, cfg["vocab_size"], (1, prompt_len))
    pt = torch.from_numpy(prompt)

    def theirs():
        with torch.no_grad():
            return ref.generate(pt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                use_cache=True, pad_token_id=0)

    def check() -> str:
        seq = theirs().numpy()
        with torch.no_grad():
            want = ref(torch.from_numpy(seq[:, :-1])).logits[:, -1].numpy()
        np.testing.assert_allclose(ours._g.decode(seq[:, :-1], 0), want, rtol=1e-3, atol=1e-3)
        mine = ours.generate(prompt, new_tokens, do_sample=False)
        return f"last logits agree; greedy tokens equal to transformers': {np.mean(mine == seq):.0%}"

    cs = {"fastlm": lambda: ours.generate(prompt, new_tokens, do_sample=False),
          "transformers generate": theirs}
    return Case(f"sample GPT-2 {cfg['n_layer']}L {cfg['n_embd']}d batch 1, {new_tokens} tokens", "tokens/s",
                new_tokens, cs, rounds=3, block=1, warmup=0, first=1, check=check)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=None, help="threads for fastlm and torch (default: fastlm's)")
    p.add_argument("--batch", type=int, default=1, help="training batch (rows of 1024 tokens)")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--only", choices=("train", "sample"), default=None, help="run one of the two cases")
    p.add_argument("--tiny", action="store_true", help="a toy size, to check the script")
    args = p.parse_args(argv)
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        print("gpt2_cpu: needs torch and transformers", file=sys.stderr)
        return 2
    cfg = TINY if args.tiny else GPT2
    threads = args.threads or fastlm.get_num_threads()
    steady_allocator()
    print(f"fastlm {fastlm.__version__} [{fastlm.cpu_isa()}, {threads} threads], torch {torch.__version__}, "
          f"transformers {transformers.__version__}; ratio = reference time / fastlm time", flush=True)
    with use_threads(threads), tempfile.TemporaryDirectory() as workdir:
        cases = {"train": lambda: gpt_train_case(**cfg, batch=args.batch),
                 "sample": lambda: sample_case(cfg, args.new_tokens, 16, workdir)}
        for name, make in cases.items():
            if args.only not in (None, name):
                continue
            case = make()
            if case.check is not None:
                print(f"{case.name}: {case.check()}", flush=True)
            res = case.run(rounds=args.rounds)
            print(res.line(), flush=True)
            del case, res
    return 0


if __name__ == "__main__":
    sys.exit(main())

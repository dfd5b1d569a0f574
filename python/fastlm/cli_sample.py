"""``fastlm sample``: its flags, and the text a checkpoint continues a prompt
with, streamed as it is made."""
from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Any, List

from .cli_common import (CLIError, _device, _float, _nonneg_int, _number, _positive_float, _positive_int, _precision,
                         _sampler_seed, _set_threads, _threads)


def add_sample_parser(sub: Any) -> None:
    """Add the ``sample`` subcommand to ``sub`` (argparse subparsers)."""
    s = sub.add_parser("sample", help="generate text from a checkpoint",
                       description="Print the prompt followed by a sample from the model in DIR.")
    s.add_argument("checkpoint", metavar="DIR", help="checkpoint directory (fastlm train --out)")
    s.add_argument("--prompt", default="\n", help="start text (default: a newline)")
    s.add_argument("--max-new-tokens", type=_nonneg_int, default=500, help="tokens to generate (default 500)")
    s.add_argument("--temperature", type=_float, default=0.8, help="sampling temperature (default 0.8)")
    s.add_argument("--top-k", type=_positive_int, default=200, help="keep the k most likely tokens (default 200)")
    s.add_argument("--top-p", type=_number(0.0, 1.0, above=True), default=None, help="nucleus sampling threshold in (0, 1]")
    s.add_argument("--greedy", action="store_true", help="take the most likely token (no sampling)")
    s.add_argument("--repetition-penalty", type=_positive_float, default=1.0,
                   help="> 1 discourages tokens already in the text (Hugging Face's; default 1: off)")
    s.add_argument("--stop", action="append", default=None, metavar="TEXT",
                   help="end a sample once it contains TEXT (may be given several times)")
    s.add_argument("--seed", type=_sampler_seed, default=1337, help="sampling seed (default 1337)")
    s.add_argument("--num-samples", type=_positive_int, default=1, help="samples to draw (default 1)")
    s.add_argument("--device", default="cpu", help="cpu (default) or cuda (a GPU; FASTLM_EMULATE_CUDA=1 emulates one on the CPU)")
    s.add_argument("--precision", choices=("fp32", "bf16", "tf32"), default=None,
                   help="bf16: bfloat16 weights in the GEMMs (on a CPU: needs AVX512_BF16); tf32: GPU only (default: the checkpoint's)")
    s.add_argument("--threads", type=_threads, default=None, help="kernel threads (default: all cores)")


def cmd_sample(a: argparse.Namespace) -> int:
    from .checkpoint import is_checkpoint
    from .lm import LanguageModel

    _device(a.device)
    _precision(a.precision, a.device)
    _set_threads(a.threads)
    if not os.path.exists(a.checkpoint):
        raise CLIError(f"checkpoint directory {a.checkpoint!r} not found")
    if not os.path.isdir(a.checkpoint):
        raise CLIError(f"{a.checkpoint!r} is not a directory (a checkpoint is the directory fastlm train --out writes)")
    if not is_checkpoint(a.checkpoint):
        raise CLIError(f"{a.checkpoint!r} is not a fastlm checkpoint (no config.json and model.safetensors)")
    if not a.greedy and not 0 < a.temperature < math.inf:
        raise CLIError(f"--temperature must be finite and > 0, got {a.temperature} (use --greedy for argmax decoding)")
    model = LanguageModel.load(a.checkpoint, device=a.device, precision=a.precision)
    tok = model.tokenizer
    if tok is None:
        raise CLIError(f"the checkpoint in {a.checkpoint!r} has no tokenizer.json; cannot encode --prompt")
    if a.prompt == "":
        raise CLIError("--prompt must not be empty")
    try:
        prompt = tok.encode(a.prompt)
    except ValueError as e:
        raise CLIError(f"--prompt: {e}") from None
    if a.stop is not None and "" in a.stop:
        raise CLIError("--stop must not be empty")
    kw = dict(temperature=a.temperature, top_k=a.top_k, top_p=a.top_p, do_sample=not a.greedy, seed=a.seed,
              repetition_penalty=a.repetition_penalty, stop_strings=a.stop)
    outw = sys.stdout
    if a.num_samples == 1:
        # Stream: print each piece as it comes. The ids not shown yet are held
        # while they decode to a partial character (a byte tokenizer's first
        # bytes of a multi-byte one), then shown and dropped: linear time.
        tokens = model.generate(prompt, a.max_new_tokens, stream=True, **kw)  # checks the arguments
        outw.write(a.prompt)
        outw.flush()
        pending: List[int] = []
        for t in tokens:
            pending.append(t)
            text = tok.decode(pending)
            if not text.endswith("\ufffd"):
                outw.write(text)
                outw.flush()
                pending = []
        outw.write(tok.decode(pending) + "\n")
    else:
        # With --stop, a list of prompts: each sample ends where it stops.
        prompts = prompt[None, :].repeat(a.num_samples, axis=0) if a.stop is None else [a.prompt] * a.num_samples
        batch = model.generate(prompts, a.max_new_tokens, **kw)
        for i, row in enumerate(batch):
            if i:
                outw.write("---------------\n")
            outw.write(a.prompt + tok.decode(row[len(prompt):]) + "\n")
    outw.flush()
    return 0

"""Generation through the public API (``Transformer.generate``) against
transformers' ``GPT2LMHeadModel.generate`` with the same weights, greedy, in
one run:

- batch 1 with Hugging Face's processors on (repetition_penalty, eos ids,
  min_new_tokens, per-token log-probabilities / output_scores);
- a ragged batch of 8 prompts (1 to 17 tokens): fastlm's one right-padded
  prefill + per-row positions, each prompt on its own through fastlm, and
  transformers with left padding and an attention mask.

Before timing, each case reports how many new tokens agree with
transformers'. Skips without torch and transformers.

And batch-1 sampling (top-k 40) with the token loop in C++ (one call for all
the tokens) against the per-token Python loop it replaced (``sampling.
_PYTHON_LOOP``; the same draws), for the 4L/128 CPU config and a model of
GPT-2 small's shape (12 layers, 768 wide, vocabulary 50304; random weights).
"""
from __future__ import annotations

import numpy as np
import pytest

from fastlm import Transformer, sampling
from fastlm.bench import GPT_SMALL, Case

from conftest import run

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

NEW = 32
PROMPTS = [[1], [5, 6, 7, 8, 9], list(range(10, 27)), [3, 3, 3], list(range(30, 42)), [9] * 7, [2, 4], [8] * 9]


def _models():
    cfg = GPT_SMALL
    ours = Transformer(cfg["vocab_size"], block_size=cfg["block_size"], n_layer=cfg["n_layer"],
                       n_head=cfg["n_head"], n_embd=cfg["n_embd"], seed=0)
    hf_cfg = transformers.GPT2Config(vocab_size=cfg["vocab_size"], n_positions=cfg["block_size"],
                                     n_embd=cfg["n_embd"], n_layer=cfg["n_layer"], n_head=cfg["n_head"],
                                     activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0,
                                     attn_pdrop=0.0, layer_norm_epsilon=1e-5, bos_token_id=None,
                                     eos_token_id=None)
    hf = transformers.GPT2LMHeadModel(hf_cfg).eval()
    sd = {k: torch.from_numpy(np.array(v)) for k, v in ours.state_dict().items()}
    for k in sd:  # Conv1D keeps (in, out), Linear (out, in)
        if k.startswith("transformer.h.") and k.endswith("weight") and sd[k].ndim == 2:
            sd[k] = sd[k].t().contiguous()
    hf.load_state_dict(sd, strict=False)
    return ours, hf


def _agreement(ours, theirs) -> str:
    same = np.mean([np.mean(a == b) for a, b in zip(ours, theirs)])
    return f"new tokens equal to transformers': {same:.0%}"


def test_bench_generate_batch1_with_processors(benchmark):
    ours, hf = _models()
    prompt = np.array(PROMPTS[2])
    kw = dict(repetition_penalty=1.3, eos_token_id=[0, 1], min_new_tokens=NEW)
    pt = torch.from_numpy(prompt[None])
    mask = torch.ones_like(pt)

    def fastlm():
        return ours.generate(prompt, NEW, do_sample=False, return_logprobs=True, **kw)

    def hf_generate():
        with torch.no_grad():
            return hf.generate(pt, attention_mask=mask, max_new_tokens=NEW, do_sample=False, pad_token_id=0,
                               output_scores=True, return_dict_in_generate=True, **kw)

    def check():
        return _agreement([fastlm()[0][len(prompt):]], [hf_generate().sequences[0, len(prompt):].numpy()])

    run(benchmark, Case(f"generate GPT 4L 128d batch 1, {NEW} tokens, processors on", "tokens/s", NEW,
                        {"fastlm": fastlm, "transformers": hf_generate}, rounds=3, block=2, check=check))


def test_bench_generate_ragged_batch(benchmark):
    ours, hf = _models()
    width = max(len(p) for p in PROMPTS)
    left = torch.tensor([[0] * (width - len(p)) + p for p in PROMPTS])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in PROMPTS])

    def fastlm():
        return ours.generate(PROMPTS, NEW, do_sample=False)

    def one_by_one():
        return [ours.generate(np.array(p), NEW, do_sample=False) for p in PROMPTS]

    def hf_generate():
        with torch.no_grad():
            return hf.generate(left, attention_mask=mask, max_new_tokens=NEW, do_sample=False, pad_token_id=0)

    def check():
        got = [r[len(p):] for p, r in zip(PROMPTS, fastlm())]
        return _agreement(got, [r[width:] for r in hf_generate().numpy()])

    run(benchmark, Case(f"generate GPT 4L 128d ragged batch of {len(PROMPTS)}, {NEW} tokens each", "tokens/s",
                        NEW * len(PROMPTS), {"fastlm": fastlm, "fastlm one prompt at a time": one_by_one,
                                             "transformers": hf_generate}, rounds=3, block=2, check=check))


GPT2_SHAPE = dict(vocab_size=50304, block_size=1024, n_layer=12, n_head=12, n_embd=768)


@pytest.mark.parametrize("name,cfg,new,rounds", [("GPT 4L 128d", GPT_SMALL, 32, 9),
                                                  ("GPT-2 124M shape", GPT2_SHAPE, 8, 3)])
def test_bench_generate_loop_cpp_vs_python(benchmark, name, cfg, new, rounds):
    ours = Transformer(**cfg, seed=0)
    prompt = np.arange(16) % cfg["vocab_size"]
    kw = dict(do_sample=True, top_k=40, seed=1)

    def cpp_loop():
        return ours.generate(prompt, new, **kw)

    def python_loop():
        sampling._PYTHON_LOOP = True
        try:
            return ours.generate(prompt, new, **kw)
        finally:
            sampling._PYTHON_LOOP = False

    def check():
        assert np.array_equal(cpp_loop(), python_loop())
        return "C++ loop tokens equal the Python loop's"

    run(benchmark, Case(f"generate {name} batch 1, {new} tokens sampled (top-k 40)", "tokens/s", new,
                        {"fastlm": cpp_loop, "python loop (before)": python_loop}, rounds=rounds, block=2,
                        check=check))

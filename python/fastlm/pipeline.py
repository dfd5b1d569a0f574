"""``fastlm.pipeline("text-generation", ...)``: Hugging Face's pipeline call shape on fastlm models.

Example::

    pipe = fastlm.pipeline("text-generation", model="out/ckpt")   # or a HF GPT-2 dir, or a model
    pipe("ROMEO:", max_new_tokens=50, do_sample=True, top_k=40)
    # [{"generated_text": "ROMEO: ..."}]
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Union

from . import hf
from ._checks import check_int
from .lm import LanguageModel
from .model import Transformer
from .tokenizers import Tokenizer, load_tokenizer

__all__ = ["pipeline", "TextGenerationPipeline"]

PathLike = Union[str, "os.PathLike[str]"]
TASKS = ("text-generation",)


def _load_model(model: Any, device: str) -> LanguageModel:
    if isinstance(model, LanguageModel):
        return model
    if isinstance(model, (str, os.PathLike)):
        if hf.is_pretrained_dir(model):
            return Transformer.from_pretrained(model, device=device)
        return LanguageModel.load(model, device=device)
    raise TypeError(f"pipeline: model must be a fastlm model, a checkpoint directory or a Hugging Face GPT-2 "
                    f"directory, got {type(model).__name__}")


def _load_tokenizer(tokenizer: Any) -> Tokenizer:
    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    if isinstance(tokenizer, (str, os.PathLike)):
        if os.path.isdir(tokenizer):
            tok = hf.load_pretrained_tokenizer(tokenizer)
            if tok is None:
                raise ValueError(f"pipeline: {os.fspath(tokenizer)!r} holds no tokenizer fastlm can read")
            return tok
        return load_tokenizer(tokenizer)
    raise TypeError(f"pipeline: tokenizer must be a fastlm Tokenizer, a path or None, got {type(tokenizer).__name__}")


class TextGenerationPipeline:
    """Text in, text out over a fastlm model and its tokenizer (see :func:`pipeline`)."""

    def __init__(self, model: LanguageModel, tokenizer: Tokenizer) -> None:
        if tokenizer.vocab_size > model.vocab_size:
            raise ValueError(f"pipeline: tokenizer vocab_size {tokenizer.vocab_size} exceeds the model's "
                             f"vocab_size {model.vocab_size}")
        self.model = model
        self.tokenizer = tokenizer

    def __call__(self, text_inputs: Union[str, List[str]], max_new_tokens: int = 20, *, do_sample: bool = False,
                 temperature: float = 1.0, top_k: Optional[int] = None, top_p: Optional[float] = None,
                 num_return_sequences: int = 1, return_full_text: bool = True, seed: Optional[int] = None,
                 eos_token_id: Optional[int] = None) -> Union[List[Dict[str, str]], List[List[Dict[str, str]]]]:
        """Continue each prompt by up to ``max_new_tokens`` tokens.

        text_inputs: a str, or a list of str (each non-empty once encoded).
        do_sample: False (Hugging Face's default) is greedy; True samples
            with ``temperature``, ``top_k``, ``top_p`` (see :meth:`fastlm.LanguageModel.generate`).
        num_return_sequences: continuations per prompt (>= 1).
        return_full_text: the prompt followed by the continuation (True) or
            the continuation alone.
        seed: makes sampling reproducible (each sequence gets its own seed from it).
        eos_token_id: stop there; defaults to the tokenizer's ``eos_token_id``.

        Returns ``[{"generated_text": str}, ...]`` (``num_return_sequences``
        dicts) for a str, a list of such lists for a list.
        """
        single = isinstance(text_inputs, str)
        prompts = [text_inputs] if single else text_inputs
        if not isinstance(prompts, (list, tuple)) or not all(isinstance(p, str) for p in prompts):
            raise TypeError("pipeline: text_inputs must be a str or a list of str")
        n = check_int(num_return_sequences, "num_return_sequences", 1)
        if not isinstance(return_full_text, bool):
            raise TypeError(f"return_full_text must be a bool, got {type(return_full_text).__name__}")
        if eos_token_id is None:
            eos_token_id = getattr(self.tokenizer, "eos_token_id", None)
        if seed is not None:
            seed = check_int(seed, "seed", 0, (1 << 63) - 1)
        out = []
        for i, text in enumerate(prompts):
            ids = self.tokenizer.encode(text)
            if len(ids) == 0:
                raise ValueError(f"pipeline: prompt {i} encodes to no tokens")
            results = []
            for j in range(n):
                s = None if seed is None else seed + i * n + j
                full = self.model.generate(ids, max_new_tokens, do_sample=do_sample, temperature=temperature,
                                           top_k=top_k, top_p=top_p, seed=s, eos_token_id=eos_token_id)
                # Decoding the whole and cutting the prompt's text, as transformers
                # does, keeps characters that straddle the boundary whole.
                whole = self.tokenizer.decode(full)
                results.append({"generated_text": whole if return_full_text
                                else whole[len(self.tokenizer.decode(ids)):]})
            out.append(results)
        return out[0] if single else out


def pipeline(task: str, model: Union[PathLike, LanguageModel], tokenizer: Union[None, PathLike, Tokenizer] = None,
             *, device: str = "cpu") -> TextGenerationPipeline:
    """A Hugging Face-style pipeline. ``task``: ``"text-generation"``.

    model: a fastlm model, a fastlm checkpoint directory, or a local Hugging
        Face GPT-2 directory (see :meth:`fastlm.Transformer.from_pretrained`).
    tokenizer: a fastlm tokenizer, a tokenizer file or directory, or None for
        the model's own (an error when it has none).
    """
    if task not in TASKS:
        raise ValueError(f"pipeline: unknown task {task!r} (fastlm has {list(TASKS)})")
    m = _load_model(model, device)
    tok = _load_tokenizer(tokenizer) if tokenizer is not None else m.tokenizer
    if tok is None:
        raise ValueError("pipeline: the model has no tokenizer; pass tokenizer=")
    return TextGenerationPipeline(m, tok)

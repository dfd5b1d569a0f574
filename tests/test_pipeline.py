"""fastlm.pipeline("text-generation"): Hugging Face's call shape over fastlm models."""
from __future__ import annotations

import numpy as np
import pytest

import fastlm
from fastlm import CharTokenizer, Transformer

TEXT = "to be or not to be, that is the question"


@pytest.fixture
def model():
    tok = CharTokenizer.from_text(TEXT)
    return Transformer(tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=8, seed=1, tokenizer=tok)


def test_greedy_equals_generate(model):
    pipe = fastlm.pipeline("text-generation", model=model)
    out = pipe("to be", max_new_tokens=7)
    tok = model.tokenizer
    want = tok.decode(model.generate(tok.encode("to be"), 7, do_sample=False))
    assert out == [{"generated_text": want}]
    assert pipe("to be", max_new_tokens=7, return_full_text=False) == [{"generated_text": want[len("to be"):]}]


def test_list_of_prompts_and_sequences(model):
    pipe = fastlm.pipeline("text-generation", model=model)
    out = pipe(["to", "that is"], max_new_tokens=4, do_sample=True, temperature=0.8, top_k=5, top_p=0.9,
               num_return_sequences=3, seed=11)
    assert [len(r) for r in out] == [3, 3]
    for prompt, results in zip(["to", "that is"], out):
        for r in results:
            assert set(r) == {"generated_text"} and r["generated_text"].startswith(prompt)
            assert len(r["generated_text"]) == len(prompt) + 4
    again = pipe(["to", "that is"], max_new_tokens=4, do_sample=True, temperature=0.8, top_k=5, top_p=0.9,
                 num_return_sequences=3, seed=11)
    assert again == out


def test_paths_checkpoint_and_hugging_face_dir(model, tmp_path):
    want = fastlm.pipeline("text-generation", model=model)("be", max_new_tokens=5)
    model.save(tmp_path / "ckpt")
    assert fastlm.pipeline("text-generation", model=str(tmp_path / "ckpt"))("be", max_new_tokens=5) == want
    model.save_pretrained(tmp_path / "hf")
    model.tokenizer.save(tmp_path / "chars.json")
    with pytest.raises(ValueError, match="no tokenizer"):
        fastlm.pipeline("text-generation", model=tmp_path / "hf")
    pipe = fastlm.pipeline("text-generation", model=tmp_path / "hf", tokenizer=tmp_path / "chars.json")
    assert pipe("be", max_new_tokens=5) == want


def test_bad_input(model):
    with pytest.raises(ValueError, match="task"):
        fastlm.pipeline("summarization", model=model)
    with pytest.raises(TypeError, match="model"):
        fastlm.pipeline("text-generation", model=42)
    with pytest.raises(TypeError, match="tokenizer"):
        fastlm.pipeline("text-generation", model=model, tokenizer=3.5)
    bare = Transformer(10, block_size=8, n_layer=1, n_head=1, n_embd=4)
    with pytest.raises(ValueError, match="no tokenizer"):
        fastlm.pipeline("text-generation", model=bare)
    big = CharTokenizer.from_text("".join(chr(0x4E00 + i) for i in range(20)))
    with pytest.raises(ValueError, match="vocab_size"):
        fastlm.pipeline("text-generation", model=bare, tokenizer=big)
    pipe = fastlm.pipeline("text-generation", model=model)
    with pytest.raises(TypeError, match="text_inputs"):
        pipe(["to", 3])
    with pytest.raises(TypeError, match="text_inputs"):
        pipe(np.array([1, 2]))
    with pytest.raises(ValueError, match="num_return_sequences"):
        pipe("to", num_return_sequences=0)
    with pytest.raises(ValueError, match="no tokens"):
        pipe("")
    with pytest.raises(ValueError, match="temperature"):
        pipe("to", do_sample=True, temperature=0)

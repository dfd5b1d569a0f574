"""Hugging Face GPT-2 directories in and out, and the GPT config options they
need (bias, untied head, erf GELU, layer_norm_epsilon), against transformers."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from fastlm import CharTokenizer, Transformer
from conftest import assert_restored

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")

# Odd sizes; every option on and off across the set.
HF_CONFIGS = {
    "tied-tanh": dict(vocab_size=67, n_positions=19, n_layer=2, n_head=3, n_embd=33,
                      activation_function="gelu_new", layer_norm_epsilon=1e-5, tie_word_embeddings=True),
    "untied-erf": dict(vocab_size=101, n_positions=23, n_layer=3, n_head=5, n_embd=20,
                       activation_function="gelu", layer_norm_epsilon=1e-3, tie_word_embeddings=False),
    "tied-erf": dict(vocab_size=31, n_positions=9, n_layer=1, n_head=1, n_embd=17,
                     activation_function="gelu", layer_norm_epsilon=1e-6, tie_word_embeddings=True),
    "untied-pytorch-tanh": dict(vocab_size=53, n_positions=33, n_layer=2, n_head=2, n_embd=14,
                                activation_function="gelu_pytorch_tanh", layer_norm_epsilon=2e-5,
                                tie_word_embeddings=False),
}


def hf_model(cfg, seed=0, zero_biases=False):
    """A random transformers GPT-2 whose every weight (biases and LayerNorms
    too) is random, so a mapping error cannot hide behind zeros and ones."""
    torch.manual_seed(seed)
    m = transformers.GPT2LMHeadModel(transformers.GPT2Config(**cfg, bos_token_id=None, eos_token_id=None,
                                                             resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    with torch.no_grad():
        for name, p in m.named_parameters():
            if zero_biases and name.endswith(".bias"):
                p.zero_()
            else:
                p.normal_(0.0, 0.3 if p.ndim == 1 else 0.1)
                if "ln_" in name and name.endswith(".weight"):
                    p.add_(1.0)
    return m.eval()


def hf_logits(m, idx):
    with torch.no_grad():
        return m(torch.tensor(idx)).logits.numpy()


def assert_logits_close(ours, ref, rel):
    err = np.max(np.abs(ours.astype(np.float64) - ref)) / np.max(np.abs(ref))
    assert err <= rel, f"max error {err:.3g} of the largest logit > {rel}"


def ids(rng, vocab, b, t):
    return rng.integers(0, vocab, size=(b, t))


@pytest.fixture
def saved_hf(tmp_path):
    """A saved random transformers GPT-2 directory and its model."""
    m = hf_model(HF_CONFIGS["untied-erf"])
    d = tmp_path / "hf"
    m.save_pretrained(d, safe_serialization=True)
    return d, m


# ---- from_pretrained against transformers ---------------------------------------

@pytest.mark.parametrize("name", sorted(HF_CONFIGS))
def test_from_pretrained_logits_match_transformers(tmp_path, rng, name):
    cfg = HF_CONFIGS[name]
    ref = hf_model(cfg, seed=len(name))
    ref.save_pretrained(tmp_path, safe_serialization=True)
    m = Transformer.from_pretrained(tmp_path)
    assert m.config["block_size"] == cfg["n_positions"]
    assert m.config["tie_word_embeddings"] == cfg["tie_word_embeddings"]
    assert m.config["layer_norm_epsilon"] == cfg["layer_norm_epsilon"]
    assert m.config["activation_function"] == ("gelu" if cfg["activation_function"] == "gelu" else "gelu_new")
    idx = ids(rng, cfg["vocab_size"], 3, cfg["n_positions"])
    assert_logits_close(m.forward(idx), hf_logits(ref, idx), 1e-4)
    # The KV-cache decode path (packed lm_head when untied) agrees too.
    np.testing.assert_allclose(m._g.decode(idx, 0), m.forward(idx)[:, -1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["untied-erf", "tied-tanh"])
def test_gradients_match_transformers(tmp_path, rng, name):
    """forward_backward on a from_pretrained model: loss and every gradient as
    torch's autograd gives them (Conv1D gradients transposed)."""
    cfg = HF_CONFIGS[name]
    ref = hf_model(cfg, seed=7)
    ref.save_pretrained(tmp_path, safe_serialization=True)
    m = Transformer.from_pretrained(tmp_path)
    idx, tgt = ids(rng, cfg["vocab_size"], 2, 7), ids(rng, cfg["vocab_size"], 2, 7)
    m.zero_grad()
    loss = m.forward_backward(idx, tgt)
    logits = ref(torch.tensor(idx)).logits
    ref_loss = torch.nn.functional.cross_entropy(logits.reshape(-1, cfg["vocab_size"]),
                                                 torch.tensor(tgt).reshape(-1))
    ref_loss.backward()
    assert abs(loss - ref_loss.item()) <= 1e-5 * abs(ref_loss.item())
    grads = m.gradients()
    for hf_name, p in ref.named_parameters():
        g = p.grad.numpy().T if hf_name.endswith(CONV1D) else p.grad.numpy()
        scale = np.max(np.abs(g)) + 1e-12
        assert np.max(np.abs(grads[hf_name] - g)) <= 1e-4 * scale, hf_name


def test_bias_free_model_matches_transformers_with_zero_biases(tmp_path, rng):
    """nanoGPT's bias=False is GPT-2 with zero biases: the same logits and
    (for the weights it has) the same gradients; it saves as such."""
    cfg = HF_CONFIGS["untied-erf"]
    ref = hf_model(cfg, seed=3, zero_biases=True)
    ref.save_pretrained(tmp_path / "ref", safe_serialization=True)
    full = Transformer.from_pretrained(tmp_path / "ref")
    m = Transformer(cfg["vocab_size"], block_size=cfg["n_positions"], n_layer=cfg["n_layer"], n_head=cfg["n_head"],
                    n_embd=cfg["n_embd"], bias=False, tie_word_embeddings=False, activation_function="gelu",
                    layer_norm_epsilon=cfg["layer_norm_epsilon"])
    assert not any(n.endswith(".bias") for n in m.state_dict())
    m.load_state_dict({k: v for k, v in full.state_dict().items() if not k.endswith(".bias")})
    idx, tgt = ids(rng, cfg["vocab_size"], 2, 11), ids(rng, cfg["vocab_size"], 2, 11)
    assert_logits_close(m.forward(idx), hf_logits(ref, idx), 1e-4)
    for x in (m, full):
        x.zero_grad()
        x.forward_backward(idx, tgt)
    gm, gf = m.gradients(), full.gradients()
    for k, g in gm.items():
        np.testing.assert_allclose(g, gf[k], rtol=1e-5, atol=1e-6 * np.max(np.abs(gf[k])), err_msg=k)
    m.save_pretrained(tmp_path / "out")
    back = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "out").eval()
    assert_logits_close(m.forward(idx), hf_logits(back, idx), 1e-5)


@pytest.mark.parametrize("opts", [dict(), dict(tie_word_embeddings=False, activation_function="gelu"),
                                  dict(bias=False, layer_norm_epsilon=1e-3)])
def test_save_pretrained_after_training_loads_in_transformers(tmp_path, rng, opts):
    tok = CharTokenizer.from_text("abcdefghij klmnop")
    m = Transformer(tok.vocab_size + 3, block_size=13, n_layer=2, n_head=3, n_embd=21, seed=2, tokenizer=tok, **opts)
    for _ in range(3):
        idx = ids(rng, m.vocab_size, 4, 13)
        m.zero_grad()
        m.forward_backward(idx, np.roll(idx, -1, axis=1))
        m.step(3e-2)
    m.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]  # a char tokenizer is not HF's
    ref = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    idx = ids(rng, m.vocab_size, 3, 13)
    assert_logits_close(m.forward(idx), hf_logits(ref, idx), 1e-5)
    assert ref.config.tie_word_embeddings == m.config["tie_word_embeddings"]
    # Back in fastlm, bit for bit (a bias-free model comes back with zero biases).
    np.testing.assert_array_equal(Transformer.from_pretrained(tmp_path).forward(idx), m.forward(idx))


def test_save_pretrained_round_trip_is_bit_exact(tmp_path, rng):
    m = Transformer(40, block_size=8, n_layer=2, n_head=2, n_embd=12, tie_word_embeddings=False,
                    activation_function="gelu", layer_norm_epsilon=1e-4, seed=9)
    m.save_pretrained(tmp_path)
    back = Transformer.from_pretrained(tmp_path)
    assert back.config == dict(m.config, seed=0)  # the seed is not GPT-2's
    a, b = m.state_dict(), back.state_dict()
    assert list(a) == list(b) and all(np.array_equal(a[k], b[k]) for k in a)
    m.save_pretrained(tmp_path)  # over an existing directory; other files stay
    (tmp_path / "notes.txt").write_text("kept")
    m.save_pretrained(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "kept"


# ---- the config options in fastlm checkpoints ------------------------------------

def test_checkpoint_keeps_the_options(tmp_path, rng):
    m = Transformer(30, block_size=8, n_layer=2, n_head=2, n_embd=10, bias=False, tie_word_embeddings=False,
                    activation_function="gelu", layer_norm_epsilon=1e-3, seed=4)
    idx = ids(rng, 30, 2, 8)
    m.zero_grad()
    m.forward_backward(idx, idx)
    m.step(1e-2)
    m.save(tmp_path)
    assert_restored(m, Transformer.load(tmp_path), idx, idx)
    assert "lm_head.weight" in m.state_dict() and len(m.state_dict()) == len(m._names)


def test_checkpoint_without_the_options_loads_as_gpt2(tmp_path, rng):
    """Checkpoints written before the options existed have no such keys."""
    m = Transformer(30, block_size=8, n_layer=1, n_head=2, n_embd=10, seed=4)
    m.save(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    for k in ("bias", "tie_word_embeddings", "activation_function", "layer_norm_epsilon"):
        del cfg[k]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    back = Transformer.load(tmp_path)
    assert back.config == m.config
    idx = ids(rng, 30, 2, 8)
    np.testing.assert_array_equal(back.forward(idx), m.forward(idx))


def test_bad_options():
    arch = dict(block_size=8, n_layer=1, n_head=2, n_embd=10)
    with pytest.raises(ValueError, match="activation_function"):
        Transformer(30, **arch, activation_function="relu")
    with pytest.raises(TypeError, match="bias"):
        Transformer(30, **arch, bias="no")
    with pytest.raises(TypeError, match="tie_word_embeddings"):
        Transformer(30, **arch, tie_word_embeddings=1)
    for eps in (0.0, -1e-5, float("nan"), float("inf"), 1e-45, 2.0):
        with pytest.raises(ValueError, match="layer_norm_epsilon"):
            Transformer(30, **arch, layer_norm_epsilon=eps)
    with pytest.raises(TypeError, match="layer_norm_epsilon"):
        Transformer(30, **arch, layer_norm_epsilon="1e-5")


# ---- from_pretrained: other layouts and bad input ---------------------------------

def _edit_config(d, **changes):
    cfg = json.loads((d / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (d / "config.json").write_text(json.dumps(cfg))


def _tensors(d):
    from safetensors.numpy import load_file
    return load_file(d / "model.safetensors")


def _write_tensors(d, tensors):
    from safetensors.numpy import save_file
    save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})


def test_gpt2model_names_buffers_and_shards(saved_hf, rng, tmp_path):
    """Names without 'transformer.' (GPT2Model checkpoints, the hub's gpt2), the
    causal-mask buffers older versions saved, and sharded weights all load."""
    d, ref = saved_hf
    idx = ids(rng, 101, 2, 9)
    want = hf_logits(ref, idx)
    t = _tensors(d)
    stripped = {(k[len("transformer."):] if k.startswith("transformer.") else k): v for k, v in t.items()}
    stripped["h.0.attn.bias"] = np.tril(np.ones((1, 1, 23, 23), np.float32))
    stripped["h.0.attn.masked_bias"] = np.array(-1e4, np.float32)
    _write_tensors(d, stripped)
    assert_logits_close(Transformer.from_pretrained(d).forward(idx), want, 1e-4)
    from safetensors.numpy import save_file
    names = sorted(t)
    half = len(names) // 2
    os.remove(d / "model.safetensors")
    save_file({k: t[k] for k in names[:half]}, d / "a.safetensors", metadata={"format": "pt"})
    save_file({k: t[k] for k in names[half:]}, d / "b.safetensors", metadata={"format": "pt"})
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: ("a.safetensors" if i < half else "b.safetensors") for i, k in enumerate(names)}}))
    assert_logits_close(Transformer.from_pretrained(d).forward(idx), want, 1e-4)


@pytest.mark.parametrize("changes, field", [
    (dict(model_type="llama"), "model_type"),
    (dict(model_type=None), "model_type"),
    (dict(n_head=None), "n_head"),
    (dict(n_head=3), "n_head"),
    (dict(n_embd="20"), "n_embd"),
    (dict(n_positions=None, n_ctx=None), "n_positions"),
    (dict(activation_function="relu"), "activation_function"),
    (dict(layer_norm_epsilon=-1), "layer_norm_epsilon"),
    (dict(tie_word_embeddings="yes"), "tie_word_embeddings"),
    (dict(n_inner=7), "n_inner"),
    (dict(scale_attn_by_inverse_layer_idx=True), "scale_attn_by_inverse_layer_idx"),
    (dict(vocab_size=100), "vocab_size"),  # the weights then disagree
])
def test_bad_config(saved_hf, changes, field):
    d, _ = saved_hf
    _edit_config(d, **changes)
    with pytest.raises(ValueError, match=field) as e:
        Transformer.from_pretrained(d)
    assert "config.json" in str(e.value) or "model.safetensors" in str(e.value)


def test_corrupt_or_missing_config(saved_hf):
    d, _ = saved_hf
    (d / "config.json").write_text('{"model_type": "gpt2", ')
    with pytest.raises(ValueError, match="config.json"):
        Transformer.from_pretrained(d)
    (d / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="config.json"):
        Transformer.from_pretrained(d)
    os.remove(d / "config.json")
    with pytest.raises(FileNotFoundError, match="config.json"):
        Transformer.from_pretrained(d)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        Transformer.from_pretrained(d / "nothing-here")


def test_pickles_only_are_refused_unread(saved_hf):
    d, _ = saved_hf
    os.remove(d / "model.safetensors")
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04 not read")
    with pytest.raises(ValueError, match="safetensors") as e:
        Transformer.from_pretrained(d)
    assert "pytorch_model.bin" in str(e.value) and "save_pretrained" in str(e.value)
    os.remove(d / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        Transformer.from_pretrained(d)


def _break(t, kind):
    name = "transformer.h.1.attn.c_attn.weight"
    if kind == "missing":
        del t["transformer.h.2.mlp.c_fc.bias"]
        return "transformer.h.2.mlp.c_fc.bias"
    if kind == "transposed":
        t[name] = np.ascontiguousarray(t[name].T)
        return name
    if kind == "unexpected":
        t["transformer.h.0.attn.q_proj.weight"] = np.zeros((20, 20), np.float32)
        return "q_proj"
    if kind == "int":
        t["transformer.wpe.weight"] = t["transformer.wpe.weight"].astype(np.int32)
        return "wpe"
    if kind == "nan":
        t["transformer.ln_f.bias"][3] = np.nan
        return "non-finite"
    if kind == "no-head":
        del t["lm_head.weight"]
        return "lm_head.weight"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing", "transposed", "unexpected", "int", "nan", "no-head"])
def test_bad_weights(saved_hf, kind):
    d, _ = saved_hf
    t = _tensors(d)
    what = _break(t, kind)
    _write_tensors(d, t)
    with pytest.raises(ValueError, match="model.safetensors") as e:
        Transformer.from_pretrained(d)
    assert what in str(e.value)


def test_tied_head_must_equal_the_embedding(tmp_path):
    hf_model(HF_CONFIGS["tied-erf"]).save_pretrained(tmp_path, safe_serialization=True)
    t = _tensors(tmp_path)
    t["lm_head.weight"] = t["transformer.wte.weight"] + 1
    _write_tensors(tmp_path, t)
    with pytest.raises(ValueError, match="lm_head.weight.*tie_word_embeddings"):
        Transformer.from_pretrained(tmp_path)
    t["lm_head.weight"] = t["transformer.wte.weight"]
    _write_tensors(tmp_path, t)
    Transformer.from_pretrained(tmp_path)


def test_truncated_weights(saved_hf):
    d, _ = saved_hf
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="model.safetensors"):
        Transformer.from_pretrained(d)


def test_save_pretrained_bad_target(tmp_path):
    m = Transformer(20, block_size=4, n_layer=1, n_head=1, n_embd=4)
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        m.save_pretrained(tmp_path / "file")


def test_load_of_a_hf_dir_points_to_from_pretrained(saved_hf):
    d, _ = saved_hf
    with pytest.raises(ValueError, match="from_pretrained"):
        Transformer.load(d)


# ---- tokenizer files (BPETokenizer's hooks, faked by a character tokenizer) -------

class _FakeBPE(CharTokenizer):
    """Stands in for a BPE tokenizer: from_pretrained / save_pretrained over a
    directory's tokenizer.json, and an eos id."""
    eos_token_id = 0

    @classmethod
    def from_pretrained(cls, d):
        text = (d / "tokenizer.json" if hasattr(d, "joinpath") else os.path.join(d, "tokenizer.json"))
        data = json.loads(open(text, encoding="utf-8").read())
        if not isinstance(data, dict) or "chars" not in data:
            raise ValueError("no 'chars' field")
        return cls(data["chars"])

    def save_pretrained(self, d, model_max_length=None):
        self.saved_max_length = model_max_length
        with open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8") as f:
            json.dump({"chars": self.chars}, f)


@pytest.fixture
def fake_bpe(monkeypatch):
    import importlib
    import sys
    import types
    try:
        mod = importlib.import_module("fastlm.bpe")
    except ImportError:
        mod = types.ModuleType("fastlm.bpe")
        monkeypatch.setitem(sys.modules, "fastlm.bpe", mod)
    monkeypatch.setattr(mod, "BPETokenizer", _FakeBPE, raising=False)
    return _FakeBPE


def test_bpe_tokenizer_saves_for_auto_tokenizer(tmp_path, rng):
    """With the real BPE tokenizer: save_pretrained writes a directory that
    transformers' GPT2LMHeadModel and AutoTokenizer load, with the same ids."""
    bpe = pytest.importorskip("fastlm.bpe")
    text = "The quick brown fox jumps over the lazy dog. " * 20 + "Ünïcødé 東京 🙂\r\n"
    tok = bpe.BPETokenizer.train(text, 300)
    m = Transformer(300, block_size=16, n_layer=1, n_head=2, n_embd=8, tokenizer=tok)
    m.save_pretrained(tmp_path)
    auto = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert list(auto(text)["input_ids"]) == list(tok.encode(text))
    ref = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    idx = ids(rng, 300, 2, 16)
    assert_logits_close(m.forward(idx), hf_logits(ref, idx), 1e-5)
    back = Transformer.from_pretrained(tmp_path)
    assert back.tokenizer is not None and list(back.tokenizer.encode(text)) == list(tok.encode(text))


def test_tokenizer_files_are_saved_and_read(fake_bpe, tmp_path):
    tok = fake_bpe(list("abcdef"))
    m = Transformer(8, block_size=8, n_layer=1, n_head=1, n_embd=4, tokenizer=tok)
    m.save_pretrained(tmp_path)
    assert tok.saved_max_length == 8  # the model's context length
    assert json.loads((tmp_path / "config.json").read_text())["eos_token_id"] == 0
    back = Transformer.from_pretrained(tmp_path)
    assert isinstance(back.tokenizer, fake_bpe) and back.tokenizer.chars == tok.chars
    import fastlm
    out = fastlm.pipeline("text-generation", model=tmp_path)("abc", max_new_tokens=3)
    assert out[0]["generated_text"].startswith("abc")


def test_tokenizer_larger_than_the_model_or_corrupt(fake_bpe, tmp_path):
    Transformer(4, block_size=8, n_layer=1, n_head=1, n_embd=4).save_pretrained(tmp_path)
    fake_bpe(list("abcdef")).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="vocab_size"):
        Transformer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text("[1]")
    with pytest.raises(ValueError, match="tokenizer.json"):
        Transformer.from_pretrained(tmp_path)

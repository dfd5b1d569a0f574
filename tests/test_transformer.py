"""fastlm.Transformer against independent GPT-2 references (tests/reference/gpt.py):
a float64 NumPy GPT always, a nanoGPT-style PyTorch module when torch imports.

Odd sizes on purpose: vocab 67, block 19, 3 heads of 16, n_embd 48, 2 layers, batch 3.
"""
from __future__ import annotations

import json
import math
import os
import shutil

import numpy as np
import pytest

from conftest import (assert_bad_inputs_refused, assert_bad_state_dicts_refused, assert_error_bound,
                      assert_evaluate_short_and_bad, assert_restored, assert_same_next_step,
                      assert_streams_independent)
from reference.gpt import (make_torch_gpt, np_adamw_step, np_forward_backward, param_names, param_shapes,
                           random_state_dict, torch_grads)
from fastlm.checkpoint import CONFIG_FILE, MODEL_FILE, OPTIMIZER_FILE, TOKENIZER_FILE, TRAINER_STATE_FILE
from fastlm.model import Transformer
from fastlm.tokenizers import ByteTokenizer, CharTokenizer
from fastlm.train import History, get_lr

V, BLOCK, N_LAYER, N_HEAD, N_EMBD, B = 67, 19, 2, 3, 48, 3
ARCH = dict(block_size=BLOCK, n_layer=N_LAYER, n_head=N_HEAD, n_embd=N_EMBD)


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


@pytest.fixture(scope="module")
def sd():
    return random_state_dict(V, BLOCK, N_LAYER, N_EMBD, seed=7)


@pytest.fixture
def model(sd):
    m = Transformer(V, **ARCH)
    m.load_state_dict(sd)
    return m


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(11)
    idx = rng.integers(0, V, (B, BLOCK))
    tgt = rng.integers(0, V, (B, BLOCK))
    tgt[0, :4] = -100
    tgt[2, 7] = -100
    return idx, tgt


# ------------------------------------------------------------------ construction

def test_config_and_num_parameters():
    m = Transformer(V, **ARCH, seed=3)
    assert m.config == dict(vocab_size=V, **ARCH, bias=True, tie_word_embeddings=True,
                            activation_function="gelu_new", layer_norm_epsilon=1e-5, dropout=0.0, seed=3,
                            device="cpu", precision="fp32")
    shapes = param_shapes(V, BLOCK, N_LAYER, N_EMBD)
    n = sum(int(np.prod(s)) for s in shapes.values())
    assert m.num_parameters() == n
    assert m.num_parameters(exclude_embeddings=True) == n - V * N_EMBD - BLOCK * N_EMBD
    assert Transformer(**m.config).config == m.config
    assert "Transformer(vocab_size=67" in repr(m)


def test_gpt2_init():
    m = Transformer(V, block_size=BLOCK, n_layer=4, n_head=N_HEAD, n_embd=N_EMBD, seed=5)
    sd = m.state_dict()
    for name, a in sd.items():
        assert a.dtype == np.float32
        if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
            assert np.all(a == 1.0), name
        elif name.endswith(".bias"):
            assert np.all(a == 0.0), name
        elif name.endswith("c_proj.weight"):
            assert abs(a.std() - 0.02 / math.sqrt(8)) < 0.1 * 0.02 / math.sqrt(8), name
        else:
            assert abs(a.std() - 0.02) < 0.002 and abs(a.mean()) < 0.002, name
    again = Transformer(V, block_size=BLOCK, n_layer=4, n_head=N_HEAD, n_embd=N_EMBD, seed=5).state_dict()
    assert all(np.array_equal(sd[k], again[k]) for k in sd)
    other = Transformer(V, block_size=BLOCK, n_layer=4, n_head=N_HEAD, n_embd=N_EMBD, seed=6).state_dict()
    assert not np.array_equal(sd["transformer.wte.weight"], other["transformer.wte.weight"])


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(n_embd=50, n_head=3), ValueError, "divisible"),
    (dict(n_layer=0), ValueError, "n_layer"),
    (dict(block_size=0), ValueError, "block_size"),
    (dict(n_head=0), ValueError, "n_head"),
    (dict(n_embd=-3), ValueError, "n_embd"),
    (dict(n_embd=2**31, n_head=1), ValueError, "n_embd must be <= 2147483647"),
    (dict(n_embd=2**31 - 1, n_head=1), ValueError, "c_attn.weight is too large"),  # 3C x C > 2^63
    (dict(block_size=4.0), TypeError, "block_size"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(device="tpu"), ValueError, "unknown device"),
    (dict(device="cuda"), RuntimeError, "CUDA"),
    (dict(device=0), TypeError, "device"),
    (dict(tokenizer=ByteTokenizer()), ValueError, "tokenizer.vocab_size"),
    (dict(tokenizer="abc"), TypeError, "tokenizer"),
])
def test_bad_config(kwargs, exc, match):
    args = dict(ARCH)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        Transformer(V, **args)


def test_out_of_memory_names_the_model(monkeypatch):
    def no_memory(self, arch):
        raise MemoryError()
    monkeypatch.setattr(Transformer, "_make_core", no_memory)
    with pytest.raises(MemoryError, match=r"Transformer\(vocab_size=67, .*n_embd=48.*\): not enough memory"):
        Transformer(V, **ARCH)


def test_bad_vocab_size():
    with pytest.raises(ValueError, match="vocab_size"):
        Transformer(0)
    with pytest.raises(TypeError, match="vocab_size"):
        Transformer("67")


# ------------------------------------------------------------------- state dict

def test_state_dict_names_layout_and_copies(model, sd):
    got = model.state_dict()
    assert list(got) == param_names(N_LAYER) + ["lm_head.weight"]
    for k, a in got.items():
        assert a.shape == sd[k].shape and a.dtype == np.float32
        assert np.array_equal(a, sd[k]), k
    assert got["transformer.h.1.attn.c_attn.weight"].shape == (3 * N_EMBD, N_EMBD)
    assert got["transformer.h.0.mlp.c_proj.weight"].shape == (N_EMBD, 4 * N_EMBD)
    got["transformer.wte.weight"][:] = 0  # a copy: the model is untouched
    assert np.array_equal(model.state_dict()["transformer.wte.weight"], sd["transformer.wte.weight"])


def test_load_state_dict_conversions(sd):
    m = Transformer(V, **ARCH)
    d64 = {k: v.astype(np.float64) for k, v in sd.items() if k != "lm_head.weight"}  # lm_head may be left out
    m.load_state_dict(d64)
    assert all(np.array_equal(m.state_dict()[k], sd[k]) for k in sd)
    torch = _torch()
    if torch is not None:
        m2 = Transformer(V, **ARCH)
        m2.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in sd.items()})
        assert all(np.array_equal(m2.state_dict()[k], sd[k]) for k in sd)


def test_load_state_dict_errors(sd):
    m = Transformer(V, **ARCH, seed=1)
    before = m.state_dict()
    bad = dict(sd)
    del bad["transformer.h.1.ln_2.bias"]
    bad["transformer.h.9.ln_2.bias"] = np.zeros(N_EMBD, np.float32)
    bad["transformer.wpe.weight"] = np.zeros((BLOCK + 1, N_EMBD), np.float32)
    with pytest.raises(ValueError) as ei:
        m.load_state_dict(bad)
    msg = str(ei.value)
    assert "missing keys: transformer.h.1.ln_2.bias" in msg
    assert "unexpected keys: 'transformer.h.9.ln_2.bias'" in msg
    assert "transformer.wpe.weight: got (20, 48), expected (19, 48)" in msg

    tied = dict(sd)
    tied["lm_head.weight"] = sd["lm_head.weight"] + 1
    with pytest.raises(ValueError, match="lm_head.weight.*tied"):
        m.load_state_dict(tied)
    strs = dict(sd)
    strs["transformer.ln_f.bias"] = np.array(["a"] * N_EMBD)
    with pytest.raises(TypeError, match="transformer.ln_f.bias"):
        m.load_state_dict(strs)
    assert_bad_state_dicts_refused(m, sd, "transformer.ln_f.bias", before)


# --------------------------------------------------------------------- parity

def _bound(ours, ref64, naive32, name, factor=8.0):
    assert_error_bound(ours, ref64, naive32, factor=factor, name=name)


def test_forward_parity(model, sd, batch):
    idx, _ = batch
    ref64, _, _ = np_forward_backward(sd, idx, None, N_HEAD, np.float64)
    ref32, _, _ = np_forward_backward(sd, idx, None, N_HEAD, np.float32)
    logits = model.forward(idx)
    assert logits.dtype == np.float32 and logits.shape == (B, BLOCK, V)
    _bound(logits, ref64, ref32, "logits")
    # Shorter sequences and lists work too; a prefix's logits do not see the future.
    short = model.forward(idx[:, :5].tolist())
    assert short.shape == (B, 5, V)
    np.testing.assert_allclose(short, logits[:, :5], rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(model.forward(idx.astype(np.int32)), logits)


def test_loss_and_every_gradient_parity(model, sd, batch):
    idx, tgt = batch
    _, loss64, g64 = np_forward_backward(sd, idx, tgt, N_HEAD, np.float64)
    _, loss32, g32 = np_forward_backward(sd, idx, tgt, N_HEAD, np.float32)
    model.zero_grad()
    loss = model.forward_backward(idx, tgt)
    assert isinstance(loss, float)
    assert abs(loss - loss64) <= 8 * abs(loss32 - loss64) + 1e-6 * abs(loss64)
    grads = model.gradients()
    assert list(grads) == param_names(N_LAYER) + ["lm_head.weight"]
    for name in param_names(N_LAYER):
        assert grads[name].dtype == np.float32 and grads[name].shape == g64[name].shape
        _bound(grads[name], g64[name], g32[name], name)
    assert np.array_equal(grads["lm_head.weight"], grads["transformer.wte.weight"])
    norm64 = math.sqrt(sum(float(np.sum(g * g)) for g in g64.values()))
    assert abs(model.grad_norm() - norm64) <= 1e-4 * norm64
    # Gradients accumulate like loss.backward(); zero_grad clears them.
    model.forward_backward(idx, tgt)
    twice = model.gradients()
    np.testing.assert_allclose(twice["transformer.h.0.attn.c_attn.weight"],
                               2 * grads["transformer.h.0.attn.c_attn.weight"], rtol=1e-5, atol=1e-9)
    model.zero_grad()
    assert all(not g.any() for g in model.gradients().values())


def test_parity_with_pytorch(model, sd, batch):
    torch = _torch()
    if torch is None:
        pytest.skip("torch not installed; the float64 NumPy reference covers parity")
    idx, tgt = batch
    t64 = make_torch_gpt(sd, N_HEAD, "float64")
    t32 = make_torch_gpt(sd, N_HEAD, "float32")
    outs = {}
    for key, tm in (("64", t64), ("32", t32)):
        logits, loss = tm(torch.from_numpy(idx), torch.from_numpy(tgt))
        loss.backward()
        outs[key] = (logits.detach().double().numpy(), loss.item(), torch_grads(tm))
    # The NumPy reference itself agrees with PyTorch in float64.
    ref_logits, ref_loss, ref_grads = np_forward_backward(sd, idx, tgt, N_HEAD, np.float64)
    np.testing.assert_allclose(ref_logits, outs["64"][0], rtol=1e-10, atol=1e-12)
    assert abs(ref_loss - outs["64"][1]) < 1e-12
    for name in param_names(N_LAYER):
        np.testing.assert_allclose(ref_grads[name], outs["64"][2][name], rtol=1e-8, atol=1e-12)

    model.zero_grad()
    loss = model.forward_backward(idx, tgt)
    _bound(model.forward(idx), outs["64"][0], outs["32"][0], "logits vs torch")
    assert abs(loss - outs["64"][1]) <= 8 * abs(outs["32"][1] - outs["64"][1]) + 1e-6
    grads = model.gradients()
    for name in param_names(N_LAYER):
        _bound(grads[name], outs["64"][2][name], outs["32"][2][name], name + " vs torch")


def _no_key_bias(name, a):
    """Drop the key bias from c_attn.bias: its gradient is exactly zero (softmax
    ignores a per-row constant), so Adam turns float32 rounding noise there into
    full-size steps, and parameter comparisons there are meaningless."""
    if name.endswith("c_attn.bias"):
        return np.delete(a, np.s_[N_EMBD:2 * N_EMBD])
    return a


def test_ten_adamw_steps(sd):
    rng = np.random.default_rng(5)
    two = [(rng.integers(0, V, (B, BLOCK)), rng.integers(0, V, (B, BLOCK))) for _ in range(2)]
    batches = [two[i % 2] for i in range(10)]  # memorisable, so the loss must fall
    lr, betas, wd = 3e-3, (0.9, 0.95), 0.1
    m = Transformer(V, **ARCH)
    m.load_state_dict(sd)
    ours = []
    for x, y in batches:
        m.zero_grad()
        ours.append(m.forward_backward(x, y))
        m.step(lr, betas=betas, eps=1e-8, weight_decay=wd)
    assert m.optimizer_step == 10

    params = {k: v.astype(np.float64) for k, v in sd.items() if k != "lm_head.weight"}
    state: dict = {}
    ref = []
    for t, (x, y) in enumerate(batches, 1):
        _, loss, grads = np_forward_backward(params, x, y, N_HEAD, np.float64)
        ref.append(loss)
        np_adamw_step(params, grads, state, t, lr, betas, 1e-8, wd)
    assert ours[-1] < ours[0] - 0.05  # it learns
    np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-4)
    final = m.state_dict()
    for k in params:
        np.testing.assert_allclose(_no_key_bias(k, final[k]), _no_key_bias(k, params[k]), rtol=0, atol=2e-4,
                                   err_msg=k)

    torch = _torch()
    if torch is not None:
        tm = make_torch_gpt(sd, N_HEAD, "float64")
        opt = tm.configure_optimizer(lr, betas, 1e-8, wd)
        tl = []
        for x, y in batches:
            opt.zero_grad()
            _, loss = tm(torch.from_numpy(x), torch.from_numpy(y))
            loss.backward()
            opt.step()
            tl.append(loss.item())
        np.testing.assert_allclose(tl, ref, rtol=0, atol=1e-10)  # the NumPy AdamW is torch's
        np.testing.assert_allclose(ours, tl, rtol=0, atol=2e-4)


def test_step_grad_scale(sd, batch):
    idx, tgt = batch
    x, y = (np.ascontiguousarray(a, dtype=np.int64) for a in batch)
    a = Transformer(V, **ARCH)
    a.load_state_dict(sd)
    a.forward_backward(idx, tgt)
    full = a.gradients()
    a.step(1e-3, grad_scale=0.5)
    b = Transformer(V, **ARCH)
    b.load_state_dict(sd)
    b._g.forward_backward(x, y, 0.5)  # the same gradients, halved at the source
    np.testing.assert_allclose(b.gradients()["transformer.wpe.weight"], 0.5 * full["transformer.wpe.weight"],
                               rtol=1e-6, atol=1e-10)
    b.step(1e-3)
    # Equal wherever Adam's eps (1e-8) is negligible against the gradient; on a
    # first step each parameter moves by about lr * sign(grad) otherwise.
    after = b.state_dict()
    for k, v in a.state_dict().items():
        if k == "lm_head.weight":
            continue
        big = np.abs(full[k]) > 1e-5
        assert big.mean() > 0.5, k
        np.testing.assert_allclose(v[big], after[k][big], rtol=0, atol=1e-6, err_msg=k)
    # grad_scale=0 leaves only the decoupled weight decay, on 2-D tensors only.
    c = Transformer(V, **ARCH)
    c.load_state_dict(sd)
    c.forward_backward(idx, tgt)
    c.step(1e-2, weight_decay=0.5, grad_scale=0.0)
    for k, v in c.state_dict().items():
        want = sd[k] * np.float32(1 - 1e-2 * 0.5) if sd[k].ndim == 2 else sd[k]
        np.testing.assert_allclose(v, want, rtol=1e-6, atol=0, err_msg=k)


# ----------------------------------------------------------------- bad inputs

def test_bad_inputs(model, batch):
    idx, tgt = batch
    assert_bad_inputs_refused(model, idx, tgt, V)
    with pytest.raises(ValueError, match="block_size"):
        model.forward(np.zeros((1, BLOCK + 1), np.int64))
    with pytest.raises(TypeError, match="integer"):
        model.forward(idx.astype(bool))
    with pytest.raises(TypeError):
        model.forward([[1, 2], [3]])
    with pytest.raises(ValueError, match="lr"):
        model.step(float("nan"))
    with pytest.raises(TypeError, match="betas"):
        model.step(1e-3, betas=0.9)
    with pytest.raises(ValueError, match="eps"):
        model.step(1e-3, eps=0.0)
    with pytest.raises(ValueError, match="weight_decay"):
        model.step(1e-3, weight_decay=-0.1)
    assert model.optimizer_step == 0  # nothing was stepped


# ------------------------------------------------------------------ generation

def _greedy_by_recompute(model, prompt2d, n):
    seq = np.array(prompt2d, dtype=np.int64)
    for _ in range(n):
        logits = model.forward(seq[:, -BLOCK:])[:, -1]
        seq = np.concatenate([seq, logits.argmax(-1)[:, None]], axis=1)
    return seq


@pytest.mark.parametrize("n_new", [BLOCK - 6, 2 * BLOCK + 3])  # within block_size, and well beyond
def test_greedy_kv_cache_equals_full_recompute(model, n_new):
    prompt = np.array([[5, 9, 1, 60, 2], [0, 0, 33, 66, 4]], dtype=np.int64)
    got = model.generate(prompt, n_new, do_sample=False)
    assert got.dtype == np.int64 and got.shape == (2, 5 + n_new)
    np.testing.assert_array_equal(got, _greedy_by_recompute(model, prompt, n_new))
    one = model.generate(prompt[1], n_new, do_sample=False)
    assert one.ndim == 1
    np.testing.assert_array_equal(one, got[1])


def test_decode_logits_match_forward(model):
    rng = np.random.default_rng(3)
    seq = rng.integers(0, V, (2, BLOCK))
    full = model.forward(seq)
    g = model._g
    last = g.decode(np.ascontiguousarray(seq[:, :7]), 0)
    np.testing.assert_allclose(last, full[:, 6], rtol=1e-4, atol=1e-5)
    for t in range(7, BLOCK):
        last = g.decode(np.ascontiguousarray(seq[:, t:t + 1]), t)
        np.testing.assert_allclose(last, full[:, t], rtol=1e-4, atol=1e-5, err_msg=f"position {t}")


def test_long_prompt_is_cropped(model):
    rng = np.random.default_rng(4)
    prompt = rng.integers(0, V, 3 * BLOCK)
    got = model.generate(prompt, 4, do_sample=False)
    np.testing.assert_array_equal(got[:3 * BLOCK], prompt)
    np.testing.assert_array_equal(got, _greedy_by_recompute(model, prompt[None], 4)[0])


def test_generate_seed_stream_and_eos(model):
    prompt = [3, 1, 4, 1, 5]
    a = model.generate(prompt, 25, seed=123, temperature=1.3)
    b = model.generate(prompt, 25, seed=123, temperature=1.3)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (30,) and a[:5].tolist() == prompt
    c = model.generate(prompt, 25, seed=124, temperature=1.3)
    assert not np.array_equal(a, c)
    s = list(model.generate(prompt, 25, seed=123, temperature=1.3, stream=True))
    assert all(isinstance(t, int) for t in s) and s == a[5:].tolist()
    # top_k=1 is greedy whatever the temperature
    np.testing.assert_array_equal(model.generate(prompt, 10, top_k=1, seed=9),
                                  model.generate(prompt, 10, do_sample=False))
    top = model.generate(prompt, 10, top_k=5, top_p=0.9, seed=9)
    assert ((top >= 0) & (top < V)).all()
    assert model.generate(prompt, 0).tolist() == prompt
    assert list(model.generate(prompt, 0, stream=True)) == []
    # eos: the greedy run's first new token stops a 1-D generation right after it
    greedy = model.generate(prompt, 6, do_sample=False)
    eos = int(greedy[5])
    assert model.generate(prompt, 6, do_sample=False, eos_token_id=eos).tolist() == greedy[:6].tolist()
    # in a batch, finished rows keep emitting eos while the others go on
    batch = np.array([prompt, [7, 7, 7, 7, 7]])
    free = model.generate(batch, 8, do_sample=False)
    eos = int(free[0, 5])
    if eos not in free[1, 5:].tolist():
        got = model.generate(batch, 8, do_sample=False, eos_token_id=eos)
        assert got.shape == free.shape
        assert (got[0, 5:] == eos).all()
        np.testing.assert_array_equal(got[1], free[1])
    streamed = list(model.generate(batch, 3, seed=1, stream=True))
    assert len(streamed) == 3 and streamed[0].shape == (2,)


def test_interleaved_streams_do_not_share_the_cache(model):
    assert_streams_independent(model)


def test_generate_with_tokenizer_prompt():
    tok = CharTokenizer.from_text("abcdefgh ")
    m = Transformer(tok.vocab_size, block_size=8, n_layer=1, n_head=1, n_embd=8, tokenizer=tok)
    out = m.generate("abc", 5, seed=0)
    assert out[:3].tolist() == tok.encode("abc").tolist() and len(tok.decode(out)) == 8
    with pytest.raises(TypeError, match="tokenizer"):
        Transformer(10, block_size=8, n_layer=1, n_head=1, n_embd=8).generate("abc", 2)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(temperature=0.0), ValueError, "temperature"),
    (dict(temperature=-1.0), ValueError, "temperature"),
    (dict(temperature=float("inf")), ValueError, "temperature"),
    (dict(top_k=0), ValueError, "top_k"),
    (dict(top_k=2.5), TypeError, "top_k"),
    (dict(top_p=0.0), ValueError, "top_p"),
    (dict(top_p=1.5), ValueError, "top_p"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(eos_token_id=V), ValueError, "eos_token_id"),
    (dict(do_sample="yes"), TypeError, "do_sample"),
    (dict(stream=True, top_k=0), ValueError, "top_k"),  # checked at the call, not at next()
])
def test_generate_bad_args(model, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        model.generate([1, 2], 3, **kwargs)


def test_generate_bad_prompts(model):
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate([1, 2], -1)
    with pytest.raises(ValueError, match="at least one token"):
        model.generate(np.zeros(0, np.int64), 3)
    with pytest.raises(ValueError, match="out of range"):
        model.generate([1, V], 3)
    with pytest.raises(TypeError, match="integer"):
        model.generate([1.5, 2.0], 3)
    with pytest.raises(ValueError, match="1-D ids or a 2-D batch"):
        model.generate(np.zeros((1, 1, 2), np.int64), 3)
    assert model.generate([[1, 2]], 0, do_sample=False).shape == (1, 2)
    assert model.generate([1, 2], 2, do_sample=False, temperature=0.0).shape == (4,)


# ------------------------------------------------------------------ checkpoints

def _trained(sd, steps=2):
    tok = CharTokenizer.from_text("".join(chr(ord("!") + i) for i in range(V)))
    m = Transformer(V, **ARCH, seed=4, tokenizer=tok)
    m.load_state_dict(sd)
    data = np.random.default_rng(0).integers(0, V, 500)
    m.fit(data, steps=steps, batch_size=2, progress=False, val=data[:100], eval_interval=1)
    return m


def test_save_load_bit_exact(tmp_path, sd, batch):
    m = _trained(sd)
    path = tmp_path / "ckpt"
    path.mkdir()
    (path / "notes.txt").write_text("keep me")
    (path / TOKENIZER_FILE).write_text("stale")
    m.save(path)
    assert sorted(os.listdir(path)) == sorted([CONFIG_FILE, MODEL_FILE, TOKENIZER_FILE, OPTIMIZER_FILE,
                                               TRAINER_STATE_FILE, "notes.txt"])
    assert (path / "notes.txt").read_text() == "keep me"
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temporaries left
    cfg = json.loads((path / CONFIG_FILE).read_text())
    assert cfg["model_type"] == "transformer" and cfg["n_embd"] == N_EMBD
    import safetensors.numpy
    stored = safetensors.numpy.load_file(str(path / MODEL_FILE))
    assert set(stored) == set(param_names(N_LAYER))  # lm_head is tied, not stored twice

    m2 = Transformer.load(path)
    idx, tgt = batch
    assert_restored(m, m2, idx, tgt)
    assert m2.optimizer_step == 2 and len(m2.history) == 2
    assert_same_next_step(m, m2, idx, tgt)


def test_save_fresh_model_and_no_tokenizer(tmp_path, sd):
    m = Transformer(V, **ARCH)
    m.load_state_dict(sd)
    m.save(tmp_path / "a" / "b")  # parents are created
    assert sorted(os.listdir(tmp_path / "a" / "b")) == [CONFIG_FILE, MODEL_FILE]
    m2 = Transformer.load(str(tmp_path / "a" / "b"))
    assert m2.tokenizer is None and m2.optimizer_step == 0 and len(m2.history) == 0
    assert all(np.array_equal(v, sd[k]) for k, v in m2.state_dict().items())


def test_corrupt_checkpoints(tmp_path, sd):
    m = _trained(sd)
    good = tmp_path / "good"
    m.save(good)

    def broken(name, mutate):
        d = tmp_path / f"bad-{name}-{len(os.listdir(tmp_path))}"
        shutil.copytree(good, d)
        mutate(d / name)
        return d

    with pytest.raises(FileNotFoundError, match="nowhere"):
        Transformer.load(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="unknown device"):
        Transformer.load(good, device="gpu")
    with pytest.raises(NotADirectoryError):
        Transformer.load(good / CONFIG_FILE)
    for name in (MODEL_FILE, OPTIMIZER_FILE):
        d = broken(name, lambda p: p.write_bytes(p.read_bytes()[:-10]))  # truncated
        with pytest.raises(ValueError, match=name.replace(".", r"\.") + ".*(corrupt|truncated)"):
            Transformer.load(d)
        d = broken(name, lambda p: p.write_bytes(b"\x00" * 3))
        with pytest.raises(ValueError, match=name.replace(".", r"\.")):
            Transformer.load(d)
    for name in (CONFIG_FILE, TRAINER_STATE_FILE, TOKENIZER_FILE):
        d = broken(name, lambda p: p.write_text(p.read_text()[:-20]))
        with pytest.raises(ValueError, match=name.replace(".", r"\.")):
            Transformer.load(d)
    d = broken(MODEL_FILE, lambda p: p.unlink())
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors"):
        Transformer.load(d)
    # a well-formed file with the wrong content
    import safetensors.numpy
    def wrong_shape(p):
        t = safetensors.numpy.load_file(str(p))
        t["transformer.wpe.weight"] = t["transformer.wpe.weight"][:5].copy()
        safetensors.numpy.save_file(t, str(p))
    d = broken(MODEL_FILE, wrong_shape)
    with pytest.raises(ValueError, match=r"model\.safetensors.*transformer\.wpe\.weight"):
        Transformer.load(d)
    def other_arch(p):
        c = json.loads(p.read_text())
        c["n_head"] = 5
        p.write_text(json.dumps(c))
    d = broken(CONFIG_FILE, other_arch)
    with pytest.raises(ValueError, match=r"config\.json.*divisible"):
        Transformer.load(d)


# ------------------------------------------------------------------------ fit

def test_get_lr_is_nanogpts():
    kw = dict(lr=1e-3, warmup_steps=10, decay_steps=100, min_lr=1e-4)
    assert get_lr(0, **kw) == pytest.approx(1e-3 / 11)
    assert get_lr(9, **kw) == pytest.approx(1e-3 * 10 / 11)
    assert get_lr(10, **kw) == pytest.approx(1e-3)
    assert get_lr(55, **kw) == pytest.approx(1e-4 + 0.5 * 9e-4)
    assert get_lr(100, **kw) == pytest.approx(1e-4)
    assert get_lr(500, **kw) == pytest.approx(1e-4)
    assert get_lr(3, lr=1.0, warmup_steps=0, decay_steps=0, min_lr=0.1) == 0.1


def _data(n=3000, seed=0):
    # A learnable sequence: a noisy walk through the vocabulary.
    rng = np.random.default_rng(seed)
    return (np.cumsum(rng.integers(1, 3, n)) % V).astype(np.uint16)


def test_fit_learns_and_records_history():
    m = Transformer(V, **ARCH, seed=2)
    data = _data()
    seen = []
    hist = m.fit(data[:2500], val=data[2500:], steps=30, batch_size=4, lr=3e-3, warmup_steps=5,
                 eval_interval=10, eval_batches=2, progress=False,
                 callback=lambda step, metrics: seen.append((step, metrics["loss"])))
    assert isinstance(hist, History) and len(hist) == 30
    assert [e["step"] for e in hist] == list(range(1, 31))
    assert seen == [(e["step"], e["loss"]) for e in hist]
    for e in hist:
        assert set(e) >= {"step", "loss", "lr", "val_loss", "tokens_per_sec", "grad_norm"}
        assert e["lr"] == pytest.approx(get_lr(e["step"] - 1, lr=3e-3, warmup_steps=5, decay_steps=30, min_lr=3e-4))
    assert [s for s, _ in hist.val_losses] == [10, 20, 30]
    assert np.mean(hist.losses[-5:]) < np.mean(hist.losses[:5]) - 0.3
    cols = hist.as_dict()
    assert cols["step"] == list(range(1, 31)) and len(cols["loss"]) == 30
    # What fit used: nanoGPT's estimate_loss, 2 random batches per split drawn with (seed, step).
    from fastlm.train import estimate_loss
    for key, split in (("val_loss", data[2500:]), ("train_loss", data[:2500])):
        est = estimate_loss(m, split, batches=2, batch_size=4, block_size=BLOCK, rng=np.random.default_rng([2, 30]))
        assert est == hist[-1][key]
    assert [e["train_loss"] is not None for e in hist] == [e["step"] % 10 == 0 for e in hist]
    assert all(0 < e["mfu"] < 10 for e in hist)
    ev = m.evaluate(data[2500:], batch_size=4, max_batches=2)
    assert ev["perplexity"] == pytest.approx(math.exp(ev["loss"]))
    assert m.history == hist


def test_evaluate_matches_reference(model, sd):
    data = np.random.default_rng(8).integers(0, V, 4 * BLOCK + 7)
    ev = model.evaluate(data, batch_size=3)
    windows = (len(data) - 1) // BLOCK
    x = np.stack([data[k * BLOCK:(k + 1) * BLOCK] for k in range(windows)])
    y = np.stack([data[k * BLOCK + 1:(k + 1) * BLOCK + 1] for k in range(windows)])
    _, ref, _ = np_forward_backward(sd, x, y, N_HEAD)
    assert ev["loss"] == pytest.approx(ref, rel=1e-5)
    assert_evaluate_short_and_bad(model, data, lambda x, y: np_forward_backward(sd, x, y, N_HEAD)[1], V)


def test_fit_matches_reference_training_loop(sd):
    """fit = get_batch + warmup/cosine lr + clip_grad_norm_ + AdamW, checked end
    to end against the float64 NumPy GPT driven by the same batches. The clip is
    small so that every step is clipped."""
    from fastlm.data import get_batch
    data = _data(2000)
    kw = dict(steps=5, batch_size=2, lr=3e-3, warmup_steps=2, betas=(0.9, 0.95), weight_decay=0.1)
    m = Transformer(V, **ARCH)
    m.load_state_dict(sd)
    hist = m.fit(data, grad_clip=0.05, seed=21, progress=False, **kw)

    rng = np.random.default_rng(21)
    params = {k: v.astype(np.float64) for k, v in sd.items() if k != "lm_head.weight"}
    state: dict = {}
    for it, entry in enumerate(hist):
        x, y = get_batch(data, 2, BLOCK, rng)
        _, loss, grads = np_forward_backward(params, x, y, N_HEAD)
        norm = math.sqrt(sum(float(np.sum(g * g)) for g in grads.values()))
        assert entry["loss"] == pytest.approx(loss, abs=2e-4)
        assert entry["grad_norm"] == pytest.approx(norm, rel=1e-3)
        scale = min(1.0, 0.05 / (norm + 1e-6))
        assert scale < 1.0
        lr = get_lr(it, lr=3e-3, warmup_steps=2, decay_steps=5, min_lr=3e-4)
        assert entry["lr"] == lr
        np_adamw_step(params, {k: g * scale for k, g in grads.items()}, state, it + 1, lr, (0.9, 0.95), 1e-8, 0.1)
    final = m.state_dict()
    for k in params:
        np.testing.assert_allclose(_no_key_bias(k, final[k]), _no_key_bias(k, params[k]), rtol=0, atol=2e-4,
                                   err_msg=k)


def test_fit_grad_accum_and_token_file(tmp_path):
    from fastlm.data import write_tokens
    data = _data(1000)
    write_tokens(tmp_path / "train.bin", data)
    m = Transformer(V, **ARCH, seed=2)
    hist = m.fit(str(tmp_path / "train.bin"), steps=2, batch_size=2, grad_accum=3, progress=False)
    assert len(hist) == 2 and m.optimizer_step == 2


def test_fit_resume_equals_uninterrupted(tmp_path):
    data = _data()
    kw = dict(steps=6, batch_size=3, lr=3e-3, warmup_steps=2, val=data[2500:], eval_interval=2, eval_batches=1,
              grad_accum=2, progress=False, seed=99)
    full = Transformer(V, **ARCH, seed=1).fit(data[:2500], **kw)

    ck = tmp_path / "run"
    first = Transformer(V, **ARCH, seed=1)
    h1 = first.fit(data[:2500], checkpoint_dir=ck, checkpoint_interval=2,
                   callback=lambda step, metrics: step < 3, **kw)  # stops (and saves) at step 3
    assert len(h1) == 3
    assert json.loads((ck / TRAINER_STATE_FILE).read_text())["step"] == 3

    resumed = Transformer(V, **ARCH, seed=1234)  # a different init: everything comes from the checkpoint
    h2 = resumed.fit(data[:2500], checkpoint_dir=ck, resume=True, **kw)
    assert [e["step"] for e in h2] == list(range(1, 7))
    assert [e["loss"] for e in h2] == [e["loss"] for e in full]  # bit for bit
    assert [e["val_loss"] for e in h2] == [e["val_loss"] for e in full]
    assert [e["lr"] for e in h2] == [e["lr"] for e in full]
    assert resumed.optimizer_step == 6
    # the final checkpoint continues from step 6: nothing left to do
    assert len(Transformer(V, **ARCH).fit(data[:2500], checkpoint_dir=ck, resume=True, **kw)) == 6


def test_fit_bad_args(tmp_path):
    m = Transformer(V, **ARCH)
    data = _data(500)
    ok = dict(steps=2, batch_size=2, progress=False)
    cases = [
        (dict(steps=0), ValueError, "steps"),
        (dict(batch_size=0), ValueError, "batch_size"),
        (dict(lr=0.0), ValueError, "lr"),
        (dict(min_lr=1.0), ValueError, "min_lr"),
        (dict(grad_accum=0), ValueError, "grad_accum"),
        (dict(betas=(1.2, 0.9)), ValueError, "betas"),
        (dict(grad_clip=-1.0), ValueError, "grad_clip"),
        (dict(eval_interval=0), ValueError, "eval_interval"),
        (dict(resume=True), ValueError, "checkpoint_dir"),
        (dict(callback=3), TypeError, "callback"),
        (dict(val=[1]), ValueError, "val"),
    ]
    for extra, exc, match in cases:
        with pytest.raises(exc, match=match):
            m.fit(data, **{**ok, **extra})
    with pytest.raises(ValueError, match="train has 10 tokens"):
        m.fit(data[:10], **ok)
    with pytest.raises(ValueError, match=r"train\[0\] = 67"):
        m.fit(np.full(100, V), **ok)
    with pytest.raises(TypeError, match="train"):
        m.fit(data.astype(np.float32), **ok)
    with pytest.raises(FileNotFoundError):
        m.fit(data, checkpoint_dir=tmp_path / "none", resume=True, **ok)
    with pytest.raises(FileNotFoundError):
        m.fit(tmp_path / "missing.bin", **ok)
    # a checkpoint of another architecture cannot be resumed into this model
    other = Transformer(V, block_size=BLOCK, n_layer=1, n_head=N_HEAD, n_embd=N_EMBD)
    other.fit(data, checkpoint_dir=tmp_path / "other", **ok)
    with pytest.raises(ValueError, match="architecture"):
        m.fit(data, checkpoint_dir=tmp_path / "other", resume=True, **ok)
    assert m.optimizer_step == 0


def test_decoding_follows_weight_changes(model, batch):
    """Decoding packs the weights once per prefill; a step or a load_state_dict
    in between must be seen by the next generate()."""
    prompt = np.array([[3, 1, 4, 1, 5]])
    model.generate(prompt, 4, do_sample=False)  # packs the current weights
    idx, tgt = batch
    model.zero_grad()
    model.forward_backward(idx, tgt)
    model.step(5e-2)
    np.testing.assert_array_equal(model.generate(prompt, 6, do_sample=False),
                                  _greedy_by_recompute(model, prompt, 6))
    model.load_state_dict(random_state_dict(V, BLOCK, N_LAYER, N_EMBD, seed=99))
    np.testing.assert_array_equal(model.generate(prompt, 6, do_sample=False),
                                  _greedy_by_recompute(model, prompt, 6))


def test_one_model_from_two_threads_does_not_corrupt_it(model, batch):
    """Calls release the GIL; concurrent calls on one model must serialise."""
    import threading
    idx, tgt = batch
    want = model.forward(idx)
    errors = []

    def hammer():
        try:
            for _ in range(20):
                model.zero_grad()
                model.forward_backward(idx, tgt)
                model.generate([1, 2, 3], 3, do_sample=False)
                np.testing.assert_array_equal(model.forward(idx), want)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]

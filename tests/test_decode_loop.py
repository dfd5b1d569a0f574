"""generate's token loop in C++ (``_C.DecodeLoop``) against the per-token
Python loop (``sampling._PYTHON_LOOP``): the same tokens, log-probabilities
and finished rows, bit for bit, for the Transformer, the LSTM and the GRU on
every model device (the ``model_device`` fixture: cpu, emulated cuda, cuda
when present), over ragged batches, eos lists, min_new_tokens, repetition
penalty, top-k / top-p, streaming, KV-cache windows that fill up, and calls
that take the model over between tokens."""
from __future__ import annotations

import numpy as np
import pytest

from fastlm import _C, GRULM, LSTMLM, Transformer, sampling
from fastlm.tokenizers import CharTokenizer

V, BLOCK = 37, 24


def make(kind, device):
    if kind == "gpt":
        m = Transformer(V, block_size=BLOCK, n_layer=2, n_head=2, n_embd=16, seed=3, device=device)
    else:
        cls = LSTMLM if kind == "lstm" else GRULM
        m = cls(V, embed_dim=8, hidden_size=12, num_layers=2, seed=5, device=device)
    rng = np.random.default_rng(11)
    # Larger weights than the initialisation's: peaked logits, so greedy
    # tokens vary and eos ids are drawn.
    m.load_state_dict({k: (0.5 * rng.standard_normal(v.shape)).astype(np.float32)
                       for k, v in m.state_dict().items() if k not in m.TIED})
    return m


@pytest.fixture(params=["gpt", "lstm", "gru"])
def kind(request):
    return request.param


@pytest.fixture
def model(kind, model_device):
    return make(kind, model_device)


def both(monkeypatch, model, prompt, n, **kw):
    """(C++ loop's result, Python loop's result) of one generate call."""
    monkeypatch.setattr(sampling, "_PYTHON_LOOP", True)
    ref = model.generate(prompt, n, **kw)
    monkeypatch.setattr(sampling, "_PYTHON_LOOP", False)
    calls = []
    orig = sampling._python_loop
    monkeypatch.setattr(sampling, "_python_loop", lambda *a, **k: calls.append(1) or orig(*a, **k))
    got = model.generate(prompt, n, **kw)
    assert not calls, "the Python loop ran where the C++ loop should"
    return got, ref


def assert_identical(got, ref):
    if isinstance(ref, (tuple, list)):
        assert type(got) is type(ref) and len(got) == len(ref)
        for g, r in zip(got, ref):
            assert_identical(g, r)
    else:
        assert isinstance(got, np.ndarray) and got.dtype == ref.dtype and got.shape == ref.shape
        np.testing.assert_array_equal(got, ref)


RAGGED = [[1, 2, 3], [4], list(range(5, 14)), [7, 7, 7, 7, 7]]

CASES = {
    "greedy": dict(do_sample=False),
    "sample": dict(seed=5, temperature=0.8),
    "top_k_top_p": dict(seed=9, top_k=5, top_p=0.7),
    "penalty": dict(seed=1, repetition_penalty=1.7),
    "penalty_greedy": dict(do_sample=False, repetition_penalty=0.6),
    "eos_list": dict(seed=2, eos_token_id=[3, 8, 20, 30]),
    "min_new_tokens": dict(seed=2, eos_token_id=[3, 8, 20, 30], min_new_tokens=6),
    "pad": dict(seed=4, eos_token_id=[1, 5, 9], pad_token_id=36),
    "everything": dict(seed=7, top_k=9, top_p=0.9, temperature=1.3, repetition_penalty=1.4,
                       eos_token_id=[2, 6, 11, 19], min_new_tokens=3),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("prompt", ["one", "batch", "ragged"])
def test_cpp_loop_equals_python_loop(monkeypatch, model, case, prompt):
    kw = dict(CASES[case], return_logprobs=True)
    p = {"one": np.array([4, 9, 1]), "batch": np.arange(12).reshape(3, 4) % V, "ragged": RAGGED}[prompt]
    got, ref = both(monkeypatch, model, p, 15, **kw)
    assert_identical(got, ref)
    got, ref = both(monkeypatch, model, p, 15, **dict(kw, return_logprobs=False))
    assert_identical(got, ref)


def test_rows_finish_at_different_steps(monkeypatch, model):
    """eos ids taken from a greedy run, so rows finish (and are padded) at
    different steps; a batch stops when every row has finished."""
    prompts = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    free = model.generate(prompts, 10, do_sample=False)[:, 3:]
    eos = [int(free[0, 2]), int(free[1, 5])]
    got, ref = both(monkeypatch, model, prompts, 10, do_sample=False, eos_token_id=eos, return_logprobs=True)
    assert_identical(got, ref)
    ids, lps = got
    new = ids[:, 3:]
    ends = []
    for r in range(3):  # after its first eos id a row shows the pad (eos[0]) with log-probability 0
        hits = np.flatnonzero(np.isin(new[r], eos))
        ends.append(hits[0] + 1 if len(hits) else new.shape[1])
        assert (new[r, ends[-1]:] == eos[0]).all() and (lps[r, ends[-1]:] == 0).all()
    assert new.shape[1] == min(max(ends), 10)  # the batch stops when every row has finished
    got, ref = both(monkeypatch, model, [list(r) for r in prompts[:, :2]] + [[1, 2, 3]], 10,
                    do_sample=False, eos_token_id=eos, return_logprobs=True)
    assert_identical(got, ref)


def test_num_return_sequences_and_padded_vocabulary(monkeypatch, model_device, kind):
    m = make(kind, model_device)
    m.tokenizer = CharTokenizer([chr(ord("a") + i) for i in range(26)])  # 26 of the 37 ids decode
    got, ref = both(monkeypatch, m, [[1, 2], [3]], 12, seed=3, num_return_sequences=3, eos_token_id=[4, 5],
                    return_logprobs=True, repetition_penalty=1.2, min_new_tokens=2)
    assert_identical(got, ref)
    assert max(int(r.max()) for r in got[0]) < 26


def test_stream_equals_the_whole_call(monkeypatch, model):
    """A stream (one C++ call per token) yields what the Python loop's stream
    yields, and the tokens of the whole call."""
    kw = dict(seed=8, eos_token_id=[3, 8, 20], return_logprobs=True, repetition_penalty=1.3)
    prompt = np.array([[1, 2, 3], [4, 5, 6]])
    got = list(model.generate(prompt, 14, stream=True, **kw))
    monkeypatch.setattr(sampling, "_PYTHON_LOOP", True)
    ref = list(model.generate(prompt, 14, stream=True, **kw))
    monkeypatch.setattr(sampling, "_PYTHON_LOOP", False)
    assert len(got) == len(ref)
    for (t, lp), (tr, lpr) in zip(got, ref):
        assert t.shape == (2,) and lp.shape == (2,)
        np.testing.assert_array_equal(t, tr)
        np.testing.assert_array_equal(lp, lpr)
    ids, lps = model.generate(prompt, 14, **kw)
    np.testing.assert_array_equal(np.stack([t for t, _ in got], 1), ids[:, 3:])
    np.testing.assert_array_equal(np.stack([lp for _, lp in got], 1), lps)
    one = list(model.generate([4, 9, 1], 14, stream=True, seed=8))
    assert all(isinstance(t, int) for t in one)
    np.testing.assert_array_equal(one, model.generate([4, 9, 1], 14, seed=8)[3:])


def test_another_call_between_streamed_tokens(monkeypatch, model):
    """A stream whose model is used by another generate between its tokens
    (the KV cache or recurrent state replaced, then rebuilt by a prefill):
    the C++ loop gives what the Python loop gives, bit for bit, and the
    ids of an uninterrupted call (the log-probabilities up to the rounding of
    a prefill over more positions)."""
    def interrupted(prompt):
        s = model.generate(prompt, 12, do_sample=False, stream=True, return_logprobs=True)
        first = [next(s) for _ in range(4)]
        model.generate([1, 2, 3], 3, seed=0)
        steps = first + list(s)
        return np.stack([t for t, _ in steps], 1), np.stack([lp for _, lp in steps], 1)

    for prompt in (np.array([[1, 2, 3], [4, 5, 6]]), RAGGED):
        want_ids, want_lp = model.generate(prompt, 12, do_sample=False, return_logprobs=True)
        if isinstance(prompt, list):
            want_ids, want_lp = np.stack([r[len(p):] for p, r in zip(prompt, want_ids)]), np.stack(want_lp)
        else:
            want_ids = want_ids[:, 3:]
        ids, lps = interrupted(prompt)
        monkeypatch.setattr(sampling, "_PYTHON_LOOP", True)
        ids_py, lps_py = interrupted(prompt)
        monkeypatch.setattr(sampling, "_PYTHON_LOOP", False)
        np.testing.assert_array_equal(ids, ids_py)
        np.testing.assert_array_equal(lps, lps_py)
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_allclose(lps, want_lp, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("prompt_len", [BLOCK - 3, BLOCK, BLOCK + 5])
def test_transformer_window_fills_up(monkeypatch, model_device, prompt_len):
    """Past block_size every token re-runs the prefill over the window
    (Python's push); the loop continues in C++ in between."""
    m = make("gpt", model_device)
    rng = np.random.default_rng(prompt_len)
    one = rng.integers(0, V, prompt_len)
    ragged = [list(rng.integers(0, V, n)) for n in (prompt_len, 3, BLOCK - 1)]
    for p in (one, ragged):
        got, ref = both(monkeypatch, m, p, 10, seed=1, return_logprobs=True, eos_token_id=[5, 6])
        assert_identical(got, ref)


def test_non_finite_logits_raise(monkeypatch, model):
    model.generate([1, 2], 2, seed=0)
    model._g.write("params", np.full(model._g.num_parameters(), np.nan, np.float32))
    with pytest.raises(FloatingPointError, match="new token 1"):
        model.generate([1, 2], 4, seed=0)
    s = model.generate([1, 2], 4, seed=0, stream=True)
    with pytest.raises(FloatingPointError, match="new token 1"):
        next(s)


def test_decode_loop_bad_arguments():
    logits = np.zeros((2, 5), np.float32)
    with pytest.raises(ValueError, match="n_ids"):
        _C.DecodeLoop(0, logits, 6, 3)
    with pytest.raises(ValueError, match="pad"):
        _C.DecodeLoop(0, logits, 5, 3, pad=5)
    with pytest.raises(ValueError, match="eos holds 7"):
        _C.DecodeLoop(0, logits, 5, 3, eos=np.array([7]))
    with pytest.raises(ValueError, match="suppress must leave"):
        _C.DecodeLoop(0, logits, 2, 3, suppress=np.array([0, 1]))
    with pytest.raises(ValueError, match="seen"):
        _C.DecodeLoop(0, logits, 5, 3, repetition_penalty=1.2, seen=np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="temperature"):
        _C.DecodeLoop(0, logits, 5, 3, temperature=0.0)
    g = Transformer(V, block_size=8, n_layer=1, n_head=1, n_embd=8)
    loop = _C.DecodeLoop(0, logits, 5, 3)
    with pytest.raises(ValueError, match="vocab_size"):
        loop.run_gpt(g._g, 1, np.array([1, 1]), False, True)
    loop = _C.DecodeLoop(0, np.zeros((2, V), np.float32), V, 3)
    with pytest.raises(ValueError, match="pos"):
        loop.run_gpt(g._g, 1, np.array([1, 9]), True, True)
    with pytest.raises(ValueError, match="one position for all rows"):
        loop.run_gpt(g._g, 1, np.array([1, 2]), False, True)
    with pytest.raises(ValueError, match="n must be"):
        loop.run_gpt(g._g, 0, np.array([1, 1]), False, True)
    r = LSTMLM(V, embed_dim=4, hidden_size=4, num_layers=1)
    with pytest.raises(ValueError, match="carried state"):
        loop.run_rnn(r._g, 1, True)
    with pytest.raises(ValueError, match="no tokens were pending"):
        loop.set_logits(np.zeros((2, V), np.float32))


def test_decode_loop_alone_matches_the_sampler():
    """Without a model (push declines), one step is one Sampler call."""
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((3, 10)).astype(np.float32)
    seen = (rng.random((3, 8)) < 0.3).astype(np.float32)
    loop = _C.DecodeLoop(42, logits, 8, 5, temperature=0.7, top_k=4, repetition_penalty=1.5, seen=seen,
                         logprobs=True, eos=np.array([9]), pad=0)
    r = LSTMLM(10, embed_dim=4, hidden_size=4, num_layers=1)
    tok, lp, live, pushed, bad = loop.run_rnn(r._g, 3, False)
    assert tok.shape == (3, 1) and pushed.shape == (3, 0) and not bad and live.all()
    lp_ref = np.zeros(3, np.float32)
    want = _C.Sampler(42).sample(np.ascontiguousarray(logits[:, :8]), 0.7, 4, 1.0, True, 1.5, seen, None, lp_ref)
    np.testing.assert_array_equal(tok[:, 0], want)
    np.testing.assert_array_equal(lp[:, 0], lp_ref)
    np.testing.assert_array_equal(loop.pending, want)
    assert loop.step == 1 and not loop.done


def test_emulated_device_ignores_cuda_graphs(monkeypatch):
    """FASTLM_CUDA_GRAPHS=1 changes nothing on the emulated device (its table
    has no graph entries): the CPU's tokens and log-probabilities, bit for bit."""
    monkeypatch.setenv("FASTLM_CUDA_GRAPHS", "1")
    want = make("gpt", "cpu").generate(RAGGED, 10, seed=3, return_logprobs=True)
    monkeypatch.setenv("FASTLM_EMULATE_CUDA", "1")
    assert_identical(make("gpt", "cuda").generate(RAGGED, 10, seed=3, return_logprobs=True), want)


@pytest.mark.skipif(_C._cuda_graph_counts() is None, reason="needs a GPU and FASTLM_CUDA_GRAPHS=1")
def test_cuda_graphs_replay_the_decode_step(monkeypatch, kind):
    """With FASTLM_CUDA_GRAPHS=1 every one-token step (the Transformer's KV-cache
    step, the recurrent models' step on the carried state) runs as a CUDA
    graph, re-recorded and updated in place each token; greedy ids equal the
    CPU's and log-probabilities agree to float32 rounding."""
    monkeypatch.delenv("FASTLM_EMULATE_CUDA", raising=False)
    cpu, gpu = make(kind, "cpu"), make(kind, "cuda")
    for prompt in (np.array([4, 9, 1]), np.array([[1, 2, 3], [4, 5, 6]]), RAGGED):
        before = _C._cuda_graph_counts()
        got = gpu.generate(prompt, 12, do_sample=False, return_logprobs=True)
        want = cpu.generate(prompt, 12, do_sample=False, return_logprobs=True)
        after = _C._cuda_graph_counts()
        assert after["captures"] - before["captures"] == 11  # every step but the prefill's
        assert after["instantiations"] - before["instantiations"] <= 2
        for g, w in zip(got[0] if isinstance(prompt, list) else [got[0]], want[0] if isinstance(prompt, list)
                        else [want[0]]):
            np.testing.assert_array_equal(g, w)
        np.testing.assert_allclose(np.concatenate([np.ravel(x) for x in got[1]]),
                                   np.concatenate([np.ravel(x) for x in want[1]]), rtol=1e-4, atol=1e-5)

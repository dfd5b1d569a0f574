"""generate's Hugging Face knobs: repetition_penalty, stop_strings, eos lists,
min_new_tokens, num_return_sequences, return_logprobs, and ragged prompt batches.

References: transformers' GPT2LMHeadModel.generate with the Transformer's
weights copied in (greedy: the same ids and transition scores), and
transformers' own logits processors applied to fastlm's forward logits
(sampling: the same log-probabilities for the tokens fastlm drew).
"""
from __future__ import annotations

import numpy as np
import pytest

from reference.gpt import random_state_dict
from fastlm import _C
from fastlm.model import Transformer
from fastlm.rnn import GRULM, LSTMLM
from fastlm.tokenizers import ByteTokenizer, CharTokenizer, Tokenizer

V, BLOCK, N_LAYER, N_HEAD, N_EMBD = 67, 19, 2, 3, 48
CHARS = "".join(chr(ord("!") + i) for i in range(V))


@pytest.fixture(scope="module")
def model():
    m = Transformer(V, block_size=BLOCK, n_layer=N_LAYER, n_head=N_HEAD, n_embd=N_EMBD, seed=0,
                    tokenizer=CharTokenizer(list(CHARS)))
    m.load_state_dict(random_state_dict(V, BLOCK, N_LAYER, N_EMBD, seed=7))
    return m


@pytest.fixture(scope="module", params=["lstm", "gru"])
def rnn(request):
    cls = LSTMLM if request.param == "lstm" else GRULM
    m = cls(V, embed_dim=24, hidden_size=33, num_layers=2, seed=5, tokenizer=CharTokenizer(list(CHARS)))
    rng = np.random.default_rng(1)
    m.load_state_dict({k: (0.3 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in m.state_dict().items()})
    return m


def _copy(m):
    c = Transformer(V, block_size=BLOCK, n_layer=N_LAYER, n_head=N_HEAD, n_embd=N_EMBD, tokenizer=m.tokenizer)
    c.load_state_dict(m.state_dict())
    return c


def _hf_model(m):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(vocab_size=V, n_positions=BLOCK, n_embd=N_EMBD, n_layer=N_LAYER, n_head=N_HEAD,
                                  activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0,
                                  attn_pdrop=0.0, layer_norm_epsilon=1e-5)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    sd = {}
    for k, v in m.state_dict().items():
        t = torch.from_numpy(np.array(v))
        # HF's Conv1D keeps (in, out); nanoGPT's Linear (out, in).
        sd[k] = t.t().contiguous() if k.endswith("weight") and t.ndim == 2 and "wte" not in k and "wpe" not in k \
            else t
    sd["lm_head.weight"] = sd["transformer.wte.weight"]
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    assert not unexpected and all(".attn.bias" in k or ".attn.masked_bias" in k for k in missing), missing
    return torch, hf


# ------------------------------------------------------------------ against transformers' generate

@pytest.mark.parametrize("kw", [
    dict(),
    dict(repetition_penalty=1.7),
    dict(repetition_penalty=0.6),
    dict(repetition_penalty=1.3, min_new_tokens=6),
])
def test_greedy_ids_and_logprobs_match_transformers(model, kw):
    torch, hf = _hf_model(model)
    prompt = np.array([5, 9, 1, 60, 2, 5])
    n = BLOCK - len(prompt)
    free = model.generate(prompt, n, do_sample=False)
    eos = [int(free[len(prompt) + 2]), int(free[len(prompt) + 4])]  # reached early unless suppressed
    kw = dict(kw, eos_token_id=eos) if "min_new_tokens" in kw else kw
    ids, lps = model.generate(prompt, n, do_sample=False, return_logprobs=True, **kw)
    with torch.no_grad():
        out = hf.generate(torch.from_numpy(prompt[None]), max_new_tokens=n, do_sample=False,
                          output_scores=True, return_dict_in_generate=True, pad_token_id=0,
                          attention_mask=torch.ones(1, len(prompt), dtype=torch.long), **kw)
        want_lp = hf.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)[0].numpy()
    want = out.sequences[0].numpy()
    np.testing.assert_array_equal(ids, want)
    assert lps.dtype == np.float32 and lps.shape == (len(ids) - len(prompt),)
    np.testing.assert_allclose(lps, want_lp, rtol=1e-4, atol=1e-5)
    if "min_new_tokens" in kw:
        new = ids[len(prompt):]
        assert not np.isin(new[:6], eos).any() and len(new) > 6 and new[-1] in eos


def test_sampled_logprobs_match_transformers_processors(model):
    torch = pytest.importorskip("torch")
    lp_ = pytest.importorskip("transformers.generation.logits_process")
    prompt = np.array([[3, 3, 7, 1], [50, 2, 2, 9]])
    kw = dict(temperature=0.7, top_k=20, top_p=0.9, repetition_penalty=1.4)
    ids, lps = model.generate(prompt, 12, seed=11, return_logprobs=True, **kw)
    procs = [lp_.RepetitionPenaltyLogitsProcessor(1.4), lp_.TemperatureLogitsWarper(0.7),
             lp_.TopKLogitsWarper(20), lp_.TopPLogitsWarper(0.9)]
    for t in range(prompt.shape[1], ids.shape[1]):
        logits = model.forward(ids[:, :t])[:, -1]
        scores = torch.from_numpy(logits.astype(np.float32))
        for p in procs:
            scores = p(torch.from_numpy(ids[:, :t]), scores)
        want = torch.log_softmax(scores.double(), -1).numpy()[np.arange(2), ids[:, t]]
        assert np.isfinite(want).all()  # the token drawn was one the processors keep
        np.testing.assert_allclose(lps[:, t - prompt.shape[1]], want, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ ragged batches

def _ragged_prompts():
    rng = np.random.default_rng(4)
    return [rng.integers(0, V, n).tolist() for n in (1, 3, 17, 5, BLOCK + 4, 2)]


@pytest.mark.parametrize("n_new", [4, 2 * BLOCK + 3])  # within block_size for most rows, and well beyond
def test_ragged_rows_equal_their_own_greedy_generation(model, n_new):
    prompts = _ragged_prompts()
    got = model.generate(prompts, n_new, do_sample=False)
    assert isinstance(got, list) and len(got) == len(prompts)
    for p, row in zip(prompts, got):
        assert row.dtype == np.int64
        np.testing.assert_array_equal(row, model.generate(np.array(p), n_new, do_sample=False))


def test_ragged_rows_on_every_isa(model, isa):
    model = _copy(model)  # a model takes the kernel table chosen when it is built
    prompts = _ragged_prompts()
    got, lps = model.generate(prompts, 8, do_sample=False, return_logprobs=True)
    for p, row, lp in zip(prompts, got, lps):
        one, lp1 = model.generate(np.array(p), 8, do_sample=False, return_logprobs=True)
        np.testing.assert_array_equal(row, one)
        np.testing.assert_allclose(lp, lp1, rtol=1e-4, atol=1e-5)


def test_ragged_recurrent_rows_equal_their_own_greedy_generation(rnn):
    prompts = _ragged_prompts()
    got = rnn.generate(prompts, 25, do_sample=False)
    for p, row in zip(prompts, got):
        np.testing.assert_array_equal(row, rnn.generate(np.array(p), 25, do_sample=False))
    # Another call in between replaces the state: the session runs its rows again.
    s = rnn.generate(prompts, 10, do_sample=False, stream=True)
    first = [next(s) for _ in range(3)]
    rnn.generate([1, 2], 3, seed=0)
    rest = list(s)
    np.testing.assert_array_equal(np.stack(first + rest, 1), np.stack([r[len(p):len(p) + 10] for p, r in
                                                                        zip(prompts, got)]))


def test_ragged_transformer_survives_another_call_between_tokens(model):
    prompts = _ragged_prompts()[:4]
    want = model.generate(prompts, 12, do_sample=False)
    s = model.generate(prompts, 12, do_sample=False, stream=True)
    first = [next(s) for _ in range(3)]
    model.generate([1, 2, 3], 3, seed=0)
    got = np.stack(first + list(s), 1)
    np.testing.assert_array_equal(got, np.stack([r[len(p):] for p, r in zip(prompts, want)]))


def test_ragged_str_prompts_and_rows_that_stop(model):
    texts = ["a", "HELLO", "XYZ!#"]
    eos = model.tokenizer.encode("!")[0]
    got = model.generate(texts, 30, do_sample=False, eos_token_id=[eos, 5], return_logprobs=True)
    ids, lps = got
    assert isinstance(ids, list) and isinstance(lps, list)
    for t, row, lp in zip(texts, ids, lps):
        one, lp1 = model.generate(t, 30, do_sample=False, eos_token_id=[eos, 5], return_logprobs=True)
        np.testing.assert_array_equal(row, one)
        np.testing.assert_allclose(lp, lp1, rtol=1e-5, atol=1e-6)
        assert len(lp) == len(row) - len(t)


def test_rectangular_list_is_still_a_batch(model):
    out = model.generate([[1, 2, 3], [4, 5, 6]], 3, do_sample=False)
    assert isinstance(out, np.ndarray) and out.shape == (2, 6)


# ------------------------------------------------------------------ each knob

def test_repetition_penalty_one_is_off_and_penalty_discourages_repeats(model):
    prompt = np.array([4, 4, 4, 8])
    base = model.generate(prompt, 14, seed=3, temperature=1.2)
    np.testing.assert_array_equal(base, model.generate(prompt, 14, seed=3, temperature=1.2, repetition_penalty=1.0))
    greedy = model.generate(prompt, 14, do_sample=False)
    strong = model.generate(prompt, 14, do_sample=False, repetition_penalty=1e6)
    assert len(set(greedy[4:].tolist())) < 14  # the plain greedy run repeats itself
    new = strong[4:].tolist()
    # A huge penalty pushes every seen id (logit > 0) below every unseen one:
    # no repeats while positive-logit unseen ids remain.
    assert len(set(new)) == len(new) and not set(new) & {4, 8}


def test_eos_list_stops_at_the_first_of_any(model):
    prompt = np.array([1, 2, 3])
    free = model.generate(prompt, 12, do_sample=False)
    a, b = int(free[5]), int(free[8])
    for eos, end in (([b, a], 6), (a, 6), ([b], 9 if b not in free[3:8] else None)):
        got = model.generate(prompt, 12, do_sample=False, eos_token_id=eos)
        if end is not None:
            np.testing.assert_array_equal(got, free[:end] if a not in free[3:5] else got)
        assert got[-1] in np.atleast_1d(eos)


def test_batch_rows_that_finished_are_padded_with_the_first_eos(model):
    prompt = np.array([[1, 2, 3], [40, 41, 42]])
    free = model.generate(prompt, 8, do_sample=False)
    # The first token of row 0 that row 1 never makes: row 0 ends there, row 1 goes on.
    j = next(j for j in range(3, 11) if free[0, j] not in free[1, 3:] and free[0, j] not in free[0, 3:j])
    a = int(free[0, j])
    other = next(t for t in range(V) if t not in free[:, 3:])
    got = model.generate(prompt, 8, do_sample=False, eos_token_id=[other, a])
    np.testing.assert_array_equal(got[0, :j + 1], free[0, :j + 1])
    assert (got[0, j + 1:] == other).all()
    np.testing.assert_array_equal(got[1], free[1])
    got = model.generate(prompt, 8, do_sample=False, eos_token_id=a, pad_token_id=7)
    assert (got[0, j + 1:] == 7).all()


def test_min_new_tokens_suppresses_eos_until_then(model):
    prompt = np.array([10, 11])
    free = model.generate(prompt, 10, do_sample=False)
    eos = int(free[2])  # the very first new token
    assert model.generate(prompt, 10, do_sample=False, eos_token_id=eos).tolist() == free[:3].tolist()
    got = model.generate(prompt, 10, do_sample=False, eos_token_id=eos, min_new_tokens=4)
    assert eos not in got[2:6] and len(got) >= 6
    s = model.generate(prompt, 10, seed=1, eos_token_id=eos, min_new_tokens=10)
    assert eos not in s[2:] and len(s) == 12
    # without an eos id there is nothing to suppress
    np.testing.assert_array_equal(model.generate(prompt, 5, seed=2, min_new_tokens=3),
                                  model.generate(prompt, 5, seed=2))


def test_num_return_sequences(model):
    prompt = np.array([[1, 2], [30, 31]])
    out = model.generate(prompt, 7, seed=5, num_return_sequences=3)
    assert out.shape == (6, 9)
    np.testing.assert_array_equal(out[:3, :2], np.repeat(prompt[:1], 3, 0))
    np.testing.assert_array_equal(out[3:, :2], np.repeat(prompt[1:], 3, 0))
    assert len({tuple(r) for r in out[:3, 2:].tolist()}) > 1
    np.testing.assert_array_equal(out, model.generate(prompt, 7, seed=5, num_return_sequences=3))
    one = model.generate(np.array([1, 2]), 7, seed=5, num_return_sequences=2)
    assert one.shape == (2, 9)
    lst = model.generate([[1], [2, 3, 4]], 3, seed=5, num_return_sequences=2)
    assert [len(r) for r in lst] == [4, 4, 6, 6] and lst[1][0] == 1 and lst[2][0] == 2


def test_logprobs_are_log_probabilities_of_the_tokens(model):
    prompt = np.array([[7, 8, 9]])
    ids, lps = model.generate(prompt, 6, do_sample=False, return_logprobs=True)
    assert lps.shape == (1, 6) and lps.dtype == np.float32
    for t in range(3, 9):
        z = model.forward(ids[:, :t])[0, -1].astype(np.float64)
        want = z[ids[0, t]] - z.max() - np.log(np.exp(z - z.max()).sum())
        np.testing.assert_allclose(lps[0, t - 3], want, rtol=1e-5, atol=1e-6)
    pairs = list(model.generate(prompt[0], 6, do_sample=False, return_logprobs=True, stream=True))
    assert [t for t, _ in pairs] == ids[0, 3:].tolist()
    np.testing.assert_allclose([lp for _, lp in pairs], lps[0], rtol=1e-6)
    # top_k=1 leaves one token: probability 1
    _, one = model.generate(prompt, 4, top_k=1, seed=0, return_logprobs=True)
    np.testing.assert_array_equal(one, 0.0)


def test_stop_strings(model):
    tok = model.tokenizer
    prompt = "abc"
    free = tok.decode(model.generate(prompt, 12, do_sample=False)[3:])
    # A stop string across the 3rd and 4th new tokens ends the row at the 4th.
    got = model.generate(prompt, 12, do_sample=False, stop_strings=free[2:4])
    assert tok.decode(got) == prompt + free[:4]
    # One of several; the earliest completed wins.
    got = model.generate(prompt, 12, do_sample=False, stop_strings=["\u00ff\u00fe", free[5:7], free[1]])
    assert tok.decode(got) == prompt + free[:2] or free[1] in free[:1]
    # A stop string may begin in the prompt (it overlaps the new token) ...
    got = model.generate(prompt, 12, do_sample=False, stop_strings="c" + free[0])
    assert tok.decode(got) == prompt + free[0]
    # ... but one inside the prompt alone does not stop.
    if "ab" not in free:
        assert len(model.generate(prompt, 12, do_sample=False, stop_strings="ab")) == 15
    # A batch pads the rows that stopped.
    batch = model.generate(np.stack([tok.encode(prompt)] * 2), 12, do_sample=False, stop_strings=free[2:4],
                           pad_token_id=0)
    assert batch.shape == (2, 7) and tok.decode(batch[0]) == prompt + free[:4]
    streamed = "".join(tok.decode([t]) for t in model.generate(prompt, 12, do_sample=False,
                                                                 stop_strings=free[2:4], stream=True))
    assert streamed == free[:4]


def test_stop_string_matching_follows_transformers():
    """StopStringCriteria's examples: a match must overlap the last token's
    text, may overhang either end of it, and may start in the prompt."""
    from fastlm.sampling import _StopStrings

    class Pieces(Tokenizer):  # one id per string, as a BPE vocabulary's tokens
        vocab = ["st", "op", "stop", "las", "topper", "s", "to", "pped", "sto", "pper", "at", "x", "y"]
        vocab_size = len(vocab)

        def decode(self, ids):
            return "".join(self.vocab[int(i)] for i in ids)

    words = Pieces()

    def run(prompt, pieces, stops=("stop",)):
        st = _StopStrings(words, list(stops), [np.array([words.vocab.index(p) for p in prompt], np.int64)])
        return [st.hit(0, words.vocab.index(p)) for p in pieces]

    assert run([], ["st", "op"]) == [False, True]
    assert run([], ["stop"]) == [True]
    assert run([], ["st", "opera"[:2]]) == [False, True]
    assert run([], ["las", "topper"]) == [False, True]
    assert run([], ["s", "to", "pped"]) == [False, False, True]
    assert run(["sto"], ["pper"]) == [True]  # begun in the prompt
    assert run(["stop"], ["at"]) == [False]  # in the prompt alone
    assert run([], ["x", "y"], stops=("yy", "xy")) == [False, True]
    tok = ByteTokenizer()
    # A multi-byte character: its first byte decodes to nothing yet.
    st = _StopStrings(tok, ["\u00e9!"], [tok.encode("a")])
    assert [st.hit(0, int(t)) for t in tok.encode("b\u00e9\u00e9!")] == [False] * 5 + [True]


def test_sampler_processors_directly():
    s = _C.Sampler(0)
    logits = np.array([[2.0, -1.0, 1.9, 0.5]], np.float32)
    seen = np.array([[1, 1, 0, 0]], np.float32)
    assert s.sample(logits, do_sample=False).tolist() == [0]
    assert s.sample(logits, do_sample=False, repetition_penalty=1.1, seen=seen).tolist() == [2]
    lp = np.zeros(1, np.float32)
    assert s.sample(logits, do_sample=False, suppress=np.array([0, 2]), logprobs=lp).tolist() == [3]
    z = np.array([-np.inf, -1.0, -np.inf, 0.5])
    np.testing.assert_allclose(lp, [0.5 - np.log(np.exp(z[np.isfinite(z)]).sum())], rtol=1e-6)
    for _ in range(20):  # suppressed ids are never drawn
        assert s.sample(logits, 5.0, suppress=np.array([1, 3]))[0] in (0, 2)


# ------------------------------------------------------------------ bad input

@pytest.mark.parametrize("kw, err, match", [
    (dict(repetition_penalty=0.0), ValueError, "repetition_penalty"),
    (dict(repetition_penalty=-1.0), ValueError, "repetition_penalty"),
    (dict(repetition_penalty=float("nan")), ValueError, "repetition_penalty"),
    (dict(repetition_penalty="1.2"), TypeError, "repetition_penalty"),
    (dict(stop_strings=""), ValueError, "stop_strings"),
    (dict(stop_strings=["a", ""]), ValueError, "stop_strings"),
    (dict(stop_strings=[]), TypeError, "stop_strings"),
    (dict(stop_strings=[3]), TypeError, "stop_strings"),
    (dict(min_new_tokens=-1), ValueError, "min_new_tokens"),
    (dict(min_new_tokens=1.5), TypeError, "min_new_tokens"),
    (dict(num_return_sequences=0), ValueError, "num_return_sequences"),
    (dict(num_return_sequences=2, do_sample=False), ValueError, "num_return_sequences"),
    (dict(eos_token_id=[]), ValueError, "eos_token_id"),
    (dict(eos_token_id=[1, V]), ValueError, "eos_token_id"),
    (dict(eos_token_id=-1), ValueError, "eos_token_id"),
    (dict(eos_token_id="a"), TypeError, "eos_token_id"),
    (dict(pad_token_id=V), ValueError, "pad_token_id"),
    (dict(return_logprobs="yes"), TypeError, "return_logprobs"),
    (dict(eos_token_id=list(range(V)), min_new_tokens=1), ValueError, "min_new_tokens"),
])
def test_bad_knobs(model, kw, err, match):
    with pytest.raises(err, match=match):
        model.generate([1, 2], 3, stream=True, **kw)  # checked at the call, not at the first token


def test_bad_prompts_and_combinations(model):
    with pytest.raises(TypeError, match="mixes str and token ids"):
        model.generate(["ab", [1, 2]], 2)
    with pytest.raises(ValueError, match=r"prompt\[1\] must hold at least one token"):
        model.generate([[1, 2], []], 2)
    with pytest.raises(ValueError, match=r"prompt\[0\]"):
        model.generate([[1, V], [2]], 2)
    with pytest.raises(TypeError, match=r"prompt\[1\]"):
        model.generate([[1, 2], [1.5]], 2)
    with pytest.raises(ValueError, match="pad_token_id"):
        model.generate([[1, 2], [3, 4]], 2, stop_strings="a")
    with pytest.raises(ValueError, match="pad_token_id"):
        model.generate([[1], [3, 4]], 2, stop_strings="a", stream=True)
    bare = Transformer(V, block_size=8, n_layer=1, n_head=1, n_embd=8)
    with pytest.raises(ValueError, match="stop_strings needs the model's tokenizer"):
        bare.generate([1, 2], 2, stop_strings="a")
    with pytest.raises(TypeError, match=r"prompt\[0\] is a str"):
        bare.generate(["a", "bc"], 2)


def test_decode_rows_bad_arguments(model):
    g = model._g
    g.decode(np.array([[1, 2, 0], [3, 0, 0]]), 0, np.array([1, 0]))
    with pytest.raises(ValueError, match="pos"):
        g.decode_rows(np.array([1, 2]), np.array([2, BLOCK]))
    with pytest.raises(ValueError, match="pos must hold one position per token"):
        g.decode_rows(np.array([1, 2]), np.array([2]))
    with pytest.raises(ValueError, match="tokens holds"):
        g.decode_rows(np.array([1, V]), np.array([2, 1]))
    with pytest.raises(ValueError, match="prefill"):
        g.decode_rows(np.array([1, 2, 3]), np.array([2, 1, 1]))
    with pytest.raises(ValueError, match="last"):
        g.decode(np.array([[1, 2]]), 0, np.array([2]))
    with pytest.raises(ValueError, match="last"):
        g.decode(np.array([[1, 2]]), 0, np.array([0, 1]))
    model._cache_owner = None  # the session's cache was replaced


def test_sampler_bad_arguments():
    s = _C.Sampler(0)
    x = np.zeros((2, 4), np.float32)
    with pytest.raises(ValueError, match="repetition_penalty"):
        s.sample(x, repetition_penalty=0.0)
    with pytest.raises(ValueError, match="seen"):
        s.sample(x, seen=np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="suppress holds 4"):
        s.sample(x, suppress=np.array([4]))
    with pytest.raises(ValueError, match="at least one id"):
        s.sample(x, suppress=np.array([0, 1, 2, 3, 3]))
    with pytest.raises(ValueError, match="logprobs"):
        s.sample(x, logprobs=np.zeros(3, np.float32))
    with pytest.raises(TypeError, match="logprobs"):
        s.sample(x, logprobs=np.zeros(2, np.float64))


# ------------------------------------------------------------------ the CLI

def test_cli_sample_stop_and_repetition_penalty(model, tmp_path, capsys):
    from fastlm.cli import main
    ckpt = tmp_path / "ckpt"
    model.save(ckpt)
    free = model.tokenizer.decode(model.generate("abc", 12, do_sample=False)[3:])
    base = ["sample", str(ckpt), "--prompt", "abc", "--max-new-tokens", "12", "--greedy"]
    capsys.readouterr()
    assert main(base + ["--stop", "\u00ff", "--stop", free[2:4]]) == 0
    assert capsys.readouterr().out == "abc" + free[:4] + "\n"
    assert main(base + ["--stop", free[2:4], "--num-samples", "2"]) == 0
    assert capsys.readouterr().out == "abc" + free[:4] + "\n---------------\nabc" + free[:4] + "\n"
    assert main(base + ["--repetition-penalty", "1e6"]) == 0
    text = capsys.readouterr().out[3:-1]
    assert text == model.tokenizer.decode(model.generate("abc", 12, do_sample=False, repetition_penalty=1e6)[3:])
    for bad, what in ((["--repetition-penalty", "0"], "--repetition-penalty"), (["--stop", ""], "--stop")):
        assert main(base + bad) == 2
        assert what in capsys.readouterr().err

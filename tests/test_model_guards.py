"""What a model refuses rather than doing harm: saving over more than a
checkpoint directory, writing a checkpoint that would not load, loading
corrupt optimizer state, sampling from NaN logits, and a stateful run's
carried state lost to a call in between."""
from __future__ import annotations

import os
import threading

import numpy as np
import pytest
import safetensors.numpy

import fastlm
from fastlm.checkpoint import OPTIMIZER_FILE, check_save_target
from fastlm.tokenizers import ByteTokenizer, CharTokenizer

V = 11


def _gpt(**kw):
    return fastlm.Transformer(V, block_size=8, n_layer=1, n_head=2, n_embd=8, seed=1, **kw)


def _stepped(model):
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, V, (2, 8)), rng.integers(0, V, (2, 8))
    model.forward_backward(x, y)
    model.step(1e-2)
    return model


# ----------------------------------------------------------------------- save targets

def test_save_carries_files_over(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    (d / "metrics.jsonl").write_text("{}\n")
    (d / "notes.txt").symlink_to(d / "metrics.jsonl")
    _gpt().save(d)
    assert (d / "metrics.jsonl").read_text() == "{}\n"
    assert os.path.islink(d / "notes.txt")
    assert fastlm.Transformer.load(d).config["n_embd"] == 8


def test_save_refuses_a_directory_with_subdirectories(tmp_path):
    d = tmp_path / "project"
    (d / "src").mkdir(parents=True)
    (d / "src" / "keep.py").write_text("x = 1\n")
    with pytest.raises(ValueError, match="holds the subdirectory 'src'"):
        _gpt().save(d)
    assert sorted(os.listdir(d)) == ["src"] and (d / "src" / "keep.py").read_text() == "x = 1\n"
    assert [e for e in os.listdir(tmp_path) if e.startswith(".")] == []  # no temporary left


def test_save_refuses_the_working_directory_and_its_parents(tmp_path, monkeypatch):
    d = tmp_path / "here"
    d.mkdir()
    monkeypatch.chdir(d)
    for target in (".", str(d), str(tmp_path)):
        with pytest.raises(ValueError, match="current working directory"):
            _gpt().save(target)
    assert os.listdir(d) == []


def test_save_refuses_a_mount_point():
    with pytest.raises(ValueError, match="mount point"):
        check_save_target("/")
    check_save_target("/no/such/directory/yet")  # a new directory is fine


def test_fit_checks_the_checkpoint_dir_up_front(tmp_path, monkeypatch):
    m, train = _gpt(), np.arange(200) % V
    with pytest.raises(TypeError, match="checkpoint_dir must be a str or os.PathLike, got int"):
        m.fit(train, steps=1, batch_size=2, checkpoint_dir=5, progress=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="current working directory"):
        m.fit(train, steps=1, batch_size=2, checkpoint_dir=".", progress=False)
    assert m.optimizer_step == 0  # refused before the first step


# ------------------------------------------------------- what save writes, load reads

def _diverge(model):
    """Steps with an absurd learning rate until the weights overflow."""
    for _ in range(4):
        _stepped(model)
        model.step(1e38)
    assert not all(np.isfinite(a).all() for a in model.state_dict().values())
    return model


def test_save_refuses_non_finite_weights(tmp_path):
    m = _diverge(_gpt())
    with pytest.raises(ValueError, match="save: non-finite values .*such a checkpoint would not load"):
        m.save(tmp_path / "c")
    assert not (tmp_path / "c").exists()


def test_generate_refuses_non_finite_logits():
    m = _diverge(_gpt())
    for do_sample in (True, False):
        with pytest.raises(FloatingPointError, match="logits hold NaN or inf at new token 1"):
            m.generate(np.array([1, 2]), 3, do_sample=do_sample)


def test_evaluate_reports_nan_as_nan():
    m = _diverge(_gpt())
    r = m.evaluate(np.arange(40) % V, batch_size=2)
    assert np.isnan(r["loss"])
    assert np.isnan(r["perplexity"])  # not inf, which would read as merely very bad


@pytest.mark.parametrize("key, value, match", [
    ("exp_avg", np.nan, "exp_avg holds NaN, inf"),
    ("exp_avg_sq", np.inf, "exp_avg_sq holds NaN, inf or negative"),
    ("exp_avg_sq", -1.0, "exp_avg_sq holds NaN, inf or negative"),
])
def test_load_rejects_corrupt_optimizer_state(tmp_path, key, value, match):
    d = tmp_path / "c"
    _stepped(_gpt()).save(d)
    path = str(d / OPTIMIZER_FILE)
    with safetensors.safe_open(path, framework="np") as f:
        meta = f.metadata()
    flat = safetensors.numpy.load_file(path)
    name = f"{key}.transformer.wpe.weight"
    flat[name] = flat[name].copy()
    flat[name][0, 0] = value
    safetensors.numpy.save_file(flat, path, metadata=meta)
    with pytest.raises(ValueError, match=match):
        fastlm.Transformer.load(d)


def test_tokenizer_is_checked_when_assigned(tmp_path):
    m = _gpt()
    with pytest.raises(ValueError, match=r"tokenizer.vocab_size \(256\) exceeds vocab_size \(11\)"):
        m.tokenizer = ByteTokenizer()
    with pytest.raises(TypeError, match="tokenizer must be a fastlm.tokenizers.Tokenizer"):
        m.tokenizer = "junk"
    assert m.tokenizer is None
    m.tokenizer = CharTokenizer.from_text("abc")
    m.save(tmp_path / "c")
    assert fastlm.Transformer.load(tmp_path / "c").tokenizer.vocab_size == 3


# ----------------------------------------------------------- a stateful run's state

@pytest.mark.parametrize("cls", [fastlm.LSTMLM, fastlm.GRULM])
def test_stateful_state_survives_calls_in_between(cls, tmp_path):
    """What forward or generate do to the recurrent state between a stateful
    fit and its checkpoint, or between two of its steps, changes neither."""
    train = np.random.default_rng(0).integers(0, V, 600)
    kw = dict(steps=6, batch_size=3, block_size=5, stateful=True, progress=False, seed=0)

    def model():
        return cls(V, embed_dim=4, hidden_size=6, num_layers=2, seed=2)

    whole, busy = model(), model()
    whole.fit(train, **kw)

    def sample(step, metrics):  # between the steps, as a user's callback might
        busy.generate(np.array([1]), 2, seed=0)

    busy.fit(train, callback=sample, **kw)
    assert busy.history.losses == whole.history.losses

    # Stopped after step 4, then sampled before the checkpoint is written.
    part = model()
    part.fit(train, callback=lambda step, metrics: step < 4, **kw)
    h_fit = part.state()
    part.generate(np.array([1, 2]), 3, seed=0)
    part.forward(np.zeros((1, 4), np.int64))
    part.save(tmp_path / "c")
    for a, b in zip(cls.load(tmp_path / "c").state(), h_fit):
        np.testing.assert_array_equal(a, b)
    # Resuming from that checkpoint continues as the uninterrupted run did.
    resumed = model()
    resumed.fit(train, checkpoint_dir=tmp_path / "c", resume=True, **kw)
    assert resumed.history.losses == whole.history.losses


# ----------------------------------------------------------- corrupt checkpoint files

def _edit_json(path, edit):
    import json
    d = json.loads(path.read_text())
    edit(d)
    path.write_text(json.dumps(d))


@pytest.mark.parametrize("file, corrupt", [
    ("config.json", lambda p: p.write_text("[" * 100_000 + "]" * 100_000)),  # nesting past the recursion limit
    ("config.json", lambda p: p.write_text('{"vocab_size": ' + "9" * 5000 + "}")),  # past the digit limit
    ("config.json", lambda p: _edit_json(p, lambda d: d.update(model_type=[1]))),
    ("tokenizer.json", lambda p: p.write_text('{"type": [1]}')),
    ("tokenizer.json", lambda p: p.write_text("[" * 100_000)),
    ("trainer_state.json", lambda p: _edit_json(p, lambda d: d.update(stream_pos="abc"))),
    ("trainer_state.json", lambda p: _edit_json(p, lambda d: d.update(stream_pos=-1000))),
    ("trainer_state.json", lambda p: _edit_json(p, lambda d: d.update(step=2**63))),
    ("optimizer.safetensors", "step"),
])
def test_corrupt_files_are_named(tmp_path, file, corrupt):
    d = tmp_path / "c"
    m = _gpt(tokenizer=CharTokenizer.from_text("abcdefghijk"))
    m.fit(np.arange(100) % V, steps=1, batch_size=2, checkpoint_dir=d, progress=False)
    path = d / file
    if corrupt == "step":  # a step count past int64 in the metadata
        flat = safetensors.numpy.load_file(str(path))
        safetensors.numpy.save_file(flat, str(path), metadata={"format": "np", "optimizer": "adam",
                                                               "step": str(2**63)})
    else:
        corrupt(path)
    with pytest.raises(ValueError, match=file.replace(".", r"\.")):
        fastlm.Transformer.load(d)


def test_decode_names_a_scalar():
    for tok in (ByteTokenizer(), CharTokenizer.from_text("ab")):
        with pytest.raises(ValueError, match="ids must be 1-D, got shape"):
            tok.decode(np.int64(1))


@pytest.mark.parametrize("train, exc, match", [
    ([], ValueError, "train has 0 tokens; need at least 9"),
    (None, ValueError, r"train must be 1-D token ids, got shape \(\)"),
    (b"abc", TypeError, "train must be a 1-D integer array, got bytes"),
    (np.zeros(20), TypeError, "train must be an integer array, got dtype float64"),
])
def test_fit_names_bad_tokens(train, exc, match):
    with pytest.raises(exc, match=match):
        _gpt().fit(train, steps=1, batch_size=1, progress=False)


@pytest.mark.parametrize("make", [
    lambda: _gpt(),
    lambda: fastlm.LSTMLM(V, embed_dim=16, hidden_size=32, num_layers=2, seed=1),
])
def test_threads_sharing_a_model_get_the_single_threaded_results(make):
    """Calls release the GIL: a decoder's 'is the cache still mine, then
    extend it' must not interleave with another thread's use of the model."""
    import threading
    m = make()
    prompts = [np.array([[1, 2, 3]]), np.array([[4, 5], [6, 7]])]  # two batch sizes
    x = np.arange(32).reshape(4, 8) % V
    want = [m.generate(p, 6, seed=i) for i, p in enumerate(prompts)] + [m.forward(x)]
    calls = [lambda: m.generate(prompts[0], 6, seed=0), lambda: m.generate(prompts[1], 6, seed=1),
             lambda: m.forward(x)]
    wrong, errors = [0, 0, 0], []

    def run(i):
        try:
            for _ in range(100):
                wrong[i] += not np.array_equal(calls[i](), want[i])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert wrong == [0, 0, 0]


def test_seed_fits_a_checkpoint(tmp_path):
    for bad in (2**63, 2**64):
        with pytest.raises(ValueError, match="seed must be <= 9223372036854775807"):
            fastlm.Transformer(V, block_size=8, n_layer=1, n_head=1, n_embd=8, seed=bad)
        with pytest.raises(ValueError, match="seed must be <="):
            _gpt().fit(np.arange(100) % V, steps=1, batch_size=1, seed=bad, progress=False)
    m = _gpt()
    m.fit(np.arange(100) % V, steps=1, batch_size=1, seed=2**63 - 1, checkpoint_dir=tmp_path / "c", progress=False)
    assert fastlm.Transformer.load(tmp_path / "c").optimizer_step == 1


def test_a_refused_resume_leaves_the_model_as_it_was(tmp_path):
    _gpt().save(tmp_path / "plain")  # not written by fit: nothing to resume
    m = _stepped(_gpt())
    before = m.state_dict()
    with pytest.raises(ValueError, match="not written by fit"):
        m.fit(np.arange(100) % V, steps=2, batch_size=1, checkpoint_dir=tmp_path / "plain", resume=True,
              progress=False)
    assert m.optimizer_step == 1
    for k, v in m.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


@pytest.mark.parametrize("history", [[1, "x"], [{"step": 1}], [{"step": "1", "loss": 2.0}]])
def test_history_entries_are_checked(tmp_path, history):
    d = tmp_path / "c"
    _gpt().fit(np.arange(100) % V, steps=1, batch_size=1, checkpoint_dir=d, progress=False)
    _edit_json(d / "trainer_state.json", lambda s: s.update(history=history))
    with pytest.raises(ValueError, match=r"trainer_state\.json' is corrupt"):
        fastlm.Transformer.load(d)


def test_uint64_ids_past_int64_are_refused():
    from fastlm.data import get_batch, iter_eval_batches
    ids = np.full(20, 2**63, np.uint64)
    with pytest.raises(ValueError, match="get_batch: token id 9223372036854775808 does not fit int64"):
        get_batch(ids, 2, 4, np.random.default_rng(0))
    with pytest.raises(ValueError, match="iter_eval_batches: token id"):
        next(iter(iter_eval_batches(ids, 2, 4)))
    x, y = get_batch(np.arange(20, dtype=np.uint64), 2, 4, np.random.default_rng(0))  # in range: fine
    assert x.dtype == np.int64 and (y == x + 1).all()


def test_momentum_is_checked_whatever_the_optimizer():
    m = _stepped(_gpt())
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\), got 1.5"):
        m.step(1e-3, optimizer="adamw", momentum=1.5)
    assert m.optimizer_step == 1


def test_complex_torch_tensors_are_refused():
    torch = pytest.importorskip("torch")
    m = _gpt()
    sd = {k: torch.from_numpy(v) for k, v in m.state_dict().items()}
    sd["transformer.wpe.weight"] = sd["transformer.wpe.weight"].to(torch.complex64)
    with pytest.raises(TypeError, match=r"state_dict\['transformer.wpe.weight'\] must be a real array"):
        m.load_state_dict(sd)


def test_load_tokenizer_names_a_directory(tmp_path):
    with pytest.raises(IsADirectoryError, match="load_tokenizer: .* is a directory"):
        fastlm.load_tokenizer(tmp_path)


def test_bench_helpers_check_their_counts():
    bench = pytest.importorskip("fastlm.bench")
    for kw in (dict(rounds=0), dict(block=0), dict(warmup=-1), dict(rounds=1.5)):
        with pytest.raises(ValueError, match=f"interleaved_times: {next(iter(kw))} must be an int"):
            bench.interleaved_times({"f": lambda: None}, pause=0.0, **kw)
    with pytest.raises(ValueError, match="unit must be one of"):
        bench.Case("c", "zz", 1.0, {"fastlm": lambda: None})
    with pytest.raises(ValueError, match="rounds must be an int >= 1, got 0"):
        bench.Case("c", "GB/s", 1.0, {"fastlm": lambda: None}, pause=0.0).run(rounds=0)


@pytest.mark.parametrize("make, edit", [
    (_gpt, {"vocab_size": 2**31 - 1}),  # built first, this was a MemoryError
    (_gpt, {"vocab_size": V + 1}),  # built first, this blamed model.safetensors alone
    (_gpt, {"n_layer": 3}),
    (_gpt, {"block_size": 9}),
    (_gpt, {"n_embd": 16}),
    (lambda: fastlm.LSTMLM(V, embed_dim=4, hidden_size=6, num_layers=2), {"num_layers": 3}),
    (lambda: fastlm.GRULM(V, embed_dim=4, hidden_size=6, num_layers=2), {"hidden_size": 7}),
    (lambda: fastlm.GRULM(V, embed_dim=4, hidden_size=6, num_layers=2), {"embed_dim": 5}),
])
def test_load_checks_config_sizes_against_the_weights(tmp_path, make, edit):
    """A config.json whose sizes are not those of model.safetensors is refused
    naming both, before the model it describes is allocated."""
    make().save(tmp_path / "c")
    _edit_json(tmp_path / "c" / "config.json", lambda d: d.update(edit))
    key = next(iter(edit))
    with pytest.raises(ValueError, match=rf"config\.json' does not match '.*model\.safetensors': {key} {edit[key]}, "
                                         r"but (\S+ has shape|the weights have [12]$)"):
        fastlm.LanguageModel.load(tmp_path / "c")


def _padded(make, tokenizer):
    """A model of V ids with a tokenizer of 6, whose padded ids 6..V-1 have the largest logits."""
    m = make()
    sd = m.state_dict()
    if "fc.bias" in sd:
        sd["fc.bias"][6:] = 100.0
    else:  # ln_f's output is all ones, so a token's logit is the sum of its wte row
        sd.pop("lm_head.weight")
        sd["transformer.ln_f.weight"][:] = 0.0
        sd["transformer.ln_f.bias"][:] = 1.0
        sd["transformer.wte.weight"][6:] = 1.0
    m.load_state_dict(sd)
    m.tokenizer = tokenizer
    return m


@pytest.mark.parametrize("make", [_gpt, lambda: fastlm.LSTMLM(V, embed_dim=4, hidden_size=6, num_layers=1)])
def test_generate_draws_only_ids_the_tokenizer_decodes(make):
    tok = CharTokenizer.from_text("abcdef")
    m = _padded(make, tok)
    prompt = np.array([[0, 1], [2, 3]])
    for kw in (dict(do_sample=False), dict(seed=0), dict(seed=1, top_k=50, temperature=2.0)):
        new = m.generate(prompt, 20, **kw)[:, 2:]
        assert (new < 6).all(), (kw, new)
        tok.decode(new[0])
    assert all(t < 6 for t in m.generate(np.array([1]), 10, seed=0, stream=True))
    m.tokenizer = None  # without one every id is drawn
    assert (m.generate(prompt, 6, do_sample=False)[:, 2:] >= 6).all()


@pytest.mark.parametrize("fit, match", [
    ([1, 2], "must be an object, got list"),
    ({"betas": 5}, r"betas must be a pair"),
    ({"batch_size": -4}, "batch_size must be >= 1"),
    ({"batch_size": 2**31}, "batch_size must be <= 2147483647"),
    ({"lr": "abc"}, "lr must be a number, got str"),
    ({"min_lr": 1.0}, r"min_lr \(1.0\) must not exceed lr"),
    ({"momentum": 1.0}, "momentum must be < 1.0"),
    ({"optimizer": "rmsprop"}, "optimizer must be one of"),
    ({"stateful": "no"}, "stateful must be a bool"),
    ({"steps": 0}, "steps must be >= 1"),
])
def test_fit_settings_are_checked(tmp_path, fit, match):
    """trainer_state.json's 'fit' entry, which `fastlm train --resume` reuses."""
    d = tmp_path / "c"
    _gpt().fit(np.arange(100) % V, steps=1, batch_size=1, checkpoint_dir=d, progress=False)
    _edit_json(d / "trainer_state.json",
               lambda s: s.update(fit=fit if isinstance(fit, list) else dict(s["fit"], **fit)))
    with pytest.raises(ValueError, match=r"trainer_state\.json' is corrupt: bad 'fit' settings \(.*" + match):
        fastlm.Transformer.load(d)
    with pytest.raises(ValueError, match=r"trainer_state\.json' is corrupt: bad 'fit' settings"):
        _gpt().fit(np.arange(100) % V, steps=2, batch_size=1, checkpoint_dir=d, resume=True, progress=False)


def test_a_run_of_unbounded_steps_loads(tmp_path):
    # "Train until stopped": fit accepts any steps, so load must accept its record.
    d = tmp_path / "c"
    _gpt().fit(np.arange(100) % V, steps=10**19, batch_size=1, checkpoint_dir=d, progress=False,
               callback=lambda step, metrics: False)
    assert fastlm.Transformer.load(d).optimizer_step == 1


@pytest.mark.parametrize("read", ["state_dict", "gradients", "save"])
def test_snapshots_wait_for_a_step_in_another_thread(tmp_path, read):
    # state_dict, gradients and save take the model's lock, as step does, so
    # a snapshot holds one step's weights, never parts of two.
    model = _gpt()
    call = {"state_dict": model.state_dict, "gradients": model.gradients,
            "save": lambda: model.save(tmp_path / "c")}[read]
    with model._lock:  # what a step in progress holds
        t = threading.Thread(target=call)
        t.start()
        t.join(0.3)
        assert t.is_alive()
    t.join(10)
    assert not t.is_alive()

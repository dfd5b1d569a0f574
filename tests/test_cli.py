"""The ``fastlm`` command line: train a tiny model, sample from it, and every
user mistake ends in one ``fastlm: error:`` line and a non-zero status."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fastlm
from fastlm.cli import main
from cli_helpers import TINY, _error_line, corpus  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    rc = main(["train", str(corpus), "--out", str(out), "--steps", "20", "--seed", "3"] + TINY)
    assert rc == 0
    return out


def _env():
    """The environment of a ``python -m fastlm`` subprocess that imports this fastlm."""
    env = dict(os.environ)
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(fastlm.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([pkg_parent] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def test_train_writes_checkpoint_and_metrics(trained):
    files = set(os.listdir(trained))
    assert {"config.json", "model.safetensors", "tokenizer.json", "optimizer.safetensors",
            "trainer_state.json", "metrics.jsonl"} <= files
    rows = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 21))
    assert all(np.isfinite(r["loss"]) for r in rows)
    assert [r["step"] for r in rows if r["val_loss"] is not None] == [10, 20]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "loss.png" not in files
    else:
        assert "loss.png" in files
    m = fastlm.model.Transformer.load(trained)
    assert m.config["n_embd"] == 16 and m.optimizer_step == 20 and m.tokenizer is not None


def test_sample(trained, capsys):
    capsys.readouterr()
    args = ["sample", str(trained), "--prompt", "the fox", "--max-new-tokens", "40", "--seed", "5"]
    assert main(args) == 0
    out1 = capsys.readouterr().out
    assert out1.startswith("the fox") and len(out1) == len("the fox") + 40 + 1
    assert main(args) == 0
    assert capsys.readouterr().out == out1  # same seed, same text
    assert main(args[:-1] + ["6"]) == 0
    assert capsys.readouterr().out != out1
    assert main(["sample", str(trained), "--prompt", "dog", "--max-new-tokens", "10", "--num-samples", "3",
                 "--top-p", "0.9", "--temperature", "1.2"]) == 0
    out = capsys.readouterr().out
    assert out.count("---------------\n") == 2 and out.count("dog") >= 3
    assert main(["sample", str(trained), "--prompt", "a", "--max-new-tokens", "5", "--greedy"]) == 0
    assert capsys.readouterr().out.startswith("a")


def test_resume_and_overwrite(corpus, trained, tmp_path, capsys):
    import shutil
    out = tmp_path / "out"
    shutil.copytree(trained, out)
    capsys.readouterr()
    assert main(["train", str(corpus), "--out", str(out), "--steps", "20"] + TINY) == 2
    assert "--resume" in _error_line(capsys)
    assert main(["train", str(corpus), "--out", str(out), "--steps", "25", "--resume"] + TINY) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 26))
    assert fastlm.model.Transformer.load(out).optimizer_step == 25
    capsys.readouterr()
    assert main(["train", str(corpus), "--out", str(out), "--steps", "3", "--resume", "--n-embd", "32"]) == 2
    assert "--n-embd 32 differs" in _error_line(capsys)
    assert main(["train", str(corpus), "--out", str(out), "--steps", "3", "--overwrite"] + TINY) == 0
    assert fastlm.model.Transformer.load(out).optimizer_step == 3


def test_out_through_a_symlink(corpus, tmp_path):
    # --out a symlink, dangling at first: the run lives in its target, the link stays.
    os.symlink("real", tmp_path / "latest")
    for steps in ("3", "5"):
        extra = ["--resume"] if steps == "5" else []
        assert main(["train", str(corpus), "--out", str(tmp_path / "latest"), "--steps", steps] + TINY + extra) == 0
    assert os.path.islink(tmp_path / "latest") and sorted(os.listdir(tmp_path)) == ["latest", "real"]
    rows = (tmp_path / "real" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == [1, 2, 3, 4, 5]


def test_resume_keeps_the_runs_training_flags(corpus, tmp_path, capsys):
    """Flags not given on --resume keep the run's values: an LSTM's window
    stays 8 (not the default 64), the batch 3, the learning rates and the SGD
    optimizer as they were."""
    out = tmp_path / "lstm"
    first = ["--model", "lstm", "--embed-dim", "8", "--hidden-size", "8", "--num-layers", "1", "--block-size", "8",
             "--batch-size", "3", "--lr", "0.02", "--optimizer", "sgd", "--momentum", "0.5", "--eval-interval", "2",
             "--eval-batches", "1", "--no-progress"]
    assert main(["train", str(corpus), "--out", str(out), "--steps", "2"] + first) == 0
    fit_args = json.loads((out / "trainer_state.json").read_text())["fit"]
    capsys.readouterr()
    assert main(["train", str(corpus), "--out", str(out), "--steps", "2", "--resume"]) == 2
    assert "has made 2 of its --steps 2" in _error_line(capsys)
    assert main(["train", str(corpus), "--out", str(out), "--steps", "4", "--resume", "--no-progress"]) == 0
    resumed = json.loads((out / "trainer_state.json").read_text())["fit"]
    assert resumed == dict(fit_args, steps=4)
    assert (resumed["block_size"], resumed["batch_size"], resumed["optimizer"]) == (8, 3, "sgd")
    assert main(["train", str(corpus), "--out", str(out), "--steps", "5", "--resume", "--lr", "0.01",
                 "--no-progress"]) == 0
    assert json.loads((out / "trainer_state.json").read_text())["fit"]["lr"] == 0.01  # a given flag wins


def test_resume_refuses_another_tokenizer_and_corpus(corpus, trained, tmp_path, capsys):
    import shutil
    out = tmp_path / "out"
    shutil.copytree(trained, out)
    capsys.readouterr()
    assert main(["train", str(corpus), "--out", str(out), "--steps", "22", "--resume", "--tokenizer", "byte"]) == 2
    assert "--tokenizer byte differs from the checkpoint's char" in _error_line(capsys)
    other = tmp_path / "other.txt"
    other.write_text("The Zebra " * 300, encoding="utf-8")
    assert main(["train", str(other), "--out", str(out), "--steps", "22", "--resume"]) == 2
    line = _error_line(capsys)
    assert f"corpus {str(other)!r} does not fit the tokenizer of the checkpoint in {str(out)!r}" in line, line
    assert main(["train", str(corpus), "--out", str(out), "--steps", "22", "--resume", "--tokenizer", "char",
                 "--no-progress"]) == 0
    assert fastlm.model.Transformer.load(out).optimizer_step == 22


def test_default_corpus(tmp_path, capsys):
    out = tmp_path / "std"
    assert main(["train", "--out", str(out), "--steps", "2", "--block-size", "8", "--n-layer", "1", "--n-head", "1",
                 "--n-embd", "8", "--batch-size", "2", "--eval-batches", "1", "--no-progress"]) == 0
    assert "standard library" in capsys.readouterr().err
    assert fastlm.model.Transformer.load(out).tokenizer.vocab_size > 50


@pytest.mark.parametrize("argv, needle", [
    (["train", "{tmp}/missing.txt", "--out", "{tmp}/o"], "missing.txt"),
    (["train", "{corpus}"], "--out"),
    (["train", "{corpus}", "--out", "{tmp}/o", "--steps", "zero"], "--steps"),
    (["train", "{corpus}", "--out", "{tmp}/o", "--steps", "0"], "--steps"),
    (["train", "{corpus}", "--out", "{tmp}/o", "--bogus"], "--bogus"),
    (["train", "{corpus}", "--out", "{tmp}/o", "--n-embd", "30", "--n-head", "4"], "divisible"),
    (["train", "{corpus}", "--out", "{tmp}/o", "--device", "cuda"], "CUDA"),
    (["train", "{corpus}", "--out", "{tmp}/o", "--device", "abacus"], "unknown device"),
    (["train", "{corpus}", "--out", "{tmp}/o", "--resume"], "no checkpoint"),
    (["train", "{corpus}", "--out", "{tmp}/o", "--block-size", "5000"], "too short"),
    (["train", "{corpus}", "--out", "{corpus}"], "not a directory"),
    (["sample", "{tmp}/nowhere", "--prompt", "x"], "nowhere"),
    (["sample", "{tmp}", "--prompt", "x"], "not a fastlm checkpoint"),
    (["sample", "{trained}", "--prompt", "\u00e9\u00e9"], "--prompt"),
    (["sample", "{trained}", "--top-p", "2"], "--top-p"),
    (["sample", "{trained}", "--temperature", "0"], "--temperature"),
    (["sample", "{trained}", "--max-new-tokens", "-1"], "--max-new-tokens"),
    (["sample", "{trained}", "--temperature", "inf"], "--temperature"),
    (["sample", "{trained}", "--seed", str(2**64)], "argument --seed: expected an integer below 2**64"),
    (["sample", "{trained}", "--threads", "100000"], "--threads"),
    (["train", "{corpus}", "--out", "{tmp}/o", "--threads", "100000"], "--threads"),
    (["train", "{corpus}", "--out", "{tmp}/o", "--lr", "-1"], "--lr"),
    (["train", "{corpus}", "--out", "{tmp}/o", "--lr", "nan"], "--lr"),
    (["train", "{corpus}", "--out", "{tmp}/o", "--beta2", "1"], "--beta2"),
    (["train", "{corpus}", "--out", "{tmp}/o", "--val-fraction", "1"], "--val-fraction"),
    (["train", "{corpus}", "--out", "{tmp}/o", "--min-lr", "0.1"], "--min-lr"),
    (["train", "{corpus}", "--out", "{trained}/.."], "subdirectory"),
    ([], "command"),
    (["frobnicate"], "frobnicate"),
])
def test_user_mistakes_exit_2_with_one_line(argv, needle, corpus, trained, tmp_path, capsys):
    sub = {"{tmp}": str(tmp_path), "{corpus}": str(corpus), "{trained}": str(trained)}
    args = []
    for a in argv:
        for k, v in sub.items():
            a = a.replace(k, v)
        args.append(a)
    capsys.readouterr()
    assert main(args) == 2
    assert needle in _error_line(capsys)
    assert capsys.readouterr().out == ""  # sample prints no prompt before the error
    assert not os.path.exists(tmp_path / "o")  # train writes nothing before it


def test_a_mistake_keeps_the_runs_metrics(corpus, trained, tmp_path, capsys):
    """--overwrite with a value fit refuses must not first empty metrics.jsonl."""
    import shutil
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = (run / "metrics.jsonl").read_text()
    for bad in (["--min-lr", "0.5"], ["--lr", "-1"]):
        capsys.readouterr()
        assert main(["train", str(corpus), "--out", str(run), "--overwrite", "--steps", "2"] + TINY + bad) == 2
        _error_line(capsys)
        assert (run / "metrics.jsonl").read_text() == before


def test_corrupt_checkpoint_is_a_clean_error(trained, tmp_path, capsys):
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(trained, bad)
    p = bad / "model.safetensors"
    p.write_bytes(p.read_bytes()[:100])
    capsys.readouterr()
    assert main(["sample", str(bad), "--prompt", "the"]) == 2
    assert "model.safetensors" in _error_line(capsys)


def test_sample_streams_what_a_whole_decode_gives(tmp_path, capsys):
    # A byte model with random weights draws bytes that are often no UTF-8 at
    # all: the streamed text must still be the whole sample decoded at once.
    model = fastlm.Transformer(256, block_size=32, n_layer=1, n_head=2, n_embd=16, seed=5,
                               tokenizer=fastlm.ByteTokenizer())
    model.save(tmp_path / "ck")
    flags = ["--temperature", "1.5", "--top-k", "256", "--seed", "7"]
    assert main(["sample", str(tmp_path / "ck"), "--prompt", "h\u00e9\u20ac", "--max-new-tokens", "300"]
                + flags) == 0
    prompt = model.tokenizer.encode("h\u00e9\u20ac")
    ids = model.generate(prompt, 300, temperature=1.5, top_k=256, seed=7)
    assert capsys.readouterr().out == "h\u00e9\u20ac" + model.tokenizer.decode(ids[len(prompt):]) + "\n"


def test_sample_a_padded_vocabulary(trained, tmp_path, capsys):
    """A model of more ids than its tokenizer (the docs allow it) samples only
    ids the tokenizer decodes, even when the padded ones are the likeliest."""
    m = fastlm.model.Transformer.load(trained)
    V, C = m.tokenizer.vocab_size, m.config["n_embd"]
    arch = {k: m.config[k] for k in ("block_size", "n_layer", "n_head", "n_embd")}
    padded = fastlm.model.Transformer(V + 5, tokenizer=m.tokenizer, **arch)
    sd = padded.state_dict()
    sd.pop("lm_head.weight")
    sd["transformer.ln_f.weight"][:] = 0.0  # ln_f's output is all ones: a logit is the sum of a wte row
    sd["transformer.ln_f.bias"][:] = 1.0
    sd["transformer.wte.weight"][V:] = 20.0 / C  # the padded ids' logits are 20
    padded.load_state_dict(sd)
    padded.save(tmp_path / "padded")
    for extra in ([], ["--greedy"], ["--num-samples", "3"]):
        capsys.readouterr()
        assert main(["sample", str(tmp_path / "padded"), "--prompt", "the", "--max-new-tokens", "20"] + extra) == 0
        out = capsys.readouterr()
        assert out.err == "" and out.out.startswith("the")


@pytest.mark.parametrize("argv", [
    ["train", "{corpus}", "--out", "{tmp}/o", "--n-layer", "1", "--n-head", "1", "--n-embd", "2000000"],
    ["train", "{corpus}", "--out", "{tmp}/o", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size",
     "16", "--batch-size", "100000000", "--no-progress"],
    ["sample", "{trained}", "--prompt", "the", "--max-new-tokens", "5", "--num-samples", "100000000"],
])
@pytest.mark.skipif(bool(os.environ.get("FASTLM_SANITIZED")), reason="ASan cannot run under an address-space limit")
def test_out_of_memory_is_one_line(argv, corpus, trained, tmp_path):
    """A model, batch or sample count too large for the machine (here: a 4 GiB
    address space) is a user mistake like any other."""
    import resource
    args = [a.replace("{corpus}", str(corpus)).replace("{tmp}", str(tmp_path)).replace("{trained}", str(trained))
            for a in argv]

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    r = subprocess.run([sys.executable, "-m", "fastlm"] + args, capture_output=True, text=True, env=_env(),
                       timeout=300, preexec_fn=limit)
    err = [line for line in r.stderr.splitlines() if not line.startswith("fastlm: training")]
    assert r.returncode == 2 and len(err) == 1 and err[0].startswith("fastlm: error: out of memory: "), r.stderr


def test_sample_into_a_closed_pipe_exits_quietly(trained):
    """`fastlm sample ... | head -c 10`: no error once the reader has gone."""
    with subprocess.Popen([sys.executable, "-m", "fastlm", "sample", str(trained), "--prompt", "the",
                           "--max-new-tokens", "100000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=_env()) as p:
        assert len(p.stdout.read(10)) == 10
        p.stdout.close()
        err = p.stderr.read().decode()
        assert p.wait(timeout=120) == 141 and err == ""


def test_info_and_help(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"fastlm {fastlm.__version__}" in out and "cpu isa:" in out and "threads:" in out and "cuda:" in out
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"fastlm {fastlm.__version__}"
    assert main(["train", "--help"]) == 0
    assert "--block-size" in capsys.readouterr().out


def test_bench_flag_mistakes_are_one_line(capsys):
    pytest.importorskip("fastlm.bench")
    for argv in (["bench", "--threads", "0"], ["bench", "--threads", "100000"], ["bench", "--bogus"],
                 ["bench", "--only", "no-such-benchmark"]):
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("fastlm bench: error: "), err


def test_bench_stub(capsys):
    try:
        import fastlm.bench  # noqa: F401
    except ModuleNotFoundError:
        pass
    else:
        pytest.skip("fastlm.bench exists; its own tests cover it")
    assert main(["bench"]) == 1
    assert "unavailable" in capsys.readouterr().err


ALLOC_AGAIN = """
import resource, sys
import numpy as np
from fastlm.bench import steady_allocator
if sys.argv[1] == "steady" and not steady_allocator():
    print("unavailable")
    sys.exit()
np.ones(4 << 20, np.float32)  # 16 MiB, freed at once
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
np.ones(4 << 20, np.float32)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_bench_allocator_reuses_freed_blocks():
    """The benchmarks time every library with glibc's malloc in its steady state:
    a freed 16 MiB block is reused without a page fault, where a fresh process
    faults the next one's pages in anew (hundreds of faults)."""
    faults = {}
    for mode in ("default", "steady"):
        r = subprocess.run([sys.executable, "-c", ALLOC_AGAIN, mode], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, r.stderr
        faults[mode] = r.stdout.strip()
    if faults["steady"] == "unavailable":
        pytest.skip("not glibc: malloc has no mmap threshold to set")
    assert int(faults["steady"]) <= 4 < int(faults["default"]), faults


def test_python_dash_m(tmp_path):
    env = _env()
    r = subprocess.run([sys.executable, "-m", "fastlm", "info"], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0 and "fastlm" in r.stdout
    r = subprocess.run([sys.executable, "-m", "fastlm", "sample", str(tmp_path / "none")], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("fastlm: error:") and "Traceback" not in r.stderr

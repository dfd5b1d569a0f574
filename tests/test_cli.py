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

TINY = ["--block-size", "16", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--batch-size", "4",
        "--eval-interval", "10", "--eval-batches", "2", "--no-progress"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = np.random.default_rng(0)
    words = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "and", "runs", "away"]
    lines = [" ".join(rng.choice(words, 8)) + "." for _ in range(120)]
    p = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    rc = main(["train", str(corpus), "--out", str(out), "--steps", "20", "--seed", "3"] + TINY)
    assert rc == 0
    return out


def _error_line(capsys):
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastlm: error: "), err
    return lines[0]


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
    (["sample", "{trained}", "--seed", str(2**64)], "seed"),
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
    env = dict(os.environ)
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(fastlm.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([pkg_parent] + [p for p in [env.get("PYTHONPATH")] if p])
    r = subprocess.run([sys.executable, "-m", "fastlm", "info"], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0 and "fastlm" in r.stdout
    r = subprocess.run([sys.executable, "-m", "fastlm", "sample", str(tmp_path / "none")], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("fastlm: error:") and "Traceback" not in r.stderr

"""``fastlm train --config``, the nanoGPT knobs as flags, and the messages a
newcomer reads (help, info, --device, the plot hint)."""
from __future__ import annotations

import json
import os

import pytest

import fastlm
from fastlm import cli
from fastlm.cli import main
from fastlm.train_config import normalize_flags
from cli_helpers import TINY, _error_line, corpus  # noqa: F401 (fixture)

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "shakespeare_char.toml")


def _fit(out):
    return json.loads((out / "trainer_state.json").read_text())["fit"]


def test_config_file_and_overrides(corpus, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "run"
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'corpus = "{corpus}"\nout = "{out}"\nsteps = 6\nblock_size = 16\nn_layer = 1\nn_head = 2\n'
                   'n-embd = 16\nbatch_size = 4\neval_interval = 3\neval_batches = 2\nlr = 2e-3\n'
                   'lr_decay_iters = 4\ndropout = 0.1\nno_progress = true\n', encoding="utf-8")
    assert main(["train", "--config", str(cfg), "--lr=0.003", "--batch_size=3"]) == 0
    fit = _fit(out)
    assert (fit["steps"], fit["lr"], fit["batch_size"], fit["lr_decay_iters"]) == (6, 0.003, 3, 4)
    model = fastlm.LanguageModel.load(out)
    assert (model.config["n_layer"], model.config["n_embd"], model.dropout) == (1, 16, 0.1)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["lr"] == pytest.approx(2e-4 * 1.5)  # past lr_decay_iters: min_lr = lr / 10
    assert rows[2]["train_loss"] is not None and rows[2]["val_loss"] is not None and rows[1]["train_loss"] is None


def test_example_config_is_nanogpts_cpu_run():
    parser = cli._build_parser()
    from fastlm.train_config import apply_config, load_config
    apply_config(parser.train_parser, load_config(EXAMPLE), EXAMPLE)
    a = parser.parse_args(["train"])
    assert (a.n_layer, a.n_head, a.n_embd, a.block_size, a.batch_size, a.steps) == (4, 4, 128, 64, 12, 2000)
    assert (a.lr, a.min_lr, a.warmup_steps, a.lr_decay_iters, a.beta2, a.weight_decay, a.grad_clip) == \
        (1e-3, 1e-4, 100, 2000, 0.99, 0.1, 1.0)
    assert (a.dropout, a.keep_best, a.decay_lr, a.eval_batches) == (0.0, True, True, 20)


@pytest.mark.parametrize("text, needle", [
    ("stepz = 3", "unknown setting 'stepz'"),
    ("steps = -3", "steps: expected an integer >= 1"),
    ("steps = 2.5", "steps: expected an integer"),
    ("lr = \"fast\"", "lr: expected a number"),
    ("keep_best = 1", "keep_best must be true or false"),
    ("model = \"rnn\"", "model must be one of"),
    ("steps = [1]", "steps must be a number"),
    ("[train]\nsteps = 3", "flat list"),
    ("steps = ", "not valid TOML"),
])
def test_bad_config_is_one_line(text, needle, corpus, tmp_path, capsys):  # noqa: F811
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text, encoding="utf-8")
    capsys.readouterr()
    assert main(["train", str(corpus), "--out", str(tmp_path / "o"), "--config", str(cfg)]) == 2
    line = _error_line(capsys)
    assert needle in line and "bad.toml" in line
    assert not os.path.exists(tmp_path / "o")


def test_missing_config_file(corpus, tmp_path, capsys):  # noqa: F811
    assert main(["train", str(corpus), "--out", str(tmp_path / "o"), "--config", str(tmp_path / "no.toml")]) == 2
    assert "not found" in _error_line(capsys)


def test_normalize_flags():
    assert normalize_flags(["train", "--batch_size=3", "--lr_decay_iters", "5", "a_b.txt", "--out=x_y"]) == \
        ["train", "--batch-size=3", "--lr-decay-iters", "5", "a_b.txt", "--out=x_y"]


def test_defaults_are_the_apis(corpus, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    assert main(["train", str(corpus), "--out", str(out), "--steps", "2"] + TINY) == 0
    fit = _fit(out)
    assert fit["betas"] == [0.9, 0.95]  # fit's (nanoGPT's) default, not 0.99
    assert (fit["decay_lr"], fit["keep_best"], fit["lr_decay_iters"]) == (True, False, None)
    import inspect
    assert cli._build_parser().train_parser.get_default("eval_batches") == \
        inspect.signature(fastlm.train.fit).parameters["eval_batches"].default


def test_keep_best_keeps_the_best(corpus, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "run"
    assert main(["train", str(corpus), "--out", str(out), "--steps", "12", "--keep-best", "--lr", "0.05",
                 "--no-decay-lr"] + TINY[:-5] + ["--eval-interval", "3", "--eval-batches", "1", "--no-progress"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["lr"] == 0.05 for r in rows)
    vals = [(r["step"], r["val_loss"]) for r in rows if r["val_loss"] is not None]
    best_step = min(vals, key=lambda sv: sv[1])[0]
    assert fastlm.LanguageModel.load(out).optimizer_step == best_step
    assert f"kept the best checkpoint in {out} (step {best_step} of 12" in capsys.readouterr().out


def test_dropout_flag(corpus, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "run"
    assert main(["train", str(corpus), "--out", str(out), "--steps", "2", "--dropout", "0.2"] + TINY) == 0
    assert fastlm.LanguageModel.load(out).dropout == 0.2
    assert main(["train", str(corpus), "--out", str(out), "--steps", "3", "--resume", "--dropout", "0"] + TINY) == 0
    assert fastlm.LanguageModel.load(out).dropout == 0.0
    capsys.readouterr()
    assert main(["train", str(corpus), "--out", str(tmp_path / "l"), "--model", "lstm", "--dropout", "0.1",
                 "--steps", "1", "--block-size", "8", "--num-layers", "2", "--hidden-size", "8", "--no-progress"]) == 0
    assert fastlm.LanguageModel.load(tmp_path / "l").dropout == 0.1
    capsys.readouterr()
    assert main(["train", str(corpus), "--out", str(tmp_path / "l"), "--dropout", "1"]) == 2
    assert "--dropout" in _error_line(capsys)


def test_help_reads_right(capsys):
    assert main(["train", "--help"]) == 0
    text = capsys.readouterr().out
    assert "90%" in text and "%%" not in text and "character-level" not in text
    assert "fastlm[plot]" in text and "--config" in text


def test_device_error_speaks_in_flags(corpus, tmp_path, capsys):  # noqa: F811
    assert main(["train", str(corpus), "--out", str(tmp_path / "o"), "--device", "cuda"]) == 2
    line = _error_line(capsys)
    assert "--device cpu" in line and "device='cpu'" not in line and "build_info" not in line


def test_info_without_a_driver(monkeypatch):
    from fastlm import cli_info
    monkeypatch.setattr(cli_info, "_nvidia_driver_loadable", lambda: False)
    assert cli_info._no_device_reason() == "no NVIDIA driver is installed (libcuda could not be loaded)"


def test_plot_hint_without_matplotlib(corpus, tmp_path, capsys, monkeypatch):  # noqa: F811
    import fastlm.plot
    monkeypatch.setattr(fastlm.plot, "plot_history", lambda path, history: False)
    monkeypatch.setattr(fastlm.plot, "can_plot", lambda: False)
    assert main(["train", str(corpus), "--out", str(tmp_path / "o"), "--steps", "1"] + TINY) == 0
    assert "pip install 'fastlm[plot]'" in capsys.readouterr().out

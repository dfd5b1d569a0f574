"""``fastlm train``: its flags, and the run: a new model or a resumed
checkpoint trained on a corpus, with metrics.jsonl and loss.png beside the
checkpoint in --out."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, Sequence

from .cli_common import (CLIError, _device, _model_seed, _nonneg_float, _nonneg_int, _positive_float, _positive_int,
                         _precision, _set_threads, _threads, _unit_float)

# Architecture flags per --model (the Transformer's block_size is part of its
# architecture; a recurrent model's --block-size is only its training window).
_ARCH_DEFAULTS = {
    "transformer": {"block_size": 64, "n_layer": 4, "n_head": 4, "n_embd": 128},
    "lstm": {"embed_dim": 128, "hidden_size": 256, "num_layers": 2},
    "gru": {"embed_dim": 128, "hidden_size": 256, "num_layers": 2},
}
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"


def add_train_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``train`` subcommand to ``sub`` (argparse subparsers); returns its parser."""
    t = sub.add_parser("train", help="train a model on a text file", description=(
        "Train a language model on CORPUS (UTF-8 text, or token data from fastlm tokenize; default: the source "
        "of Python's standard library), tokenized by --tokenizer (characters by default), the first 90% for "
        "training and the last 10% for validation. Writes the checkpoint, metrics.jsonl and loss.png (with the "
        "plot extra: pip install 'fastlm[plot]') into --out. Settings can come from a TOML file (--config); "
        "flags override it, as --key=value or --key value."))
    t.add_argument("corpus", nargs="?", help="UTF-8 text file, or token data from fastlm tokenize (a directory "
                   "with train.bin, or a .bin file) (default: Python's standard library source)")
    t.add_argument("--config", metavar="FILE.toml", default=None,
                   help="read the settings from a TOML file of key = value lines named as these flags "
                        "(e.g. examples/shakespeare_char.toml); flags given here win")
    t.add_argument("--out", metavar="DIR", default=None,
                   help="output directory (checkpoint, metrics.jsonl, loss.png); required")
    t.add_argument("--model", default=None, choices=sorted(_ARCH_DEFAULTS),
                   help="model family (default transformer, or the checkpoint's with --resume)")
    t.add_argument("--tokenizer", default=None, choices=["char", "byte", "bpe"],
                   help="char: one id per character of the corpus (default, or the checkpoint's with --resume); "
                        "byte: UTF-8 bytes; bpe: a byte-level BPE learned from the corpus")
    t.add_argument("--vocab-size", type=_positive_int, default=None,
                   help="BPE vocabulary to learn (default 4096), or the model's for token data without a tokenizer")
    t.add_argument("--steps", type=_positive_int, default=None, help="optimizer steps in all (default 2000)")
    t.add_argument("--batch-size", type=_positive_int, default=None,
                   help="sequences per micro-batch, per rank under mpirun (default 12)")
    t.add_argument("--grad-accum", type=_positive_int, default=None, help="micro-batches per step (default 1)")
    t.add_argument("--block-size", type=_positive_int, default=None,
                   help="context length (transformer) or training window (lstm, gru); default 64")
    t.add_argument("--n-layer", type=_positive_int, default=None, help="transformer layers (default 4)")
    t.add_argument("--n-head", type=_positive_int, default=None, help="transformer attention heads (default 4)")
    t.add_argument("--n-embd", type=_positive_int, default=None, help="transformer width (default 128)")
    t.add_argument("--dropout", type=_unit_float, default=None,
                   help="dropout while training, in [0, 1): the transformer's embedding, attention and residual "
                        "branches; between lstm/gru layers (default 0, or the checkpoint's with --resume)")
    t.add_argument("--embed-dim", type=_positive_int, default=None, help="lstm/gru embedding size (default 128)")
    t.add_argument("--hidden-size", type=_positive_int, default=None, help="lstm/gru state size (default 256)")
    t.add_argument("--num-layers", type=_positive_int, default=None, help="lstm/gru layers (default 2)")
    t.add_argument("--optimizer", default=None, choices=["adamw", "adam", "sgd"],
                   help="default adamw (transformer) or adam (lstm, gru)")
    t.add_argument("--momentum", type=_nonneg_float, default=None, help="SGD momentum (default 0.9)")
    t.add_argument("--lr", type=_positive_float, default=None, help="peak learning rate (default 1e-3)")
    t.add_argument("--min-lr", type=_nonneg_float, default=None, help="final learning rate (default lr/10)")
    t.add_argument("--warmup-steps", type=_nonneg_int, default=None,
                   help="linear warmup steps (default min(100, steps/10))")
    t.add_argument("--lr-decay-iters", type=_positive_int, default=None,
                   help="step at which the cosine decay reaches --min-lr (default --steps)")
    t.add_argument("--decay-lr", action=argparse.BooleanOptionalAction, default=None,
                   help="warmup and cosine decay (default), or --no-decay-lr for a constant --lr")
    t.add_argument("--beta1", type=_unit_float, default=None, help="Adam(W) beta1 (default 0.9)")
    t.add_argument("--beta2", type=_unit_float, default=None,
                   help="Adam(W) beta2 (default 0.95 for the transformer, 0.999 for lstm/gru)")
    t.add_argument("--weight-decay", type=_nonneg_float, default=None,
                   help="AdamW/SGD weight decay on 2-D weights (default 0.1, 0 for lstm/gru)")
    t.add_argument("--grad-clip", type=_nonneg_float, default=None, help="clip the gradient norm (0: off; default 1.0)")
    t.add_argument("--val-fraction", type=_unit_float, default=0.1, help="validation share (default 0.1)")
    t.add_argument("--eval-interval", type=_positive_int, default=250, help="evaluate every N steps (default 250)")
    t.add_argument("--eval-batches", type=_positive_int, default=50,
                   help="random batches of each split per evaluation of the train and val loss (default 50)")
    t.add_argument("--checkpoint-interval", type=_positive_int, default=None,
                   help="save every N steps (default: --eval-interval)")
    t.add_argument("--keep-best", action=argparse.BooleanOptionalAction, default=None,
                   help="save only when the val loss improves, so --out keeps the best model (default off)")
    t.add_argument("--seed", type=_model_seed, default=1337, help="initialisation and batch seed (default 1337)")
    t.add_argument("--resume", action="store_true", help=(
        "continue the run whose checkpoint is in --out; the training flags above that are not given "
        "(steps, batch size, block size, learning rates, optimizer settings) keep the run's values"))
    t.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint in --out")
    t.add_argument("--device", default="cpu", help="cpu (default) or cuda (a GPU; FASTLM_EMULATE_CUDA=1 emulates one on the CPU)")
    t.add_argument("--precision", choices=("fp32", "bf16", "tf32"), default=None, help=(
        "bf16: GEMMs on bfloat16 operands, float32 weights and optimizer state (on a CPU: needs AVX512_BF16); tf32: GPU only; "
        "default fp32, or the checkpoint's with --resume)"))
    t.add_argument("--threads", type=_threads, default=None, help="kernel threads (default: all cores)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    return t


def _append_metrics(out: str, entry: Dict[str, Any]) -> None:
    # Reopened per line: the checkpoint directory is swapped under us on each save.
    with open(os.path.join(out, METRICS_FILE), "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")


def _rewrite_metrics(out: str, history: Sequence[Dict[str, Any]]) -> None:
    from ._io import atomic_write
    atomic_write(os.path.join(out, METRICS_FILE), "".join(json.dumps(e) + "\n" for e in history))


def _reject_foreign_flags(a: argparse.Namespace, kind: str) -> None:
    """Architecture flags of another model family are a mistake, not a no-op."""
    ours = set(_ARCH_DEFAULTS[kind]) | {"block_size"}
    for other in _ARCH_DEFAULTS.values():
        for key in set(other) - ours:
            if getattr(a, key) is not None:
                raise CLIError(f"--{key.replace('_', '-')} does not apply to --model {kind}")


# fit's options that the train flags set, with their defaults; --resume keeps
# the checkpoint's for flags not given (see _fit_options).
_FIT_DEFAULTS = {"steps": 2000, "batch_size": 12, "grad_accum": 1, "lr": 1e-3, "min_lr": None,
                 "warmup_steps": None, "beta1": None, "beta2": None, "weight_decay": None, "grad_clip": 1.0,
                 "optimizer": None, "momentum": 0.9, "block_size": None, "lr_decay_iters": None,
                 "decay_lr": True, "keep_best": False}


def _fit_options(a: argparse.Namespace, previous: Dict[str, Any]) -> Dict[str, Any]:
    """Each option of _FIT_DEFAULTS: the flag when given, else the resumed run's
    value (``previous``, fit's record of its arguments), else the default."""
    prev = dict(previous)
    if "betas" in prev:
        prev["beta1"], prev["beta2"] = prev.pop("betas")
    opts = {}
    for key, default in _FIT_DEFAULTS.items():
        given = getattr(a, key)
        opts[key] = given if given is not None else prev.get(key, default)
    return opts


def cmd_train(a: argparse.Namespace) -> int:
    from . import distributed
    from .checkpoint import check_save_target, is_checkpoint
    from .data import default_corpus, read_text, train_val_split
    from .lm import LanguageModel
    from .model import Transformer
    from .rnn import GRULM, LSTMLM
    from .cli_tokenize import model_vocab_size, new_tokenizer, open_prepared
    from .corpus import encode_text
    from .plot import can_plot, plot_history

    _device(a.device)
    _precision(a.precision, a.device)
    _set_threads(a.threads)
    try:
        world = distributed.world()  # under mpirun: one rank of a data-parallel run
    except RuntimeError as e:  # started by mpirun without mpi4py; every rank meets it
        raise distributed.raised_alike(CLIError(str(e))) from None
    lead = world.rank == 0
    out = a.out
    if out is None:
        raise CLIError("--out DIR is required (the run directory; or out = \"DIR\" in the --config file)")
    if os.path.exists(out) and not os.path.isdir(out):
        raise CLIError(f"--out {out!r} exists and is not a directory")
    try:
        check_save_target(out)
    except ValueError as e:
        raise CLIError(f"--out: {e}") from None
    if a.resume and not is_checkpoint(out):
        raise CLIError(f"--resume: no checkpoint in {out!r} to resume from")
    if not a.resume and is_checkpoint(out) and not a.overwrite:
        raise CLIError(f"{out!r} already holds a checkpoint; pass --resume to continue it or --overwrite to replace it")

    if a.corpus is not None and not os.path.exists(a.corpus):
        raise CLIError(f"corpus file {a.corpus!r} not found")
    prepared = open_prepared(a.corpus, a.val_fraction) if a.corpus is not None else None
    text = None
    if a.corpus is None:
        text = default_corpus()
        source = "the Python standard library source"
    else:
        if prepared is None:
            text = read_text(a.corpus)
        source = repr(a.corpus)
    if text is not None and not text:
        raise CLIError(f"corpus {source} is empty")

    if a.resume:
        model = LanguageModel.load(out, device=a.device, precision=a.precision)
        kind = model.MODEL_TYPE
        _reject_foreign_flags(a, kind)
        if a.model is not None and a.model != kind:
            raise CLIError(f"--model {a.model} differs from the checkpoint's {kind}")
        cfg = model.config
        for key in _ARCH_DEFAULTS[kind]:
            given = getattr(a, key)
            if given is not None and given != cfg[key]:
                raise CLIError(f"--{key.replace('_', '-')} {given} differs from the checkpoint's {cfg[key]}")
        tok = model.tokenizer
        if tok is None and (prepared is None or prepared.tokenizer is not None):
            raise CLIError(f"the checkpoint in {out!r} has no tokenizer.json; cannot encode the corpus")
        if a.dropout is not None:
            model.dropout = a.dropout  # a setting, not architecture: a resumed run may change it
        if a.tokenizer is not None and tok is not None and a.tokenizer != tok.type_name:
            raise CLIError(f"--tokenizer {a.tokenizer} differs from the checkpoint's {tok.type_name}")
    else:
        kind = a.model or "transformer"
        _reject_foreign_flags(a, kind)
        tok = new_tokenizer(a.tokenizer, a.vocab_size, text, prepared)
        arch = {k: (getattr(a, k) if getattr(a, k) is not None else v) for k, v in _ARCH_DEFAULTS[kind].items()}
        cls = {"transformer": Transformer, "lstm": LSTMLM, "gru": GRULM}[kind]
        if a.dropout:
            arch["dropout"] = a.dropout
        model = cls(model_vocab_size(tok, a.vocab_size, prepared), seed=a.seed, device=a.device, tokenizer=tok,
                    precision=a.precision or "fp32", **arch)
    previous = (model._train_state or {}).get("fit", {}) if a.resume else {}
    o = _fit_options(a, previous)
    if a.resume and a.batch_size is None:
        # The resumed run keeps its global batch, whatever the number of ranks now.
        rows = o["batch_size"] * previous.get("world_size", 1)
        try:
            o["batch_size"] = distributed.per_rank_batch(rows, world.size, "the resumed run's global batch")
        except ValueError as e:
            raise CLIError(f"{e}; pass --batch-size (rows per rank)") from None
    if o["min_lr"] is not None and o["min_lr"] > o["lr"]:
        raise CLIError(f"--min-lr ({o['min_lr']}) must not exceed --lr ({o['lr']})")
    if a.resume and o["steps"] <= model.optimizer_step:
        raise CLIError(f"the run in {out!r} has made {model.optimizer_step} of its --steps {o['steps']}; "
                       "pass a larger --steps to train further")
    window = model._train_window(o["block_size"] if kind != "transformer" else None)
    if prepared is not None:
        train, val = prepared.train, prepared.val
    else:
        try:
            ids = encode_text(tok, text)
        except ValueError as e:  # a resumed run's tokenizer
            raise CLIError(f"corpus {source} does not fit the tokenizer of the checkpoint in {out!r}: {e}") from None
        train, val = train_val_split(ids, a.val_fraction)
    if len(train) < window + 1:
        raise CLIError(f"corpus {source} is too short: {len(train)} training tokens, need at least "
                       f"block_size + 1 = {window + 1}")
    if val is not None and len(val) < 2:
        val = None
    if o["keep_best"] and val is None:
        raise CLIError(f"--keep-best needs a validation split, and corpus {source} leaves none "
                       f"(--val-fraction {a.val_fraction})")
    warmup = o["warmup_steps"] if o["warmup_steps"] is not None else min(100, o["steps"] // 10)

    if lead:
        ranks = f" on {world.size} ranks" if world.size > 1 else ""
        print(f"fastlm: training {model!r}{ranks} on {source}: {len(train):,} train / "
              f"{len(val) if val is not None else 0:,} val tokens, vocab {model.vocab_size}", file=sys.stderr)

    checkpoint_interval = a.checkpoint_interval or a.eval_interval
    recurrent = kind != "transformer"
    optimizer = o["optimizer"] or ("adam" if recurrent else "adamw")
    weight_decay = o["weight_decay"] if o["weight_decay"] is not None else (0.0 if recurrent else 0.1)
    from .optim import step_options
    model_betas = step_options(model, optimizer=optimizer)["betas"]  # the API's defaults
    betas = tuple(model_betas[i] if o[k] is None else o[k] for i, k in enumerate(("beta1", "beta2")))

    # Nothing is written into --out before fit has checked its arguments and
    # made its first step: a mistake costs no earlier run its metrics.
    started = False

    def callback(step: int, metrics: Dict[str, Any]) -> None:
        nonlocal started
        if not started:
            os.makedirs(os.path.realpath(out), exist_ok=True)  # a dangling symlink: its target
            # A resumed run's history up to the checkpoint, without this step.
            _rewrite_metrics(out, model.history[:-1])
            started = True
        _append_metrics(out, metrics)
        if step % checkpoint_interval == 0:
            plot_history(os.path.join(out, PLOT_FILE), model.history)

    history = model.fit(train, steps=o["steps"], batch_size=o["batch_size"], grad_accum=o["grad_accum"],
                        lr=o["lr"], min_lr=o["min_lr"], warmup_steps=warmup, betas=betas,
                        lr_decay_iters=o["lr_decay_iters"], decay_lr=o["decay_lr"], keep_best=o["keep_best"],
                        weight_decay=weight_decay, grad_clip=o["grad_clip"], val=val, optimizer=optimizer,
                        momentum=o["momentum"], block_size=window,
                        eval_interval=a.eval_interval, eval_batches=a.eval_batches, checkpoint_dir=out,
                        checkpoint_interval=checkpoint_interval, resume=a.resume, seed=a.seed,
                        progress=not a.no_progress, callback=callback)
    if not lead:  # rank 0 writes the metrics and reports
        return 0
    if not os.path.exists(os.path.join(out, METRICS_FILE)):
        _rewrite_metrics(out, history)
    plotted = plot_history(os.path.join(out, PLOT_FILE), history)
    last = history[-1] if history else None
    vals = history.val_losses
    if o["keep_best"] and vals:
        step, best = min(vals, key=lambda sv: sv[1])
        msg = f"fastlm: kept the best checkpoint in {out} (step {step} of {last['step']}, val loss {best:.4f})"
    else:
        msg = f"fastlm: saved checkpoint to {out}"
        if last is not None:
            msg += f" (step {last['step']}, train loss {last['loss']:.4f}"
            msg += f", val loss {vals[-1][1]:.4f})" if vals else ")"
    if plotted:
        msg += f"; plot in {os.path.join(out, PLOT_FILE)}"
    elif not can_plot():
        msg += f"; for a loss plot in {os.path.join(out, PLOT_FILE)}: pip install 'fastlm[plot]'"
    print(msg)
    return 0

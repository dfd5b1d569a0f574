"""Saving and restoring a :class:`fastlm.lm.LanguageModel` as a checkpoint
directory: what the model writes (config, weights, optimizer and trainer
state), and the checks that what a checkpoint holds fits the model before any
of it is copied in. The files themselves are :mod:`fastlm.checkpoint`'s."""
from __future__ import annotations

import os
import re
from typing import Any, Dict, List, Mapping, Optional, Union

import numpy as np

from . import _C
from ._checks import nonfinite
from .checkpoint import (CONFIG_FILE, MODEL_FILE, OPTIMIZER_FILE, TOKENIZER_FILE, TRAINER_STATE_FILE, load_checkpoint,
                         save_checkpoint)
from .train import _check_fit_record

PathLike = Union[str, "os.PathLike[str]"]


def _history_entry(e: Any) -> bool:
    """Whether ``e`` is a step of a :class:`fastlm.train.History` as fit writes it."""
    return (isinstance(e, dict) and isinstance(e.get("step"), int) and not isinstance(e["step"], bool)
            and isinstance(e.get("loss"), (int, float)) and isinstance(e.get("val_loss"), (int, float, type(None))))


def _sizes_disagree(kind: type, arch: Mapping[str, int], tensors: Mapping[str, np.ndarray]) -> List[str]:
    """The sizes of ``arch`` (checked by ``_check_arch``) that the shapes of
    ``tensors`` (name -> array, as read from a checkpoint) contradict, per
    ``kind.SIZE_AXES`` and ``kind.LAYERS``; found without building the model."""
    diff = []
    for key, (name, axis) in kind.SIZE_AXES.items():
        shape = tensors[name].shape if name in tensors else None
        if shape is None or len(shape) <= axis or shape[axis] != arch[key]:
            diff.append(f"{key} {arch[key]}, but {name} " + ("is missing" if shape is None else f"has shape {shape}"))
    key, pattern = kind.LAYERS
    n = len({m.group(1) for m in map(re.compile(pattern).fullmatch, tensors) if m})
    if n != arch[key]:
        diff.append(f"{key} {arch[key]}, but the weights have {n}")
    return diff


def save_model(model: Any, path: PathLike) -> None:
    """Write ``model`` as the checkpoint directory ``path``; see
    :meth:`fastlm.lm.LanguageModel.save`."""
    cfg: Dict[str, Any] = {"model_type": model.MODEL_TYPE}
    cfg.update({k: model._config[k] for k in model.ARCH_KEYS})
    cfg.update({k: model._config[k] for k in model.OPTIONS})
    cfg["seed"] = model._config["seed"]
    cfg["precision"] = model._config["precision"]
    cfg["fastlm_version"] = str(_C.build_info().get("version", ""))
    with model._lock:  # a training step in another thread waits: one step's state
        opt = model._optimizer_state() if model._g.step_count > 0 else None
        # What load would reject is not written: weights or optimizer state
        # with NaN or inf (a run that diverged).
        params = model._tensors.named("params")
        bad = nonfinite({n: params[n] for n in model._names})
        if opt is not None:
            for key in ("exp_avg", "exp_avg_sq", "recurrent_state"):
                bad += [f"{key}.{n}" for n in nonfinite(opt.get(key) or {})]
        if bad:
            raise ValueError(f"save: non-finite values (NaN or inf) in {', '.join(bad[:5])}"
                             f"{' ...' if len(bad) > 5 else ''}; the training diverged, and such a checkpoint "
                             "would not load")
        state = None
        if model._train_state is not None:
            state = {k: (list(v) if k == "history" else v) for k, v in model._train_state.items()}
        save_checkpoint(path, config=cfg, tensors={n: params[n] for n in model._names}, optimizer=opt,
                        trainer_state=state, tokenizer=model.tokenizer)


def load_model(path: PathLike, kinds: Mapping[str, type], want: Optional[type], device: str,
               precision: Optional[str]) -> Any:
    """The model of the checkpoint directory ``path``, built as the class
    ``kinds`` maps its ``model_type`` to (which must be ``want`` unless that is
    None) on ``device`` in ``precision`` (both checked by the caller; precision
    None: the checkpoint's). See :meth:`fastlm.lm.LanguageModel.load`."""
    ckpt = load_checkpoint(path)
    cfg = ckpt.config
    cpath = os.path.join(ckpt.path, CONFIG_FILE)
    mt = cfg.get("model_type", "transformer")
    if not isinstance(mt, str) or mt not in kinds:
        hint = "; a Hugging Face GPT-2 directory loads with Transformer.from_pretrained" if mt == "gpt2" else ""
        raise ValueError(f"checkpoint file {cpath!r}: unknown model_type {mt!r} (expected one of "
                         f"{sorted(kinds)}){hint}")
    if want is not None and kinds[mt] is not want:
        raise ValueError(f"checkpoint file {cpath!r}: model_type {mt!r} is not {want.MODEL_TYPE!r}")
    kind = kinds[mt]
    try:
        arch = {k: cfg[k] if k in cfg or k not in kind.ARCH_DEFAULTS else kind.ARCH_DEFAULTS[k]
                for k in kind.ARCH_KEYS}
    except KeyError as e:
        raise ValueError(f"checkpoint file {cpath!r} has no {e.args[0]!r} entry") from None
    if precision is None:
        precision = cfg.get("precision", "fp32")
        if precision == "bf16" and _C.cpu_isa() != "avx512bf16":
            raise ValueError(f"checkpoint file {cpath!r}: the model runs in precision 'bf16', which needs the "
                             f"avx512bf16 CPU ISA (AVX512_BF16; the active CPU ISA is {_C.cpu_isa()!r}); "
                             "load it with precision='fp32'")
    model = kind.__new__(kind)
    try:
        arch = model._check_arch(**arch)
        # config.json's sizes must be those of the weights before _build allocates them.
        diff = _sizes_disagree(kind, arch, ckpt.tensors)
        if not diff:
            model._build(arch, cfg.get("seed", 0), device, None, precision)
            for k, default in kind.OPTIONS.items():
                model._config[k] = model._check_option(k, cfg.get(k, default))
    except (TypeError, ValueError) as e:
        raise ValueError(f"checkpoint file {cpath!r} holds an invalid configuration: {e}") from None
    if diff:
        raise ValueError(f"checkpoint file {cpath!r} does not match {os.path.join(ckpt.path, MODEL_FILE)!r}: "
                         f"{'; '.join(diff)}")
    model._restore(ckpt)
    return model


def restore_model(model: Any, ckpt: Any) -> None:
    """Load weights, tokenizer, optimizer and trainer state from a
    :class:`fastlm.checkpoint.Checkpoint` of the same architecture."""
    cfg = ckpt.config
    diff = [f"{k}: checkpoint {cfg.get(k, model.ARCH_DEFAULTS.get(k))!r}, model {model._config[k]!r}"
            for k in model.ARCH_KEYS if cfg.get(k, model.ARCH_DEFAULTS.get(k)) != model._config[k]]
    if cfg.get("model_type", "transformer") != model.MODEL_TYPE:
        diff.insert(0, f"model_type: checkpoint {cfg.get('model_type')!r}, model {model.MODEL_TYPE!r}")
    if diff:
        raise ValueError(f"checkpoint {ckpt.path!r} has another architecture than this model ({'; '.join(diff)})")
    tok = ckpt.tokenizer
    if tok is not None and tok.vocab_size > model._config["vocab_size"]:
        raise ValueError(f"checkpoint file {os.path.join(ckpt.path, TOKENIZER_FILE)!r}: tokenizer vocab_size "
                         f"{tok.vocab_size} exceeds the model's {model._config['vocab_size']}")
    state = ckpt.trainer_state
    spath = os.path.join(ckpt.path, TRAINER_STATE_FILE)
    if state is not None:
        def count(key: str) -> bool:  # absent, or an int in [0, 2**63)
            v = state.get(key, 0)
            return not isinstance(v, bool) and isinstance(v, int) and 0 <= v < 2**63
        history = state.get("history", [])
        if not all(count(k) for k in ("step", "stream_pos", "seed", "dropout_calls")) \
                or not isinstance(history, list) or not all(_history_entry(e) for e in history) \
                or not isinstance(state.get("data_rng"), (dict, type(None))) \
                or not isinstance(state.get("best_val_loss"), (int, float, type(None))) \
                or isinstance(state.get("best_val_loss"), bool):
            raise ValueError(f"checkpoint file {spath!r} is corrupt: bad 'step', 'stream_pos', 'seed', 'dropout_calls', "
                             "'history' (a list of steps with 'step' and 'loss'), 'data_rng' or 'best_val_loss'")
        try:
            _check_fit_record(state.get("fit", {}))
        except (TypeError, ValueError) as e:
            raise ValueError(f"checkpoint file {spath!r} is corrupt: bad 'fit' settings ({e})") from None
    opt = ckpt.optimizer
    if opt is not None:
        opath = os.path.join(ckpt.path, OPTIMIZER_FILE)
        for key in ("exp_avg", "exp_avg_sq"):
            names = opt[key]
            if set(names) != set(model._names):
                raise ValueError(f"checkpoint file {opath!r} does not match the model: "
                                 f"{key} entries differ in {sorted(set(names) ^ set(model._names))[:5]}")
            bad = [n for n in model._names if names[n].shape != model._shapes[n]]
            if bad:
                raise ValueError(f"checkpoint file {opath!r}: {key} has wrong shapes for {bad[:5]}")
            bad = nonfinite(names)
            if key == "exp_avg_sq":  # Adam's second moments; SGD leaves them 0
                bad += [n for n in model._names if n not in bad and (names[n] < 0).any()]
            if bad:
                raise ValueError(f"checkpoint file {opath!r} is corrupt: {key} holds NaN, inf"
                                 f"{' or negative values' if key == 'exp_avg_sq' else ''} in {bad[:5]}")
        bad = nonfinite(opt.get("recurrent_state") or {})
        if bad:
            raise ValueError(f"checkpoint file {opath!r} is corrupt: recurrent_state holds NaN or inf in {bad}")
    try:
        model.load_state_dict(ckpt.tensors)
    except (TypeError, ValueError) as e:
        raise ValueError(f"checkpoint file {os.path.join(ckpt.path, MODEL_FILE)!r}: {e}") from None
    if opt is not None:
        model._tensors.write("adam_m", {n: opt["exp_avg"][n] for n in model._names})
        model._tensors.write("adam_v", {n: opt["exp_avg_sq"][n] for n in model._names})
        model._g.step_count = int(opt["step"])
        model._opt_family = opt.get("optimizer", "adam")
        model._restore_optimizer_extras(opt)
    else:
        model._m_v_zero()
        model._restore_optimizer_extras({})
    if tok is not None:
        model.tokenizer = tok
    model._train_state = dict(state) if state is not None else None
    if model._train_state is not None:
        model._train_state.pop("format_version", None)
    model._dropout_calls = int((state or {}).get("dropout_calls", 0))
    model._cache_owner = None

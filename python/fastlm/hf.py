"""Hugging Face GPT-2 directories in and out (``Transformer.from_pretrained``,
``Transformer.save_pretrained``).

A Hugging Face GPT-2 directory holds ``config.json`` (``model_type`` "gpt2")
and ``model.safetensors`` (or shards listed in ``model.safetensors.index.json``),
optionally with tokenizer files. Its weights differ from nanoGPT's (fastlm's)
in two ways only: the four projections are ``Conv1D`` layers stored (in, out),
the transpose of a Linear's (out, in): ``attn.c_attn``, ``attn.c_proj``,
``mlp.c_fc`` and ``mlp.c_proj``; and ``GPT2Model`` checkpoints name tensors
without the ``transformer.`` prefix. Which tensors are transposed follows from
their names, never from their shapes (``attn.c_proj`` is square).

Only safetensors are read: a directory with PyTorch pickles alone
(``pytorch_model.bin``) is refused, since unpickling can run code. Nothing is
downloaded; paths are local. Every problem raises one error naming the file
and the field, before any model is built.

This module converts formats and knows nothing of the model classes:
:mod:`fastlm.model` builds the model from what :func:`read_pretrained` returns.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import numpy as np

from ._io import atomic_open, atomic_write

__all__ = ["read_pretrained", "write_pretrained", "is_pretrained_dir", "load_pretrained_tokenizer"]

PathLike = Union[str, "os.PathLike[str]"]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PICKLE_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack")
# Hugging Face activation name -> fastlm's (Transformer's activation_function).
_ACTIVATIONS = {"gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_new", "gelu": "gelu"}
# Stored (in, out) by Conv1D: transposed on the way in and out.
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Buffers older transformers versions saved beside the weights (the causal mask).
_BUFFER = re.compile(r"transformer\.h\.\d+\.attn\.(bias|masked_bias)")
_PREFIX = "transformer."


def _fail(path: str, field: str, problem: str) -> ValueError:
    return ValueError(f"{path!r}: {field}: {problem}")


def is_pretrained_dir(path: PathLike) -> bool:
    """Whether ``path`` is a directory whose ``config.json`` says ``model_type`` "gpt2"."""
    cfg = os.path.join(os.fspath(path), CONFIG_FILE)
    try:
        with open(cfg, "rb") as f:
            return json.loads(f.read().decode("utf-8")).get("model_type") == "gpt2"
    except (OSError, ValueError, AttributeError):
        return False


def _read_config(path: str) -> Dict[str, Any]:
    """Transformer keyword arguments from a GPT-2 ``config.json``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"from_pretrained: no {CONFIG_FILE} in {os.path.dirname(path)!r}")
    try:
        with open(path, "rb") as f:
            cfg = json.loads(f.read().decode("utf-8"))
    except (ValueError, RecursionError) as e:
        raise ValueError(f"{path!r} is not valid JSON ({type(e).__name__}: {e})") from None
    if not isinstance(cfg, dict):
        raise _fail(path, "config", f"must be a JSON object, got {type(cfg).__name__}")
    mt = cfg.get("model_type")
    if mt != "gpt2":
        raise _fail(path, "model_type", f"{mt!r} is not supported (only 'gpt2')")

    def integer(field: str, *alt: str) -> int:
        for name in (field,) + alt:
            if name in cfg:
                v = cfg[name]
                if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                    raise _fail(path, name, f"must be an integer >= 1, got {v!r}")
                return v
        raise _fail(path, field, "is missing")

    def flag(field: str, default: bool) -> bool:
        v = cfg.get(field, default)
        if not isinstance(v, bool):
            raise _fail(path, field, f"must be true or false, got {v!r}")
        return v

    n_embd = integer("n_embd")
    args: Dict[str, Any] = {"vocab_size": integer("vocab_size"), "block_size": integer("n_positions", "n_ctx"),
                            "n_layer": integer("n_layer"), "n_head": integer("n_head"), "n_embd": n_embd}
    if n_embd % args["n_head"]:
        raise _fail(path, "n_head", f"{args['n_head']} does not divide n_embd {n_embd}")
    act = cfg.get("activation_function", "gelu_new")
    if act not in _ACTIVATIONS:
        raise _fail(path, "activation_function", f"{act!r} is not supported (one of {sorted(_ACTIVATIONS)})")
    args["activation_function"] = _ACTIVATIONS[act]
    eps = cfg.get("layer_norm_epsilon", 1e-5)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 1e-38 <= eps <= 1:
        raise _fail(path, "layer_norm_epsilon", f"must be a number in [1e-38, 1], got {eps!r}")
    args["layer_norm_epsilon"] = float(eps)
    args["tie_word_embeddings"] = flag("tie_word_embeddings", True)
    args["bias"] = True  # GPT-2 always has biases; a bias-free model is saved with zeros
    n_inner = cfg.get("n_inner")
    if n_inner is not None and n_inner != 4 * n_embd:
        raise _fail(path, "n_inner", f"{n_inner!r} is not supported (only 4 * n_embd = {4 * n_embd})")
    for field, want in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                        ("add_cross_attention", False)):
        if flag(field, want) != want:
            raise _fail(path, field, f"only {str(want).lower()} is supported")
    return args


def _expected(args: Mapping[str, Any]) -> Dict[str, Tuple[int, ...]]:
    """Hugging Face names (with the prefix) -> shapes in Hugging Face's layout."""
    V, T, C = args["vocab_size"], args["block_size"], args["n_embd"]
    shapes = {"transformer.wte.weight": (V, C), "transformer.wpe.weight": (T, C)}
    for i in range(args["n_layer"]):
        p = f"transformer.h.{i}."
        shapes.update({p + "ln_1.weight": (C,), p + "ln_1.bias": (C,), p + "attn.c_attn.weight": (C, 3 * C),
                       p + "attn.c_attn.bias": (3 * C,), p + "attn.c_proj.weight": (C, C),
                       p + "attn.c_proj.bias": (C,), p + "ln_2.weight": (C,), p + "ln_2.bias": (C,),
                       p + "mlp.c_fc.weight": (C, 4 * C), p + "mlp.c_fc.bias": (4 * C,),
                       p + "mlp.c_proj.weight": (4 * C, C), p + "mlp.c_proj.bias": (C,)})
    shapes.update({"transformer.ln_f.weight": (C,), "transformer.ln_f.bias": (C,), "lm_head.weight": (V, C)})
    return shapes


def _weight_files(d: str) -> list:
    single, index = os.path.join(d, WEIGHTS_FILE), os.path.join(d, INDEX_FILE)
    if os.path.isfile(single):
        return [single]
    if os.path.isfile(index):
        try:
            with open(index, "rb") as f:
                weight_map = json.loads(f.read().decode("utf-8"))["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (ValueError, RecursionError, KeyError, TypeError, AttributeError) as e:
            raise _fail(index, "weight_map", f"is missing or corrupt ({type(e).__name__}: {e})") from None
        for s in shards:
            if not isinstance(s, str) or os.path.basename(s) != s:
                raise _fail(index, "weight_map", f"names a file outside the directory: {s!r}")
        return [os.path.join(d, s) for s in shards]
    pickles = [f for f in PICKLE_FILES if os.path.exists(os.path.join(d, f))]
    if pickles:
        raise ValueError(f"from_pretrained: {d!r} holds {', '.join(pickles)} but no {WEIGHTS_FILE}: fastlm reads "
                         "only safetensors (pickles can run code). Convert it once with transformers: "
                         "GPT2LMHeadModel.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)")
    raise FileNotFoundError(f"from_pretrained: no {WEIGHTS_FILE} in {d!r}")


def _read_tensors(files: list) -> Dict[str, Tuple[np.ndarray, str]]:
    """name -> (float32 array, file), names given the ``transformer.`` prefix."""
    try:
        from safetensors import safe_open
    except ImportError:  # pragma: no cover - a declared dependency
        raise ImportError("from_pretrained needs the 'safetensors' package (pip install safetensors)") from None
    out: Dict[str, Tuple[np.ndarray, str]] = {}
    for path in files:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"from_pretrained: weight file {path!r} is missing")
        try:
            with safe_open(path, framework="np") as f:
                for k in f.keys():
                    arr = np.asarray(f.get_tensor(k))
                    name = k if k.startswith(_PREFIX) or k == "lm_head.weight" else _PREFIX + k
                    out[name] = (arr, path)
        except Exception as e:  # SafetensorError, OSError from a short read, a dtype numpy lacks
            raise ValueError(f"{path!r} is corrupt, truncated or not readable as float tensors "
                             f"({type(e).__name__}: {e})") from None
    return out


def read_pretrained(path: PathLike) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
    """Read a local Hugging Face GPT-2 directory.

    Returns (Transformer keyword arguments, state_dict in fastlm's names and
    layouts: float32, Linear weights (out, in), ``lm_head.weight`` only when
    untied). Raises ``FileNotFoundError`` for a missing directory, config or
    weights and ``ValueError`` naming the file and the field for anything
    else (unknown ``model_type``, unsupported options, missing, unexpected or
    mis-shaped tensors, a tied ``lm_head.weight`` that differs from ``wte``,
    non-float dtypes, pickles only).
    """
    d = os.fspath(path)
    if not os.path.isdir(d):
        raise FileNotFoundError(f"from_pretrained: {d!r} is not a directory (a Hugging Face model directory; "
                                "nothing is downloaded)")
    args = _read_config(os.path.join(d, CONFIG_FILE))
    tensors = _read_tensors(_weight_files(d))
    expected = _expected(args)
    tied = args["tie_word_embeddings"]
    problems = []
    unexpected = [k for k in tensors if k not in expected and not _BUFFER.fullmatch(k)]
    if unexpected:
        problems.append(f"unexpected tensors {unexpected[:8]}")
    missing = [k for k in expected if k not in tensors and not (tied and k == "lm_head.weight")]
    if missing:
        problems.append(f"missing tensors {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    for k, want in expected.items():
        if k in tensors and tensors[k][0].shape != want:
            problems.append(f"{k} has shape {tensors[k][0].shape}, expected {want} (Conv1D layout (in, out))")
    if any("has shape" in p for p in problems):
        problems.append(f"config.json says vocab_size={args['vocab_size']}, n_positions={args['block_size']}, "
                        f"n_embd={args['n_embd']}")
    for k, (arr, _) in tensors.items():
        if k in expected and arr.dtype.kind != "f":
            problems.append(f"{k} has dtype {arr.dtype}, expected a float type")
        elif k in expected and not np.isfinite(arr).all():
            problems.append(f"{k} holds non-finite values (NaN or inf)")
    if problems:
        where = sorted({tensors[k][1] for k in tensors}) or [os.path.join(d, WEIGHTS_FILE)]
        raise ValueError(f"{where[0] if len(where) == 1 else where!r} does not match {os.path.join(d, CONFIG_FILE)!r}: "
                         + "; ".join(problems))
    sd: Dict[str, np.ndarray] = {}
    for k in expected:
        if k not in tensors:
            continue
        arr = tensors[k][0].astype(np.float32)
        sd[k] = np.ascontiguousarray(arr.T) if k.endswith(_CONV1D) else arr
    if tied and "lm_head.weight" in sd:
        if not np.array_equal(sd.pop("lm_head.weight"), sd["transformer.wte.weight"]):
            raise _fail(tensors["lm_head.weight"][1], "lm_head.weight",
                        "differs from transformer.wte.weight, but config.json ties them (tie_word_embeddings)")
    return args, sd


def load_pretrained_tokenizer(path: PathLike) -> Optional[Any]:
    """The BPE tokenizer of a Hugging Face directory (``tokenizer.json``, or
    ``vocab.json`` + ``merges.txt``), or None when it has none or this fastlm
    has no BPE tokenizer. A corrupt one raises ``ValueError`` naming it."""
    d = os.fspath(path)
    files = [f for f in ("tokenizer.json", "vocab.json") if os.path.isfile(os.path.join(d, f))]
    if not files:
        return None
    try:
        from .bpe import BPETokenizer  # type: ignore[import-not-found]
    except ImportError:  # a fastlm without BPE, or without the tokenizers library
        return None
    try:
        return BPETokenizer.from_pretrained(d)
    except (TypeError, ValueError, KeyError, OSError) as e:
        raise ValueError(f"{os.path.join(d, files[0])!r}: tokenizer: cannot be loaded ({e})") from None


def write_pretrained(path: PathLike, config: Mapping[str, Any], state_dict: Mapping[str, np.ndarray],
                     *, eos_token_id: Optional[int] = None) -> None:
    """Write ``config.json`` and ``model.safetensors`` for
    ``transformers.GPT2LMHeadModel.from_pretrained``.

    config: a Transformer's ``config``; state_dict: its :meth:`state_dict`
    (fastlm names and layouts). Conv1D weights are transposed; a bias-free
    model gets zero biases (GPT-2 has no bias-free form, and zeros are the
    same function); a tied ``lm_head.weight`` is left out, as transformers
    does. Each file is replaced atomically; other files in ``path`` stay.
    """
    try:
        import safetensors.numpy as stn
    except ImportError:  # pragma: no cover - a declared dependency
        raise ImportError("save_pretrained needs the 'safetensors' package (pip install safetensors)") from None
    d = os.fspath(path)
    if os.path.lexists(d) and not os.path.isdir(d):
        raise NotADirectoryError(f"save_pretrained: {d!r} exists and is not a directory")
    args = {"vocab_size": config["vocab_size"], "block_size": config["block_size"], "n_layer": config["n_layer"],
            "n_head": config["n_head"], "n_embd": config["n_embd"]}
    tied = bool(config["tie_word_embeddings"])
    tensors: Dict[str, np.ndarray] = {}
    for k, shape in _expected(args).items():
        if k == "lm_head.weight" and tied:
            continue
        if k in state_dict:
            arr = np.asarray(state_dict[k], dtype=np.float32)
            tensors[k] = np.ascontiguousarray(arr.T if k.endswith(_CONV1D) else arr)
        elif k.endswith(".bias") and not config["bias"]:
            tensors[k] = np.zeros(shape, np.float32)
        else:
            raise ValueError(f"save_pretrained: the state_dict has no {k!r}")
    hf_config = {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": args["vocab_size"], "n_positions": args["block_size"], "n_ctx": args["block_size"],
        "n_embd": args["n_embd"], "n_layer": args["n_layer"], "n_head": args["n_head"], "n_inner": None,
        "activation_function": config["activation_function"],
        "layer_norm_epsilon": config["layer_norm_epsilon"], "tie_word_embeddings": tied,
        # fastlm trains without dropout; the same here keeps fine-tuning comparable.
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "initializer_range": 0.02,
        "scale_attn_weights": True, "use_cache": True, "torch_dtype": "float32",
    }
    # GPT2Config's defaults (50256) would name ids outside a smaller vocabulary.
    eos = None if eos_token_id is None else int(eos_token_id)
    hf_config["bos_token_id"] = hf_config["eos_token_id"] = eos
    os.makedirs(d, exist_ok=True)
    # transformers refuses safetensors files without format "pt".
    with atomic_open(os.path.join(d, WEIGHTS_FILE), "wb") as f:
        f.write(stn.save(tensors, metadata={"format": "pt"}))
    atomic_write(os.path.join(d, CONFIG_FILE), json.dumps(hf_config, indent=2) + "\n")

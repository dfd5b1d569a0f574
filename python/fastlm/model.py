"""``fastlm.Transformer``: a GPT-2 model trained and sampled by the C++ core.

The network is exactly GPT-2 (nanoGPT's ``model.py`` without dropout), so
weights move to and from PyTorch by name: token + learned position
embeddings, ``n_layer`` pre-LayerNorm blocks (causal multi-head attention
with a fused ``c_attn`` and an output ``c_proj``; an MLP ``c_fc`` ->
tanh-GELU -> ``c_proj``), a final LayerNorm and an output head tied to the
token embedding. The parameters, gradients and AdamW moments each live in one
contiguous float32 buffer inside ``fastlm._C.GPT``; a training step is one
call into C++.
"""
from __future__ import annotations

import math
import os
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from . import _C
from .tokenizers import Tokenizer

__all__ = ["Transformer"]

PathLike = Union[str, "os.PathLike[str]"]
IdsLike = Union[np.ndarray, Sequence[int], Sequence[Sequence[int]]]

MODEL_TYPE = "transformer"
_ARCH_KEYS = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")
_LN_WEIGHTS = (".ln_1.weight", ".ln_2.weight", "ln_f.weight")


# ----------------------------------------------------------------------- checks

def _check_int(v: Any, name: str, minimum: Optional[int] = None, maximum: Optional[int] = None) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    v = int(v)
    if minimum is not None and v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    if maximum is not None and v > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {v}")
    return v


def _check_float(v: Any, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(v).__name__}")
    f = float(v)
    if not math.isfinite(f):
        raise ValueError(f"{name} must be finite, got {v!r}")
    return f


def _check_device(device: Any) -> str:
    """The canonical device name; ``RuntimeError`` for CUDA (not available yet),
    ``ValueError`` for anything else that is not ``"cpu"``."""
    if not isinstance(device, str):
        raise TypeError(f"device must be a str such as 'cpu', got {type(device).__name__}")
    d = device.strip().lower()
    if d == "cpu":
        return "cpu"
    if d == "cuda" or d.startswith("cuda:"):
        if not _C.build_info().get("cuda", False):
            raise RuntimeError(f"device {device!r}: CUDA is not compiled into this fastlm build "
                               "(fastlm.build_info()['cuda'] is False); use device='cpu'")
        raise RuntimeError(f"device {device!r}: the Transformer has no CUDA backend yet; use device='cpu'")
    raise ValueError(f"unknown device {device!r}; expected 'cpu' (or 'cuda' where compiled in)")


def _as_ids(x: Any, name: str, vocab_size: int, *, ndim: Optional[int] = 2,
            ignore_index: Optional[int] = None) -> np.ndarray:
    """``x`` as a C-contiguous int64 array with every entry in ``[0, vocab_size)``
    (or equal to ``ignore_index``). Lists and CPU tensors are accepted."""
    if isinstance(x, (str, bytes, bytearray)):
        raise TypeError(f"{name} must be an integer array, got {type(x).__name__}")
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor
        x = x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray):
        try:
            x = np.asarray(x)
        except (ValueError, TypeError) as e:
            raise TypeError(f"{name} must be a rectangular integer array ({e})") from None
        if x.dtype == object:
            raise TypeError(f"{name} must be a rectangular integer array, got ragged or non-integer data")
        if x.size == 0 and x.dtype.kind == "f":
            x = x.astype(np.int64)
    if x.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer array (int32/int64), got dtype {x.dtype}")
    if ndim is not None and x.ndim != ndim:
        hint = " (a batch of sequences (B, T); use x[None] for one sequence)" if ndim == 2 and x.ndim == 1 else ""
        raise ValueError(f"{name} must be {ndim}-D, got shape {x.shape}{hint}")
    if x.size:
        bad = (x < 0) | (x >= vocab_size)
        if ignore_index is not None:
            bad &= x != ignore_index
        if bad.any():
            pos = tuple(int(i) for i in np.argwhere(bad)[0])
            allowed = f"[0, {vocab_size})" + (f" or {ignore_index}" if ignore_index is not None else "")
            raise ValueError(f"{name}{list(pos)} = {int(x[pos])} is out of range {allowed}")
    return np.ascontiguousarray(x, dtype=np.int64)


def param_names(n_layer: int) -> List[str]:
    """nanoGPT's parameter names in its order, without the tied ``lm_head.weight``."""
    names = ["transformer.wte.weight", "transformer.wpe.weight"]
    for i in range(n_layer):
        p = f"transformer.h.{i}."
        names += [p + "ln_1.weight", p + "ln_1.bias", p + "attn.c_attn.weight", p + "attn.c_attn.bias",
                  p + "attn.c_proj.weight", p + "attn.c_proj.bias", p + "ln_2.weight", p + "ln_2.bias",
                  p + "mlp.c_fc.weight", p + "mlp.c_fc.bias", p + "mlp.c_proj.weight", p + "mlp.c_proj.bias"]
    return names + ["transformer.ln_f.weight", "transformer.ln_f.bias"]


def _to_float32(v: Any, name: str) -> np.ndarray:
    if hasattr(v, "detach") and hasattr(v, "cpu"):  # torch tensors, any float dtype
        v = v.detach().cpu().float().numpy()
    try:
        arr = np.asarray(v)
    except Exception as e:
        raise TypeError(f"state_dict[{name!r}] is not an array ({type(e).__name__}: {e})") from None
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"state_dict[{name!r}] must be a numeric array, got dtype {arr.dtype}")
    return np.asarray(arr, dtype=np.float32)


def _buffer_views(g: Any, tensors: Mapping[str, np.ndarray]) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]:
    """Views of the AdamW moment buffers shaped and named like the parameters,
    found from each parameter's offset in the flat parameter buffer (so the
    checkpoint format does not depend on the C++ buffer layout)."""
    flat = g.flat_params()
    base = flat.__array_interface__["data"][0]
    m, v = g.adam_m(), g.adam_v()
    mv: Dict[str, np.ndarray] = {}
    vv: Dict[str, np.ndarray] = {}
    for name, t in tensors.items():
        off_bytes = t.__array_interface__["data"][0] - base
        off = off_bytes // 4
        if off_bytes % 4 or off < 0 or off + t.size > flat.size or not t.flags.c_contiguous:
            raise RuntimeError(f"_C.GPT: tensor {name!r} is not a contiguous view of flat_params()")
        mv[name] = m[off:off + t.size].reshape(t.shape)
        vv[name] = v[off:off + t.size].reshape(t.shape)
    return mv, vv


# ---------------------------------------------------------------------- the model

class Transformer:
    """A GPT-2 language model (nanoGPT names and layout) on fastlm's kernels.

    Parameters
    ----------
    vocab_size: number of token ids (>= 1); ids lie in ``[0, vocab_size)``.
    block_size: longest context, in tokens (>= 1).
    n_layer, n_head, n_embd: depth, attention heads, width; ``n_embd`` must be
        divisible by ``n_head``.
    seed: seeds the GPT-2 initialisation (``np.random.default_rng(seed)``):
        weights normal(0, 0.02), the residual projections (``c_proj``)
        normal(0, 0.02/sqrt(2*n_layer)), biases 0, LayerNorm weights 1. Also the
        default seed of :meth:`fit`'s batch sampler.
    device: ``"cpu"``. ``"cuda"`` raises ``RuntimeError`` (not available in this
        build); any other name ``ValueError``.
    tokenizer: an optional :class:`fastlm.tokenizers.Tokenizer` kept with the
        model (saved in checkpoints, used for str prompts); its ``vocab_size``
        must not exceed ``vocab_size``.

    Arrays: ids are integer arrays (B, T) with T <= block_size (converted to
    int64); logits and parameters are float32. A model is not thread-safe.

    Example::

        tok = CharTokenizer.from_text(text)
        model = Transformer(tok.vocab_size, block_size=64, n_layer=4, n_head=4, n_embd=128, tokenizer=tok)
        train, val = train_val_split(tok.encode(text))
        model.fit(train, val=val, steps=2000, batch_size=12)
        print(tok.decode(model.generate(tok.encode("\\n"), 200, top_k=40)))
    """

    def __init__(self, vocab_size: int, *, block_size: int = 256, n_layer: int = 6, n_head: int = 6,
                 n_embd: int = 384, seed: int = 0, device: str = "cpu",
                 tokenizer: Optional[Tokenizer] = None) -> None:
        self._build(vocab_size, block_size, n_layer, n_head, n_embd, seed, device, tokenizer)
        self._init_weights()

    # -- construction

    def _build(self, vocab_size: Any, block_size: Any, n_layer: Any, n_head: Any, n_embd: Any, seed: Any,
               device: Any, tokenizer: Any) -> None:
        vocab_size = _check_int(vocab_size, "vocab_size", 1)
        block_size = _check_int(block_size, "block_size", 1)
        n_layer = _check_int(n_layer, "n_layer", 1)
        n_head = _check_int(n_head, "n_head", 1)
        n_embd = _check_int(n_embd, "n_embd", 1)
        if n_embd % n_head:
            raise ValueError(f"n_embd ({n_embd}) must be divisible by n_head ({n_head})")
        seed = _check_int(seed, "seed", 0)
        device = _check_device(device)
        if tokenizer is not None:
            if not isinstance(tokenizer, Tokenizer):
                raise TypeError("tokenizer must be a fastlm.tokenizers.Tokenizer (CharTokenizer, ByteTokenizer) "
                                f"or None, got {type(tokenizer).__name__}")
            if tokenizer.vocab_size > vocab_size:
                raise ValueError(f"tokenizer.vocab_size ({tokenizer.vocab_size}) exceeds vocab_size ({vocab_size})")
        self._config: Dict[str, Any] = {"vocab_size": vocab_size, "block_size": block_size, "n_layer": n_layer,
                                        "n_head": n_head, "n_embd": n_embd, "seed": seed, "device": device}
        self.tokenizer: Optional[Tokenizer] = tokenizer
        self._g = _C.GPT(vocab_size, block_size, n_layer, n_head, n_embd)
        self._names = param_names(n_layer)
        self._params = dict(self._g.tensors())
        self._grads = dict(self._g.grad_tensors())
        if set(self._params) != set(self._names) or set(self._grads) != set(self._names):
            raise RuntimeError("_C.GPT.tensors() names do not match nanoGPT's: "
                               f"{sorted(set(self._params) ^ set(self._names))}")
        self._m, self._v = _buffer_views(self._g, self._params)
        self._shapes = {n: tuple(self._params[n].shape) for n in self._names}
        # Fit progress: {"step", "data_rng", "history", "fit"} (see fastlm.train), or None.
        self._train_state: Optional[Dict[str, Any]] = None
        # Who last filled the KV cache (a generate() call); any other use of the
        # C++ model may reuse its buffers, so it resets this to None.
        self._cache_owner: Optional[object] = None

    def _init_weights(self) -> None:
        n_layer = self._config["n_layer"]
        rng = np.random.default_rng(self._config["seed"])
        std = np.float32(0.02)
        proj_std = np.float32(0.02 / math.sqrt(2 * n_layer))
        for name in self._names:
            p = self._params[name]
            if name.endswith(_LN_WEIGHTS):
                p[...] = 1.0
            elif name.endswith(".bias"):
                p[...] = 0.0
            else:
                s = proj_std if name.endswith(".c_proj.weight") else std
                p[...] = rng.standard_normal(p.shape, dtype=np.float32) * s

    # -- description

    @property
    def config(self) -> Dict[str, Any]:
        """``{"vocab_size", "block_size", "n_layer", "n_head", "n_embd", "seed",
        "device"}`` (a copy); ``Transformer(**model.config)`` builds the same
        architecture."""
        return dict(self._config)

    @property
    def block_size(self) -> int:
        """Longest context in tokens."""
        return self._config["block_size"]

    @property
    def vocab_size(self) -> int:
        """Number of token ids."""
        return self._config["vocab_size"]

    def num_parameters(self, *, exclude_embeddings: bool = False) -> int:
        """Number of parameters, counting the tied embedding/output head once.
        ``exclude_embeddings`` leaves out ``wte`` and ``wpe``."""
        n = int(self._g.num_parameters())
        if exclude_embeddings:
            n -= self._params["transformer.wte.weight"].size + self._params["transformer.wpe.weight"].size
        return n

    @property
    def history(self) -> "Any":
        """The :class:`fastlm.train.History` of the last :meth:`fit` (restored by
        :meth:`load` and ``fit(resume=True)``); empty before any training."""
        from .train import History
        if self._train_state is None:
            return History()
        return History(self._train_state.get("history", []))

    def __repr__(self) -> str:
        c = self._config
        return (f"Transformer(vocab_size={c['vocab_size']}, block_size={c['block_size']}, n_layer={c['n_layer']}, "
                f"n_head={c['n_head']}, n_embd={c['n_embd']}; {self.num_parameters() / 1e6:.2f}M parameters)")

    # -- weights

    def state_dict(self) -> Dict[str, np.ndarray]:
        """Copies of the parameters by nanoGPT name, float32, PyTorch Linear
        layout (out, in), in nanoGPT's order, ending with ``lm_head.weight``
        (a copy of ``transformer.wte.weight``: the two are tied)."""
        sd = {n: self._params[n].copy() for n in self._names}
        sd["lm_head.weight"] = sd["transformer.wte.weight"].copy()
        return sd

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Copy parameters in from ``state_dict`` (NumPy arrays or CPU torch
        tensors by nanoGPT name; converted to float32).

        Every name of :meth:`state_dict` must be present except
        ``lm_head.weight``, which may be left out but, when given, must equal
        ``transformer.wte.weight`` (they are one tied tensor). Raises
        ``ValueError`` listing every missing, unexpected and mis-shaped entry,
        or naming entries with NaN/inf; ``TypeError`` for a non-mapping or a
        non-numeric entry. Nothing is changed unless everything is valid. The
        optimizer state is left as it is.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a mapping of name -> array, got {type(state_dict).__name__}")
        missing = [n for n in self._names if n not in state_dict]
        unexpected = [repr(k) for k in state_dict if k not in self._shapes and k != "lm_head.weight"]
        arrays: Dict[str, np.ndarray] = {}
        shapes: List[str] = []
        for name in self._names + ["lm_head.weight"]:
            if name not in state_dict:
                continue
            arr = _to_float32(state_dict[name], name)
            want = self._shapes["transformer.wte.weight" if name == "lm_head.weight" else name]
            if arr.shape != want:
                shapes.append(f"{name}: got {arr.shape}, expected {want}")
            arrays[name] = arr
        problems = []
        if missing:
            problems.append(f"missing keys: {', '.join(missing)}")
        if unexpected:
            problems.append(f"unexpected keys: {', '.join(unexpected)}")
        if shapes:
            problems.append(f"shape mismatches: {'; '.join(shapes)}")
        if problems:
            raise ValueError("load_state_dict: " + " | ".join(problems))
        nonfinite = [n for n, a in arrays.items() if not np.isfinite(a).all()]
        if nonfinite:
            raise ValueError(f"load_state_dict: non-finite values (NaN or inf) in {', '.join(nonfinite)}")
        if "lm_head.weight" in arrays and not np.array_equal(arrays["lm_head.weight"],
                                                             arrays["transformer.wte.weight"]):
            raise ValueError("load_state_dict: lm_head.weight differs from transformer.wte.weight, but the output "
                             "head is tied to the token embedding (leave lm_head.weight out or make them equal)")
        for name in self._names:
            self._params[name][...] = arrays[name]
        self._cache_owner = None

    # -- training primitives

    def _ids(self, idx: Any, name: str = "idx", ignore_index: Optional[int] = None) -> np.ndarray:
        x = _as_ids(idx, name, self._config["vocab_size"], ndim=2, ignore_index=ignore_index)
        B, T = x.shape
        if B < 1 or T < 1:
            raise ValueError(f"{name} must have at least one row and one column, got shape {x.shape}")
        if T > self._config["block_size"]:
            raise ValueError(f"{name} has T = {T} tokens per row, more than block_size = {self._config['block_size']}")
        return x

    def forward(self, idx: IdsLike) -> np.ndarray:
        """Logits for every position.

        idx: integer ids (B, T), 1 <= T <= block_size, each in [0, vocab_size).
        Returns float32 (B, T, vocab_size): row ``[b, t]`` scores the token
        after ``idx[b, :t+1]``. No gradients are kept.
        """
        x = self._ids(idx)
        self._cache_owner = None
        return self._g.forward(x)

    def forward_backward(self, idx: IdsLike, targets: IdsLike) -> float:
        """Mean cross-entropy of ``targets`` given ``idx`` and its gradient.

        idx: integer ids (B, T), T <= block_size; targets: integer (B, T), each in
        [0, vocab_size) or -100 (ignored, as PyTorch's ``ignore_index``).
        Returns the mean loss over the targets not ignored (NaN if all are).
        The gradients are *added* to the gradient buffer, as
        ``loss.backward()`` does in PyTorch: call :meth:`zero_grad` first.
        """
        x = self._ids(idx)
        y = self._ids(targets, "targets", ignore_index=-100)
        if y.shape != x.shape:
            raise ValueError(f"targets shape {y.shape} must equal idx shape {x.shape}")
        self._cache_owner = None
        return float(self._g.forward_backward(x, y, 1.0))

    def gradients(self) -> Dict[str, np.ndarray]:
        """Copies of the accumulated gradients, named as :meth:`state_dict`
        (float32). ``lm_head.weight`` repeats the gradient of the tied
        ``transformer.wte.weight`` (the sum of both uses)."""
        gd = {n: self._grads[n].copy() for n in self._names}
        gd["lm_head.weight"] = gd["transformer.wte.weight"].copy()
        return gd

    def zero_grad(self) -> None:
        """Set every gradient to zero."""
        self._g.zero_grad()

    def grad_norm(self) -> float:
        """Global L2 norm of the gradients (every parameter once)."""
        return float(self._g.grad_norm())

    def step(self, lr: float, *, betas: Tuple[float, float] = (0.9, 0.95), eps: float = 1e-8,
             weight_decay: float = 0.1, grad_scale: float = 1.0) -> None:
        """One AdamW update of every parameter from the current gradients, as
        ``torch.optim.AdamW`` with nanoGPT's groups: weight decay on the 2-D
        weights (Linear weights, ``wte``, ``wpe``), none on biases and
        LayerNorm parameters. ``grad_scale`` multiplies the gradients first
        (clipping by global norm: ``min(1, clip / (grad_norm() + 1e-6))``).
        The gradients are left in place.
        """
        lr = _check_float(lr, "lr")
        if lr < 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        b1, b2 = _check_betas(betas)
        eps = _check_float(eps, "eps")
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        weight_decay = _check_float(weight_decay, "weight_decay")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        grad_scale = _check_float(grad_scale, "grad_scale")
        self._cache_owner = None
        self._g.step(lr, b1, b2, eps, weight_decay, grad_scale)

    @property
    def optimizer_step(self) -> int:
        """Number of AdamW updates applied so far (the bias-correction count)."""
        return int(self._g.step_count)

    # -- high level (fastlm.train, fastlm.sampling)

    def fit(self, train: Any, *, steps: int, batch_size: int, lr: float = 1e-3, warmup_steps: int = 0,
            min_lr: Optional[float] = None, betas: Tuple[float, float] = (0.9, 0.95), weight_decay: float = 0.1,
            grad_clip: Optional[float] = 1.0, grad_accum: int = 1, val: Any = None, eval_interval: int = 250,
            eval_batches: Optional[int] = 50, checkpoint_dir: Optional[PathLike] = None,
            checkpoint_interval: Optional[int] = None, resume: bool = False, seed: Optional[int] = None,
            progress: bool = True, callback: Any = None) -> Any:
        """Train with AdamW on random windows of ``train``; returns the
        :class:`fastlm.train.History`. See :func:`fastlm.train.fit` for every
        argument."""
        from .train import fit
        return fit(self, train, steps=steps, batch_size=batch_size, lr=lr, warmup_steps=warmup_steps,
                   min_lr=min_lr, betas=betas, weight_decay=weight_decay, grad_clip=grad_clip,
                   grad_accum=grad_accum, val=val, eval_interval=eval_interval, eval_batches=eval_batches,
                   checkpoint_dir=checkpoint_dir, checkpoint_interval=checkpoint_interval, resume=resume,
                   seed=seed, progress=progress, callback=callback)

    def evaluate(self, tokens: Any, *, batch_size: int = 16, max_batches: Optional[int] = None) -> Dict[str, float]:
        """Mean next-token loss over ``tokens`` (1-D ids, array, memmap or token
        file path): ``{"loss": float, "perplexity": float}``. See
        :func:`fastlm.train.evaluate`."""
        from .train import evaluate
        return evaluate(self, tokens, batch_size=batch_size, max_batches=max_batches)

    def generate(self, prompt: Union[IdsLike, str], max_new_tokens: int, *, temperature: float = 1.0,
                 top_k: Optional[int] = None, top_p: Optional[float] = None, do_sample: bool = True,
                 seed: Optional[int] = None, eos_token_id: Optional[int] = None,
                 stream: bool = False) -> Union[np.ndarray, Iterator[Any]]:
        """Continue ``prompt`` by ``max_new_tokens`` tokens with the KV cache.

        Returns the prompt followed by the new ids (int64; 1-D for a 1-D
        prompt, (B, T0 + n) for a (B, T0) batch), or with ``stream=True`` an
        iterator over the new ids as they are made. See
        :func:`fastlm.sampling.generate` for every argument.
        """
        from .sampling import generate
        return generate(self, prompt, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                        do_sample=do_sample, seed=seed, eos_token_id=eos_token_id, stream=stream)

    # -- checkpoints

    def _optimizer_state(self) -> Dict[str, Any]:
        return {"step": int(self._g.step_count), "exp_avg": self._m, "exp_avg_sq": self._v}

    def save(self, path: PathLike) -> None:
        """Write a checkpoint directory (see :mod:`fastlm.checkpoint`):
        ``config.json``, ``model.safetensors``, ``tokenizer.json`` when a
        tokenizer is attached, ``optimizer.safetensors`` once the model has
        taken an optimizer step, and ``trainer_state.json`` after :meth:`fit`.
        The directory is replaced atomically; other files in it are kept.
        :meth:`load` gives back a bit-identical model.
        """
        from .checkpoint import save_checkpoint
        cfg = {"model_type": MODEL_TYPE}
        cfg.update({k: self._config[k] for k in _ARCH_KEYS})
        cfg["seed"] = self._config["seed"]
        cfg["fastlm_version"] = str(_C.build_info().get("version", ""))
        opt = self._optimizer_state() if self._g.step_count > 0 else None
        state = None
        if self._train_state is not None:
            state = {k: (list(v) if k == "history" else v) for k, v in self._train_state.items()}
        save_checkpoint(path, config=cfg, tensors={n: self._params[n] for n in self._names}, optimizer=opt,
                        trainer_state=state, tokenizer=self.tokenizer)

    @classmethod
    def load(cls, path: PathLike, *, device: str = "cpu") -> "Transformer":
        """Load a checkpoint directory written by :meth:`save` (or by ``fit``):
        weights, tokenizer, optimizer state and training progress.

        Raises ``FileNotFoundError`` for a missing directory, ``config.json`` or
        ``model.safetensors``; ``ValueError`` naming the file for a truncated,
        corrupt or mismatched one.
        """
        from .checkpoint import CONFIG_FILE, load_checkpoint
        device = _check_device(device)
        ckpt = load_checkpoint(path)
        cfg = ckpt.config
        cpath = os.path.join(ckpt.path, CONFIG_FILE)
        mt = cfg.get("model_type", MODEL_TYPE)
        if mt != MODEL_TYPE:
            raise ValueError(f"checkpoint file {cpath!r}: model_type {mt!r} is not {MODEL_TYPE!r}")
        try:
            args = {k: cfg[k] for k in _ARCH_KEYS}
        except KeyError as e:
            raise ValueError(f"checkpoint file {cpath!r} has no {e.args[0]!r} entry") from None
        model = cls.__new__(cls)
        try:
            model._build(seed=cfg.get("seed", 0), device=device, tokenizer=None, **args)
        except (TypeError, ValueError) as e:
            raise ValueError(f"checkpoint file {cpath!r} holds an invalid configuration: {e}") from None
        model._restore(ckpt)
        return model

    def _restore(self, ckpt: Any) -> None:
        """Load weights, tokenizer, optimizer and trainer state from a
        :class:`fastlm.checkpoint.Checkpoint` of the same architecture."""
        from .checkpoint import MODEL_FILE, OPTIMIZER_FILE, TOKENIZER_FILE, TRAINER_STATE_FILE
        cfg = ckpt.config
        diff = [f"{k}: checkpoint {cfg.get(k)!r}, model {self._config[k]!r}"
                for k in _ARCH_KEYS if cfg.get(k) != self._config[k]]
        if diff:
            raise ValueError(f"checkpoint {ckpt.path!r} has another architecture than this model ({'; '.join(diff)})")
        tok = ckpt.tokenizer
        if tok is not None and tok.vocab_size > self._config["vocab_size"]:
            raise ValueError(f"checkpoint file {os.path.join(ckpt.path, TOKENIZER_FILE)!r}: tokenizer vocab_size "
                             f"{tok.vocab_size} exceeds the model's {self._config['vocab_size']}")
        state = ckpt.trainer_state
        spath = os.path.join(ckpt.path, TRAINER_STATE_FILE)
        if state is not None:
            step = state.get("step", 0)
            if isinstance(step, bool) or not isinstance(step, int) or step < 0 \
                    or not isinstance(state.get("history", []), list) \
                    or not isinstance(state.get("data_rng"), (dict, type(None))):
                raise ValueError(f"checkpoint file {spath!r} is corrupt: bad 'step', 'history' or 'data_rng'")
        opt = ckpt.optimizer
        if opt is not None:
            opath = os.path.join(ckpt.path, OPTIMIZER_FILE)
            for key in ("exp_avg", "exp_avg_sq"):
                names = opt[key]
                if set(names) != set(self._names):
                    raise ValueError(f"checkpoint file {opath!r} does not match the model: "
                                     f"{key} entries differ in {sorted(set(names) ^ set(self._names))[:5]}")
                bad = [n for n in self._names if names[n].shape != self._shapes[n]]
                if bad:
                    raise ValueError(f"checkpoint file {opath!r}: {key} has wrong shapes for {bad[:5]}")
        try:
            self.load_state_dict(ckpt.tensors)
        except (TypeError, ValueError) as e:
            raise ValueError(f"checkpoint file {os.path.join(ckpt.path, MODEL_FILE)!r}: {e}") from None
        if opt is not None:
            for n in self._names:
                self._m[n][...] = opt["exp_avg"][n]
                self._v[n][...] = opt["exp_avg_sq"][n]
            self._g.step_count = int(opt["step"])
        else:
            self._m_v_zero()
        if tok is not None:
            self.tokenizer = tok
        self._train_state = dict(state) if state is not None else None
        if self._train_state is not None:
            self._train_state.pop("format_version", None)
        self._cache_owner = None

    def _m_v_zero(self) -> None:
        for n in self._names:
            self._m[n][...] = 0.0
            self._v[n][...] = 0.0
        self._g.step_count = 0


def _check_betas(betas: Any) -> Tuple[float, float]:
    try:
        b1, b2 = betas
    except (TypeError, ValueError):
        raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}") from None
    b1 = _check_float(b1, "betas[0]")
    b2 = _check_float(b2, "betas[1]")
    for i, b in enumerate((b1, b2)):
        if not 0.0 <= b < 1.0:
            raise ValueError(f"betas[{i}] must be in [0, 1), got {b}")
    return b1, b2

"""``LanguageModel``: what every fastlm model shares.

A model wraps one C++ core (``fastlm._C.GPT`` or ``fastlm._C.RNNLM``) that
owns one contiguous float32 buffer each for the parameters, the gradients and
the two optimizer moments, on the model's device; this class exposes them by
PyTorch name (:class:`fastlm.lm_tensors.ModelTensors`: NumPy views on the CPU,
copies from a GPU), and implements the API users know from nanoGPT and Hugging Face on
top: ``state_dict``/``load_state_dict``, ``forward``, ``forward_backward``,
``step``, ``fit``, ``evaluate``, ``generate``, ``save``/``load``. Subclasses
(:class:`fastlm.Transformer`, :class:`fastlm.LSTMLM`, :class:`fastlm.GRULM`)
say how to build the core, name and initialise the parameters, and decode.
"""
from __future__ import annotations

import os
import threading
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from . import _C, distributed
from ._checks import as_ids as _as_ids, check_float as _check_float, check_int as _check_int, host_copy as _host_copy, nonfinite as _nonfinite
from .bpe import BPETokenizer
from .lm_checkpoint import load_model, restore_model, save_model
from .lm_tensors import ModelTensors
from .optim import OPTIMIZERS, check_betas as _check_betas, step_options as _step_options
from .sampling import generate as _generate
from .tokenizers import Tokenizer
from .train import History, evaluate as _evaluate, fit as _fit

__all__ = ["LanguageModel"]

PathLike = Union[str, "os.PathLike[str]"]
IdsLike = Union[np.ndarray, Sequence[int], Sequence[Sequence[int]]]

# ----------------------------------------------------------------------- checks

PRECISIONS = ("fp32", "bf16", "tf32")


def _check_precision(precision: Any) -> str:
    """A model's precision: "fp32" (exact), "bf16" (mixed: float32 weights,
    gradients and optimizer state; every GEMM on bfloat16-rounded operands with
    float32 accumulation; LayerNorm, softmax, attention and cross-entropy in
    float32) or "tf32" (GPU only: GEMM operands rounded to TF32 on the tensor
    cores). Whether the device can run it is the core's check (ValueError)."""
    if not isinstance(precision, str):
        raise TypeError(f"precision must be a str ('fp32', 'bf16' or 'tf32'), got {type(precision).__name__}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be 'fp32', 'bf16' or 'tf32', got {precision!r}")
    return precision


def _check_device(device: Any) -> str:
    """The canonical device name, ``"cpu"`` or ``"cuda"``. ``RuntimeError``
    when CUDA is asked for and neither a GPU (with a CUDA build) nor the
    emulated device (``FASTLM_EMULATE_CUDA=1``) is there; ``ValueError`` for
    anything else."""
    if not isinstance(device, str):
        raise TypeError(f"device must be a str such as 'cpu' or 'cuda', got {type(device).__name__}")
    d = device.strip().lower()
    if d == "cpu":
        return "cpu"
    if d in ("cuda", "cuda:0"):
        if _C.cuda_emulated():
            return "cuda"
        if not _C.build_info().get("cuda", False):
            raise RuntimeError(f"device {device!r}: CUDA is not compiled into this fastlm build "
                               "(fastlm.build_info()['cuda'] is False); use device='cpu'")
        if not _C.cuda_available():
            raise RuntimeError(f"device {device!r}: no usable CUDA GPU ({_C.cuda_unavailable_reason()}); "
                               "use device='cpu' (or FASTLM_EMULATE_CUDA=1 to run the device path on the CPU)")
        return "cuda"
    if d.startswith("cuda:"):
        raise ValueError(f"device {device!r}: fastlm uses the process's current GPU; pass 'cuda' "
                         "(choose the GPU with CUDA_VISIBLE_DEVICES)")
    raise ValueError(f"unknown device {device!r}; expected 'cpu' or 'cuda'")



def _to_float32(v: Any, name: str) -> np.ndarray:
    if hasattr(v, "detach") and hasattr(v, "cpu"):  # torch tensors, any real dtype
        if getattr(v, "is_complex", lambda: False)():
            raise TypeError(f"state_dict[{name!r}] must be a real array, got dtype {v.dtype}")
        v = v.detach().cpu().float()
    v = _host_copy(v)
    try:
        arr = np.asarray(v)
    except Exception as e:
        raise TypeError(f"state_dict[{name!r}] is not an array ({type(e).__name__}: {e})") from None
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"state_dict[{name!r}] must be a numeric array, got dtype {arr.dtype}")
    return np.asarray(arr, dtype=np.float32)


# ---------------------------------------------------------------------- the base

class LanguageModel:
    """Base of fastlm's models; see the subclasses for the architectures.

    Subclasses set ``MODEL_TYPE`` (the checkpoint's ``model_type``),
    ``ARCH_KEYS`` (the constructor arguments that fix the architecture),
    ``TIED`` (names that alias another parameter, e.g. GPT-2's
    ``lm_head.weight``), ``DEFAULT_STEP`` (the keyword defaults of
    :meth:`step`), ``SIZE_AXES`` and ``LAYERS`` (the sizes the weights'
    shapes fix, which :meth:`load` checks before building) and implement
    ``_check_arch``, ``_make_core``, ``_param_names``, ``_init_weights``,
    ``_train_window``, ``_decoder``.
    """

    MODEL_TYPE = ""
    ARCH_KEYS: Tuple[str, ...] = ()
    # Architecture keys that checkpoints written before they existed lack,
    # with the value those checkpoints had.
    ARCH_DEFAULTS: Dict[str, Any] = {}
    TIED: Dict[str, str] = {}
    DEFAULT_STEP: Dict[str, Any] = {"optimizer": "adamw", "betas": (0.9, 0.95), "eps": 1e-8,
                                    "weight_decay": 0.1, "momentum": 0.9}
    STATEFUL = False  # whether the recurrence can carry state across calls
    # The sizes the weights fix: size -> (tensor, axis), and (size, a pattern
    # of the layers' tensor names whose group 1 is the layer index).
    SIZE_AXES: Dict[str, Tuple[str, int]] = {}
    LAYERS: Tuple[str, str] = ("", "")
    # Settings kept in config.json that are not architecture (a model of
    # another value loads the same weights), with the value a checkpoint
    # written before the setting existed gets; see _check_option.
    OPTIONS: Dict[str, Any] = {"dropout": 0.0}
    # model_type -> class, for load: each subclass that sets MODEL_TYPE
    # registers itself, so this base never imports its subclasses.
    _KINDS: Dict[str, type] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("MODEL_TYPE"):
            # The first class of a model_type keeps it: a user's subclass of
            # Transformer does not take over checkpoints of "transformer".
            LanguageModel._KINDS.setdefault(cls.MODEL_TYPE, cls)

    # -- construction

    def _build(self, arch: Dict[str, Any], seed: Any, device: Any, tokenizer: Any,
               precision: Any = "fp32") -> None:
        arch = self._check_arch(**arch)
        seed = _check_int(seed, "seed", 0, 2**63 - 1)  # a checkpoint stores it as an int64
        device = _check_device(device)
        precision = _check_precision(precision)
        self._config: Dict[str, Any] = dict(arch, seed=seed, device=device, precision=precision)
        self._config.update(self.OPTIONS)
        # Micro-batches trained with dropout so far: each one's masks derive
        # from (seed, this count), which trainer_state.json keeps for a resume.
        self._dropout_calls = 0
        self.tokenizer = tokenizer
        try:
            self._g = self._make_core(arch)
        except MemoryError as e:
            raise MemoryError(f"{type(self).__name__}({', '.join(f'{k}={v}' for k, v in arch.items())}): "
                              "not enough memory for its parameters, gradients and optimizer "
                              f"state (four float32 copies of every weight): {e}") from None
        self._names = self._param_names(arch)
        self._tensors = ModelTensors(self._g)
        self._shapes = {name: shape for name, shape, _ in self._tensors.layout}
        if set(self._shapes) != set(self._names):
            raise RuntimeError("C++ model tensor names do not match the expected ones: "
                               f"{sorted(set(self._shapes) ^ set(self._names))}")
        # Fit progress: {"step", "data_rng", "history", "fit"} (see fastlm.train), or None.
        self._train_state: Optional[Dict[str, Any]] = None
        # Who last filled the decoding state (KV cache or recurrent state): a
        # generate() call; any other use of the core may overwrite that state,
        # so it resets this to None. _lock makes "check the owner, then call the
        # core" (and "reset it, then call") one step when threads share a model
        # (each core call alone is already exclusive).
        self._cache_owner: Optional[object] = None
        self._lock = threading.RLock()

    def _check_arch(self, **arch: Any) -> Dict[str, Any]:
        raise NotImplementedError

    def _check_option(self, name: str, value: Any) -> Any:
        """``value`` of the setting ``name`` (a key of OPTIONS), checked."""
        if name != "dropout":
            raise KeyError(name)
        return _check_float(value, "dropout", 0.0, below=1.0)

    @property
    def dropout(self) -> float:
        """The training dropout probability in [0, 1) (where the model drops:
        its class docstring); 0 in ``forward``, ``evaluate`` and ``generate``."""
        return self._config["dropout"]

    @dropout.setter
    def dropout(self, p: float) -> None:
        self._config["dropout"] = self._check_option("dropout", p)

    def _next_dropout_seed(self) -> int:
        """The seed of the next micro-batch's dropout masks: the model seed and
        a count of such micro-batches (trainer_state.json keeps it), hashed
        further by the core per tensor. Under mpirun each rank mixes in its
        rank: its rows get masks of their own, not a copy of rank 0's."""
        seed = (self._config["seed"] * 0x9E3779B97F4A7C15 + self._dropout_calls) % 2**64
        rank = distributed.world().rank
        if rank:
            seed ^= (rank * 0xD1B54A32D192ED03) % 2**64
        self._dropout_calls += 1
        return seed

    def _make_core(self, arch: Dict[str, Any]) -> Any:
        raise NotImplementedError

    def _param_names(self, arch: Dict[str, Any]) -> List[str]:
        raise NotImplementedError

    def _init_weights(self) -> None:
        raise NotImplementedError

    # -- description

    @property
    def config(self) -> Dict[str, Any]:
        """The architecture arguments plus ``seed``, ``device`` and ``precision``
        (a copy); ``type(model)(**model.config)`` builds the same architecture."""
        return dict(self._config)

    @property
    def vocab_size(self) -> int:
        """Number of token ids."""
        return self._config["vocab_size"]

    @property
    def tokenizer(self) -> Optional[Tokenizer]:
        """The tokenizer saved and loaded with the model, or None. Assigning
        checks it: a Tokenizer whose vocab_size does not exceed the model's;
        a ``tokenizers.Tokenizer`` is wrapped in a :class:`~fastlm.bpe.BPETokenizer`."""
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, tokenizer: Optional[Tokenizer]) -> None:
        if tokenizer is not None:
            if BPETokenizer.accepts(tokenizer):
                tokenizer = BPETokenizer(tokenizer)
            if not isinstance(tokenizer, Tokenizer):
                raise TypeError("tokenizer must be a fastlm.tokenizers.Tokenizer (CharTokenizer, ByteTokenizer, "
                                f"BPETokenizer), a tokenizers.Tokenizer or None, got {type(tokenizer).__name__}")
            if tokenizer.vocab_size > self.vocab_size:
                raise ValueError(f"tokenizer.vocab_size ({tokenizer.vocab_size}) exceeds vocab_size "
                                 f"({self.vocab_size})")
        self._tokenizer = tokenizer

    def num_parameters(self) -> int:
        """Number of parameters (tied tensors counted once)."""
        return int(self._g.num_parameters())

    @property
    def history(self) -> "Any":
        """The :class:`fastlm.train.History` of the last :meth:`fit` (restored by
        :meth:`load` and ``fit(resume=True)``); empty before any training."""
        if self._train_state is None:
            return History()
        return History(self._train_state.get("history", []))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={self._config[k]}" for k in self.ARCH_KEYS)
        return f"{type(self).__name__}({args}; {self.num_parameters() / 1e6:.2f}M parameters)"

    # -- device

    @property
    def device(self) -> str:
        """Where the model's memory and kernels are: ``"cpu"`` or ``"cuda"``."""
        return self._config["device"]

    def to(self, device: str) -> "LanguageModel":
        """Move the model to ``device`` (``"cpu"`` or ``"cuda"``), as PyTorch's
        ``module.to``: parameters, gradients, optimizer moments and step count
        move bit for bit; decoding state (KV cache, a generate in progress)
        does not. Returns the model itself. On failure (no GPU, out of memory)
        the model stays where it was."""
        device = _check_device(device)
        if device == self.device:
            return self
        with self._lock:
            # Moments never used stay unallocated (zeros when first used) on the new device too.
            which = ("params", "grads") + (("adam_m", "adam_v") if self._g.moment_bytes() else ())
            data = {w: np.array(self._tensors.flat(w)) for w in which}
            step = int(self._g.step_count)
            arch = {k: self._config[k] for k in self.ARCH_KEYS}
            old_device = self._config["device"]
            self._config["device"] = device
            try:
                core = self._make_core(arch)
            except BaseException:
                self._config["device"] = old_device
                raise
            self._g = core
            self._tensors = ModelTensors(core)
            for w, values in data.items():
                self._tensors.write_flat(w, values)
            self._g.step_count = step
            self._cache_owner = None
        return self

    # -- weights

    def state_dict(self) -> Dict[str, np.ndarray]:
        """Copies of the parameters by PyTorch name, float32 NumPy arrays
        (from any device), PyTorch layouts (Linear weights (out, in)), in the
        reference module's order; tied names (``TIED``) repeat their source."""
        with self._lock:  # one step's weights, not parts of two
            params = self._tensors.named("params", copy=True)
            sd = {n: params[n] for n in self._names}
        for alias, source in self.TIED.items():
            sd[alias] = sd[source].copy()
        return sd

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Copy parameters in from ``state_dict`` (NumPy arrays or CPU torch
        tensors by PyTorch name; converted to float32).

        Every name of :meth:`state_dict` must be present except tied aliases
        (GPT-2's ``lm_head.weight``), which may be left out but, when given,
        must equal their source. Raises ``ValueError`` listing every missing,
        unexpected and mis-shaped entry, or naming entries with NaN/inf;
        ``TypeError`` for a non-mapping or a non-numeric entry. Nothing is
        changed unless everything is valid. The optimizer state is left as is.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a mapping of name -> array, got {type(state_dict).__name__}")
        missing = [n for n in self._names if n not in state_dict]
        unexpected = [repr(k) for k in state_dict if k not in self._shapes and k not in self.TIED]
        arrays: Dict[str, np.ndarray] = {}
        shapes: List[str] = []
        for name in self._names + list(self.TIED):
            if name not in state_dict:
                continue
            arr = _to_float32(state_dict[name], name)
            want = self._shapes[self.TIED.get(name, name)]
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
        nonfinite = _nonfinite(arrays)
        if nonfinite:
            raise ValueError(f"load_state_dict: non-finite values (NaN or inf) in {', '.join(nonfinite)}")
        for alias, source in self.TIED.items():
            if alias in arrays and not np.array_equal(arrays[alias], arrays[source]):
                raise ValueError(f"load_state_dict: {alias} differs from {source}, but the two are one tied "
                                 f"tensor (leave {alias} out or make them equal)")
        with self._lock:
            self._tensors.write("params", {name: arrays[name] for name in self._names})
            self._cache_owner = None

    # -- training primitives

    def _max_len(self) -> Optional[int]:
        """Longest sequence the model takes (None: no limit)."""
        return None

    def _ids(self, idx: Any, name: str = "idx", ignore_index: Optional[int] = None) -> np.ndarray:
        x = _as_ids(idx, name, self._config["vocab_size"], ndim=2, ignore_index=ignore_index)
        B, T = x.shape
        if B < 1 or T < 1:
            raise ValueError(f"{name} must have at least one row and one column, got shape {x.shape}")
        limit = self._max_len()
        if limit is not None and T > limit:
            raise ValueError(f"{name} has T = {T} tokens per row, more than block_size = {limit}")
        return x

    def _pair(self, idx: Any, targets: Any) -> Tuple[np.ndarray, np.ndarray]:
        x = self._ids(idx)
        y = self._ids(targets, "targets", ignore_index=-100)
        if y.shape != x.shape:
            raise ValueError(f"targets shape {y.shape} must equal idx shape {x.shape}")
        return x, y

    def forward(self, idx: IdsLike) -> np.ndarray:
        """Logits for every position.

        idx: integer ids (B, T), each in [0, vocab_size) (T <= block_size for
        the Transformer). Returns float32 (B, T, vocab_size): row ``[b, t]``
        scores the token after ``idx[b, :t+1]``. No gradients are kept.
        """
        x = self._ids(idx)
        with self._lock:
            self._cache_owner = None
            return self._g.forward(x)

    def forward_backward(self, idx: IdsLike, targets: IdsLike) -> float:
        """Mean cross-entropy of ``targets`` given ``idx`` and its gradient.

        idx: integer ids (B, T); targets: integer (B, T), each in [0,
        vocab_size) or -100 (ignored, as PyTorch's ``ignore_index``). Returns
        the mean loss over the targets not ignored (NaN if all are). The
        gradients are *added* to the gradient buffer, as ``loss.backward()``
        does in PyTorch: call :meth:`zero_grad` first.
        """
        x, y = self._pair(idx, targets)
        return self._forward_backward(x, y, 1.0, carry=False)

    def _forward_backward(self, x: np.ndarray, y: np.ndarray, grad_scale: float, carry: bool) -> float:
        with self._lock:
            self._cache_owner = None
            return float(self._g.forward_backward(x, y, grad_scale))

    def _loss(self, x: np.ndarray, y: np.ndarray) -> float:
        return float(self._g.loss(x, y))

    def gradients(self) -> Dict[str, np.ndarray]:
        """Copies of the accumulated gradients, named as :meth:`state_dict`
        (float32); a tied alias repeats the gradient of its source (the sum
        of both uses)."""
        with self._lock:
            grads = self._tensors.named("grads", copy=True)
            gd = {n: grads[n] for n in self._names}
        for alias, source in self.TIED.items():
            gd[alias] = gd[source].copy()
        return gd

    def zero_grad(self) -> None:
        """Set every gradient to zero."""
        self._g.zero_grad()

    def grad_norm(self) -> float:
        """Global L2 norm of the gradients (every parameter once)."""
        return float(self._g.grad_norm())

    def step(self, lr: float, *, optimizer: Optional[str] = None, betas: Optional[Tuple[float, float]] = None,
             eps: Optional[float] = None, weight_decay: Optional[float] = None, momentum: Optional[float] = None,
             grad_scale: float = 1.0) -> None:
        """One optimizer update of every parameter from the current gradients.

        Keywords left None take the model's defaults (``DEFAULT_STEP``:
        AdamW, betas (0.9, 0.95), weight decay 0.1 for the Transformer, as
        nanoGPT; Adam, betas (0.9, 0.999), no decay for the recurrent models,
        as PyTorch). ``optimizer`` ``"adamw"``
        (``torch.optim.AdamW`` with nanoGPT's groups: weight decay on the
        weights of 2 or more dimensions only), ``"adam"`` (the same without
        weight decay) or ``"sgd"`` (``torch.optim.SGD`` with ``momentum``,
        decay on 2-D weights as AdamW); ``betas``, ``eps``, ``weight_decay``,
        ``momentum``; ``grad_scale`` multiplies the gradients first (clipping
        by global norm: ``min(1, clip / (grad_norm() + 1e-6))``). The
        gradients are left in place.
        """
        opts = _step_options(self, optimizer=optimizer, betas=betas, eps=eps, weight_decay=weight_decay,
                             momentum=momentum)
        opts["grad_scale"] = grad_scale
        self._apply_step(lr, opts)

    def _apply_step(self, lr: Any, opts: Mapping[str, Any]) -> None:
        lr = _check_float(lr, "lr")
        if lr < 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        optimizer = opts["optimizer"]
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        weight_decay = _check_float(opts["weight_decay"], "weight_decay")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if optimizer == "adam" and weight_decay > 0:
            raise ValueError("optimizer='adam' has no weight decay; use optimizer='adamw' for decoupled decay")
        grad_scale = _check_float(opts["grad_scale"], "grad_scale")
        momentum = _check_float(opts["momentum"], "momentum")  # checked even when not SGD's
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if optimizer != "sgd":
            b1, b2 = _check_betas(opts["betas"])
            eps = _check_float(opts["eps"], "eps")
            if eps <= 0:
                raise ValueError(f"eps must be > 0, got {eps}")
        with self._lock:
            self._cache_owner = None
            self._use_optimizer(optimizer)
            if optimizer == "sgd":
                self._g.sgd_step(lr, momentum, weight_decay, grad_scale)
            else:
                self._g.step(lr, b1, b2, eps, weight_decay, grad_scale)

    def _use_optimizer(self, optimizer: str) -> None:
        family = "sgd" if optimizer == "sgd" else "adam"  # adam and adamw share their moments
        if family != self._optimizer_family():
            # A new optimizer starts empty, as a new torch.optim object does.
            self._m_v_zero()
            self._opt_family = family

    @property
    def optimizer_step(self) -> int:
        """Number of optimizer updates applied so far (the bias-correction count)."""
        return int(self._g.step_count)

    # -- high level (fastlm.train, fastlm.sampling)

    def _flops_per_token(self, block_size: int) -> float:
        """FLOPs of a forward and backward per trained token (nanoGPT's
        estimate: 6 per parameter; models add their attention)."""
        return 6.0 * self.num_parameters()

    def _train_window(self, block_size: Optional[int]) -> int:
        """Tokens per training window: ``block_size`` as given to ``fit``, or
        the model's default."""
        raise NotImplementedError

    def fit(self, train: Any, **kwargs: Any) -> Any:
        """Train on ``train`` (1-D token ids); returns the
        :class:`fastlm.train.History`. See :func:`fastlm.train.fit` for every
        argument."""
        return _fit(self, train, **kwargs)

    def evaluate(self, tokens: Any, *, batch_size: int = 16, max_batches: Optional[int] = None) -> Dict[str, float]:
        """Mean next-token loss over ``tokens`` (1-D ids, array, memmap or token
        file path): ``{"loss": float, "perplexity": float}``. See
        :func:`fastlm.train.evaluate`."""
        return _evaluate(self, tokens, batch_size=batch_size, max_batches=max_batches)

    def generate(self, prompt: Union[IdsLike, str, Sequence[Union[IdsLike, str]]], max_new_tokens: int, *,
                 temperature: float = 1.0, top_k: Optional[int] = None, top_p: Optional[float] = None,
                 do_sample: bool = True, seed: Optional[int] = None,
                 eos_token_id: Union[None, int, Sequence[int]] = None, stream: bool = False,
                 repetition_penalty: float = 1.0, stop_strings: Union[None, str, Sequence[str]] = None,
                 min_new_tokens: int = 0, num_return_sequences: int = 1, return_logprobs: bool = False,
                 pad_token_id: Optional[int] = None) -> Any:
        """Continue ``prompt`` by ``max_new_tokens`` tokens, each costing one
        incremental step of the C++ model (KV cache or recurrent state).

        Returns the prompt followed by the new ids (int64; 1-D for a 1-D
        prompt, (B, T0 + n) for a (B, T0) batch, a list of 1-D arrays for a
        list of prompts of different lengths or of strs), or with
        ``stream=True`` an iterator over the new ids as they are made; with
        ``return_logprobs=True`` also the new tokens' log-probabilities. With a
        tokenizer of fewer ids than ``vocab_size`` (a padded vocabulary), only
        ids it can decode are drawn. Hugging Face's names: see
        :func:`fastlm.sampling.generate` for every argument.
        """
        return _generate(self, prompt, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                        do_sample=do_sample, seed=seed, eos_token_id=eos_token_id, stream=stream,
                        repetition_penalty=repetition_penalty, stop_strings=stop_strings,
                        min_new_tokens=min_new_tokens, num_return_sequences=num_return_sequences,
                        return_logprobs=return_logprobs, pad_token_id=pad_token_id)

    def _decoder(self, ids: np.ndarray, lengths: Optional[np.ndarray] = None) -> Any:
        """A decoding session over the batch ``ids`` (B, T0): an object with
        ``logits`` (B, V) for the next token and ``push(tokens (B,))``. With
        ``lengths`` (B,), row i is the prompt ``ids[i, :lengths[i]]`` (right
        padding), and each row decodes as that prompt alone would."""
        raise NotImplementedError

    # -- checkpoints

    def _optimizer_family(self) -> str:
        """``"adam"`` (Adam and AdamW: moments in exp_avg, exp_avg_sq) or
        ``"sgd"`` (momentum buffer in exp_avg), whichever last stepped."""
        return getattr(self, "_opt_family", "adam")

    def _optimizer_state(self) -> Dict[str, Any]:
        return {"step": int(self._g.step_count), "optimizer": self._optimizer_family(),
                "exp_avg": self._tensors.named("adam_m"), "exp_avg_sq": self._tensors.named("adam_v")}

    def save(self, path: PathLike) -> None:
        """Write a checkpoint directory (see :mod:`fastlm.checkpoint`):
        ``config.json``, ``model.safetensors``, ``tokenizer.json`` when a
        tokenizer is attached, ``optimizer.safetensors`` once the model has
        taken an optimizer step, and ``trainer_state.json`` after :meth:`fit`.
        The directory is replaced atomically; other files in it are kept.
        :meth:`load` gives back a bit-identical model. Raises ``ValueError``,
        writing nothing, for a target :func:`fastlm.checkpoint.check_save_target`
        refuses (a mount point, the working directory, a directory holding
        subdirectories) and for weights or optimizer state holding NaN or inf,
        which :meth:`load` would reject.
        """
        save_model(self, path)

    @classmethod
    def load(cls, path: PathLike, *, device: str = "cpu", precision: Optional[str] = None) -> "LanguageModel":
        """Load a checkpoint directory written by :meth:`save` (or by ``fit``):
        weights, tokenizer, optimizer state and training progress. Called on
        :class:`LanguageModel` it builds whichever model the checkpoint holds.

        Raises ``FileNotFoundError`` for a missing directory, ``config.json`` or
        ``model.safetensors``; ``ValueError`` naming the file for a truncated,
        corrupt or mismatched one. precision: the checkpoint's (``"fp32"`` when it
        names none) unless given (a ``"bf16"`` run continued in ``"fp32"`` on a CPU
        without AVX512_BF16, say).
        """
        device = _check_device(device)
        if precision is not None:
            precision = _check_precision(precision)
        return load_model(path, LanguageModel._KINDS, None if cls is LanguageModel else cls, device, precision)

    def _restore(self, ckpt: Any) -> None:
        """Load weights, tokenizer, optimizer and trainer state from a
        :class:`fastlm.checkpoint.Checkpoint` of the same architecture."""
        restore_model(self, ckpt)

    def _restore_optimizer_extras(self, opt: Dict[str, Any]) -> None:
        """Subclasses restore what they added to :meth:`_optimizer_state`."""

    def _m_v_zero(self) -> None:
        self._g.release_moments()  # zeros when next used, as the first step's moments
        self._g.step_count = 0

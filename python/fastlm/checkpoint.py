"""Checkpoint directories: what a model needs to be loaded, sampled and resumed.

A checkpoint is a directory holding::

    config.json             {"model_type": "transformer", "vocab_size": ..., "block_size": ..., ...}
    model.safetensors       the parameters by nanoGPT name, float32, PyTorch Linear layout
                            (the tied lm_head.weight is not stored twice: it equals
                            transformer.wte.weight, as in Hugging Face checkpoints)
    tokenizer.json          when the model has a tokenizer (fastlm.tokenizers JSON)
    optimizer.safetensors   AdamW state: "exp_avg.<name>" and "exp_avg_sq.<name>" per
                            parameter, the step count in the metadata ("step")
    trainer_state.json      fit progress: step, data RNG state, history (optional)

Only ``safetensors`` and JSON are read or written: no pickle, so loading a
checkpoint from someone else cannot run code. To use the weights in
PyTorch/nanoGPT::

    sd = safetensors.torch.load_file("ckpt/model.safetensors")
    sd["lm_head.weight"] = sd["transformer.wte.weight"]
    model.load_state_dict(sd)

Writes are crash-safe: every file goes into a fresh hidden directory beside
the target, which then replaces the target in one atomic step
(:func:`fastlm._io.atomic_replace_dir`); the next save on the same machine
removes the hidden directories a killed save left. The new directory keeps the
permissions and group of the one it replaces, a symlinked target is written
through, and a load that overlaps a save in another process reads one
checkpoint whole, never parts of two. Files in an existing target that are
not checkpoint files (say a run's ``metrics.jsonl``) are carried over; since
the whole directory is replaced, a target holding a subdirectory, a mount
point (such as ``/``) and the current working directory or one holding it are
refused with ``ValueError`` before anything is written. A
missing, truncated or corrupt file raises ``FileNotFoundError`` or
``ValueError`` naming it.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Union

import numpy as np

from ._checks import INT64_MAX
from ._io import _UMASK, atomic_replace_dir, forget_sibling, open_regular, read_bounded, sibling_dir, tidy_siblings
from .tokenizers import Tokenizer, tokenizer_from_json

__all__ = [
    "CONFIG_FILE",
    "MODEL_FILE",
    "TOKENIZER_FILE",
    "OPTIMIZER_FILE",
    "TRAINER_STATE_FILE",
    "Checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "read_config",
    "is_checkpoint",
    "check_save_target",
]

PathLike = Union[str, "os.PathLike[str]"]

CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
OPTIMIZER_FILE = "optimizer.safetensors"
TRAINER_STATE_FILE = "trainer_state.json"
CHECKPOINT_FILES = (CONFIG_FILE, MODEL_FILE, TOKENIZER_FILE, OPTIMIZER_FILE, TRAINER_STATE_FILE)
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    """The content of a checkpoint directory, as :func:`load_checkpoint` returns it.

    config: the ``config.json`` object. tensors: parameter name -> float32
    array. optimizer: ``{"step": int, "exp_avg": {name: array},
    "exp_avg_sq": {name: array}}`` or None. trainer_state: the
    ``trainer_state.json`` object or None. tokenizer: a Tokenizer or None.
    """

    config: Dict[str, Any]
    tensors: Dict[str, np.ndarray]
    optimizer: Optional[Dict[str, Any]] = None
    trainer_state: Optional[Dict[str, Any]] = None
    tokenizer: Optional[Tokenizer] = None
    path: str = field(default="")


def _fspath(path: Any, name: str = "path") -> str:
    if isinstance(path, bytes):
        return os.fsdecode(path)
    try:
        p = os.fspath(path)
    except TypeError:
        raise TypeError(f"{name} must be a str or os.PathLike, got {type(path).__name__}") from None
    if p == "":
        raise ValueError(f"{name} must not be empty")
    return p


def _safetensors_numpy():
    try:
        import safetensors.numpy as stn
    except ImportError:  # pragma: no cover - a declared dependency
        raise ImportError("fastlm checkpoints need the 'safetensors' package (pip install safetensors)") from None
    return stn


def _json_dumps(obj: Any) -> str:
    # Python's json writes floats with repr(), so they round-trip exactly.
    return json.dumps(obj, indent=2, sort_keys=False) + "\n"


def _carry_over(src: str, dst: str) -> None:
    """Carry a file (or symlink) of the old directory into the new one: a hard
    link where the file system allows (no data copied), a copy otherwise."""
    if os.path.islink(src):
        os.symlink(os.readlink(src), dst)
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _keep_permissions(final: str, tmp: str) -> None:
    """Give the checkpoint files this save wrote into ``tmp`` the mode of the
    files they replace in ``final`` (the usual ``0o666 & ~umask`` for new ones:
    safetensors creates its files 0600) and the group of ``final``, and ``tmp``
    the mode and group of ``final`` (carried-over files keep their own)."""
    try:
        st = os.stat(final)
    except OSError:
        st = None
    for entry in CHECKPOINT_FILES:
        path = os.path.join(tmp, entry)
        if not os.path.exists(path):
            continue
        try:
            mode = os.stat(os.path.join(final, entry)).st_mode & 0o7777
        except OSError:
            mode = 0o666 & ~_UMASK
        _chown_group(path, st)
        os.chmod(path, mode)
    if st is not None:
        _chown_group(tmp, st)
        os.chmod(tmp, st.st_mode & 0o7777)


def _chown_group(path: str, st: Optional[os.stat_result]) -> None:
    """Best effort: the group of ``st`` for ``path`` (only its owner may, and
    only to a group of theirs)."""
    if st is not None and hasattr(os, "chown"):
        try:
            os.chown(path, -1, st.st_gid)
        except OSError:
            pass


def check_save_target(path: PathLike) -> None:
    """Raise ``ValueError`` for a directory :func:`save_checkpoint` refuses to
    replace, since its replacement would take more than a checkpoint with it (see
    the module docstring); a path that does not exist yet is fine."""
    final = os.path.abspath(_fspath(path))
    if not os.path.isdir(final):
        return
    real, cwd = os.path.realpath(final), os.path.realpath(os.getcwd())
    if os.path.ismount(real):
        raise ValueError(f"save: {final!r} is a mount point; a checkpoint replaces its whole directory, "
                         "so save into a new subdirectory")
    if cwd == real or cwd.startswith(real.rstrip(os.sep) + os.sep):
        raise ValueError(f"save: {final!r} is the current working directory or holds it; a checkpoint replaces "
                         "its whole directory, so save into a new subdirectory")
    for entry in sorted(os.listdir(final)):
        p = os.path.join(final, entry)
        if entry not in CHECKPOINT_FILES and os.path.isdir(p) and not os.path.islink(p):
            raise ValueError(f"save: {final!r} holds the subdirectory {entry!r}; a checkpoint replaces its whole "
                             "directory and carries over only files, so save into a new directory")


def save_checkpoint(path: PathLike, *, config: Mapping[str, Any], tensors: Mapping[str, np.ndarray],
                    optimizer: Optional[Mapping[str, Any]] = None,
                    trainer_state: Optional[Mapping[str, Any]] = None,
                    tokenizer: Optional[Tokenizer] = None) -> None:
    """Write a checkpoint directory at ``path`` atomically (see the module docstring).

    config: JSON-serialisable dict (``format_version`` is added). tensors:
    name -> float32 array. optimizer: ``{"step": int, "exp_avg": {name:
    array}, "exp_avg_sq": {name: array}}`` or None, optionally with
    ``"recurrent_state": {"h": array, "c": array}`` (a stateful fit's carried
    state, needed to resume it exactly). trainer_state:
    JSON-serialisable dict or None. tokenizer: a Tokenizer or None. Parent
    directories are created. Raises ``NotADirectoryError`` if ``path`` is an
    existing file, ``ValueError`` for a target the module docstring refuses.
    """
    stn = _safetensors_numpy()
    final = os.path.abspath(_fspath(path))
    if os.path.islink(final):  # written through: the link stays
        final = os.path.realpath(final)
    if os.path.lexists(final) and not os.path.isdir(final):
        raise NotADirectoryError(f"save: {final!r} exists and is not a directory")
    check_save_target(final)
    parent = os.path.dirname(final)
    os.makedirs(parent, exist_ok=True)
    tidy_siblings(final)
    tmp = sibling_dir(final, "tmp")
    os.mkdir(tmp)
    try:
        cfg = dict(config)
        cfg["format_version"] = FORMAT_VERSION
        with open(os.path.join(tmp, CONFIG_FILE), "w", encoding="utf-8") as f:
            f.write(_json_dumps(cfg))
        stn.save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()},
                      os.path.join(tmp, MODEL_FILE), metadata={"format": "np", "model_type": str(cfg.get("model_type", ""))})
        if tokenizer is not None:
            with open(os.path.join(tmp, TOKENIZER_FILE), "w", encoding="utf-8") as f:
                f.write(tokenizer.to_json() + "\n")
        if optimizer is not None:
            flat: Dict[str, np.ndarray] = {}
            for key in ("exp_avg", "exp_avg_sq", "recurrent_state"):
                for name, arr in optimizer.get(key, {}).items():
                    flat[f"{key}.{name}"] = np.ascontiguousarray(arr, dtype=np.float32)
            stn.save_file(flat, os.path.join(tmp, OPTIMIZER_FILE),
                          metadata={"format": "np", "optimizer": str(optimizer.get("optimizer", "adam")),
                                    "step": str(int(optimizer["step"]))})
        if trainer_state is not None:
            state = dict(trainer_state)
            state["format_version"] = FORMAT_VERSION
            with open(os.path.join(tmp, TRAINER_STATE_FILE), "w", encoding="utf-8") as f:
                f.write(_json_dumps(state))
        if os.path.isdir(final):
            for entry in os.listdir(final):
                if entry not in CHECKPOINT_FILES:
                    _carry_over(os.path.join(final, entry), os.path.join(tmp, entry))
        _keep_permissions(final, tmp)
        atomic_replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        forget_sibling(tmp)


def _check_dir(path: PathLike, who: str) -> str:
    p = _fspath(path)
    if not os.path.exists(p):
        raise FileNotFoundError(f"{who}: no checkpoint directory {p!r}")
    if not os.path.isdir(p):
        raise NotADirectoryError(f"{who}: {p!r} is not a directory (a checkpoint is a directory)")
    return p


# Size bounds of the JSON files, from what they hold: a config is a few
# hundred bytes; a tokenizer's JSON a few MB at the largest vocabularies;
# trainer_state.json keeps one history entry (~200 bytes) per step. Only
# regular files are read (a link to /dev/zero or a FIFO is refused), and a
# safetensors header must fit inside its file.
_JSON_LIMITS = {CONFIG_FILE: 1 << 20, TOKENIZER_FILE: 64 << 20, TRAINER_STATE_FILE: 256 << 20}


def _read_file(path: str, required: bool = True) -> Optional[bytes]:
    """A checkpoint JSON file's bytes (bounded by _JSON_LIMITS), or None when
    absent and not required."""
    if not os.path.exists(path):
        if required:
            raise FileNotFoundError(f"checkpoint file {path!r} is missing")
        return None
    return read_bounded(path, _JSON_LIMITS[os.path.basename(path)], "checkpoint file")


def _read_json(path: str, required: bool = True) -> Optional[Any]:
    data = _read_file(path, required)
    if data is None:
        return None
    try:
        return json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as e:  # not UTF-8 or JSON, an integer past Python's digit limit, nesting too deep
        raise ValueError(f"checkpoint file {path!r} is corrupt or truncated (not valid JSON: {type(e).__name__}: "
                         f"{e})") from None


def _read_safetensors(path: str, required: bool = True):
    """(tensors, metadata) of a safetensors file, or (None, None) when absent
    and not required. Every parse failure becomes a ValueError naming the file."""
    if not os.path.exists(path):
        if required:
            raise FileNotFoundError(f"checkpoint file {path!r} is missing")
        return None, None
    _safetensors_numpy()
    from safetensors import safe_open
    fd = open_regular(path, "checkpoint file")
    try:
        size = os.fstat(fd).st_size
        head = os.pread(fd, 8, 0)
        header = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 0 <= header <= size - 8:
            raise ValueError(f"checkpoint file {path!r} is corrupt or truncated (a {size}-byte file cannot hold "
                             f"a header of {header} bytes)")
        # Opened again through the descriptor where the system allows: the
        # file checked above, not whatever the name points at by now.
        by_fd = f"/proc/self/fd/{fd}"
        try:
            tensors = {}
            with safe_open(by_fd if os.path.exists(by_fd) else path, framework="np") as f:
                metadata = f.metadata() or {}
                for k in f.keys():
                    tensors[k] = np.array(f.get_tensor(k))  # own the memory, whatever the backend
        except Exception as e:  # SafetensorError, OSError from a short read, ...
            raise ValueError(f"checkpoint file {path!r} is corrupt or truncated ({type(e).__name__}: {e})") from None
    finally:
        os.close(fd)
    for k, v in tensors.items():
        if v.dtype != np.float32:
            raise ValueError(f"checkpoint file {path!r}: tensor {k!r} has dtype {v.dtype}, expected float32")
    return tensors, metadata


def read_config(path: PathLike) -> Dict[str, Any]:
    """The ``config.json`` object of the checkpoint directory ``path``.

    Raises ``FileNotFoundError`` (missing directory or file),
    ``NotADirectoryError``, or ``ValueError`` naming the file when it is not a
    JSON object or comes from a newer format.
    """
    p = _check_dir(path, "load")
    cpath = os.path.join(p, CONFIG_FILE)
    cfg = _read_json(cpath)
    if not isinstance(cfg, dict):
        raise ValueError(f"checkpoint file {cpath!r} must hold a JSON object, got {type(cfg).__name__}")
    version = cfg.get("format_version", FORMAT_VERSION)
    if isinstance(version, bool) or not isinstance(version, int):
        raise ValueError(f"checkpoint file {cpath!r} is corrupt: format_version must be an integer, got {version!r}")
    if not 1 <= version <= FORMAT_VERSION:
        raise ValueError(f"checkpoint file {cpath!r} has unsupported format_version {version!r} "
                         f"(this fastlm reads <= {FORMAT_VERSION})")
    return cfg


def is_checkpoint(path: PathLike) -> bool:
    """Whether ``path`` is a directory holding ``config.json`` and ``model.safetensors``."""
    try:
        p = _fspath(path)
    except (TypeError, ValueError):
        return False
    return os.path.isfile(os.path.join(p, CONFIG_FILE)) and os.path.isfile(os.path.join(p, MODEL_FILE))


def _identity(path: str) -> Optional[tuple]:
    """Which directory ``path`` names now: a save replaces it with a new one (whose
    inode number may be the one just freed, but not its change time)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_ctime_ns


_LOAD_ATTEMPTS = 5


def _old_copy_beside(path: str) -> bool:
    """Whether a save's ``old`` copy of ``path`` sits beside it (a swap underway)."""
    parent, name = os.path.split(os.path.realpath(path))
    try:
        return any(e.startswith(f".{name}.old-") for e in os.listdir(parent))
    except OSError:
        return False


def load_checkpoint(path: PathLike, *, optimizer: bool = True) -> Checkpoint:
    """Read the checkpoint directory ``path`` (see the module docstring).

    With ``optimizer=False`` the optimizer state and trainer state are not
    read (enough for sampling). Raises ``FileNotFoundError`` for a missing
    directory, ``config.json`` or ``model.safetensors``; ``ValueError`` naming
    the file for one that is truncated or corrupt. Shapes and names are not
    checked here (the model's ``load_state_dict`` does that). A checkpoint
    that another process replaces while it is read is read again, whole.
    """
    p = _fspath(path)
    for attempt in range(_LOAD_ATTEMPTS):
        before = _identity(p)
        if before is None:  # between the fallback swap's two renames, or a save killed there
            tidy_siblings(os.path.realpath(p))
            before = _identity(p)
            if before is None and attempt + 1 < _LOAD_ATTEMPTS and _old_copy_beside(p):
                time.sleep(0.05 * (attempt + 1))  # another process is mid-swap
                continue
        try:
            ckpt = _load_once(p, optimizer)
        except (FileNotFoundError, ValueError):
            if _identity(p) == before:
                raise
            continue
        if _identity(p) == before:
            return ckpt
    raise ValueError(f"load: checkpoint {p!r} was replaced {_LOAD_ATTEMPTS} times while it was read "
                     "(another process saving into it?)")


def _load_once(path: str, optimizer: bool) -> Checkpoint:
    p = _check_dir(path, "load")
    cfg = read_config(p)
    tensors, _ = _read_safetensors(os.path.join(p, MODEL_FILE))
    tok = None
    tpath = os.path.join(p, TOKENIZER_FILE)
    data = _read_file(tpath, required=False)
    if data is not None:
        try:
            tok = tokenizer_from_json(data)
        except ValueError as e:  # tokenizer_from_json turns every parse failure into one
            raise ValueError(f"checkpoint file {tpath!r} is corrupt: {e}") from None
    opt = None
    state = None
    if optimizer:
        opath = os.path.join(p, OPTIMIZER_FILE)
        flat, meta = _read_safetensors(opath, required=False)
        if flat is not None:
            try:
                step = int(meta["step"])
                if not 0 <= step <= INT64_MAX:
                    raise ValueError
            except (KeyError, ValueError, TypeError):
                raise ValueError(f"checkpoint file {opath!r} is corrupt: no valid 'step' in its metadata") from None
            family = {"AdamW": "adam"}.get(meta.get("optimizer"), meta.get("optimizer", "adam"))
            if family not in ("adam", "sgd"):
                raise ValueError(f"checkpoint file {opath!r} is corrupt: unknown optimizer {family!r}")
            opt = {"step": step, "optimizer": family, "exp_avg": {}, "exp_avg_sq": {}, "recurrent_state": {}}
            for k, v in flat.items():
                key, _, name = k.partition(".")
                if key not in ("exp_avg", "exp_avg_sq", "recurrent_state") or not name:
                    raise ValueError(f"checkpoint file {opath!r} is corrupt: unexpected tensor {k!r}")
                opt[key][name] = v
        spath = os.path.join(p, TRAINER_STATE_FILE)
        state = _read_json(spath, required=False)
        if state is not None and not isinstance(state, dict):
            raise ValueError(f"checkpoint file {spath!r} must hold a JSON object, got {type(state).__name__}")
    return Checkpoint(config=cfg, tensors=tensors, optimizer=opt, trainer_state=state, tokenizer=tok, path=p)

"""``ModelTensors``: a model's four flat float32 buffers (parameters,
gradients, the two optimizer moments), by PyTorch tensor name.

A CPU model's buffers are host memory: :meth:`named` and :meth:`flat` give
NumPy *views* of them, which the caller may write into (then call
``core.weights_changed()`` for the parameters). A model on another device
(``"cuda"``, real or emulated) is copied across the host boundary: reads give
fresh arrays and writes go through :meth:`write`. Code that must work on
every device reads with ``named``/``flat`` and writes with ``write``.

The optimizer moments are allocated (as zeros) when first used, by a step, a
read or a write, and ``core.release_moments()`` frees them; a view taken
before a release keeps the old buffer alive but is no longer the model's, so
take a fresh view after each change. Under ZeRO-1 (:mod:`fastlm.zero`) they
cover one range of the vector only (``core.moment_range()``), and reading them
whole is a ``ValueError``.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Tuple

import numpy as np

__all__ = ["ModelTensors"]

WHICH = ("params", "grads", "adam_m", "adam_v")


class ModelTensors:
    """The flat buffers of one C++ model core (``fastlm._C.GPT`` / ``RNNLM``)."""

    def __init__(self, core: Any) -> None:
        self._core = core
        self.device: str = core.device
        self.layout: List[Tuple[str, Tuple[int, ...], int]] = [
            (name, tuple(int(d) for d in shape), int(offset)) for name, shape, offset in core.layout()]
        self._views: Dict[str, np.ndarray] = {}
        if self.host:  # the moments' views are taken per call: they may be released and reallocated
            self._views = {"params": core.flat_params(), "grads": core.flat_grads()}

    @property
    def host(self) -> bool:
        """Whether the buffers are host memory (views possible)."""
        return self.device == "cpu"

    def flat(self, which: str) -> np.ndarray:
        """float32 (num_parameters,): a view on the CPU, a copy elsewhere."""
        if which not in WHICH:
            raise ValueError(f"which must be one of {WHICH}, got {which!r}")
        if not self.host:
            return self._core.read(which)
        if which == "adam_m":
            return self._core.adam_m()
        if which == "adam_v":
            return self._core.adam_v()
        return self._views[which]

    def named(self, which: str, copy: bool = False) -> Dict[str, np.ndarray]:
        """Every tensor of ``which`` by name, shaped as the parameter: views on
        the CPU (independent arrays with ``copy=True``), copies elsewhere."""
        flat = self.flat(which)
        out = {name: flat[off:off + int(np.prod(shape, dtype=np.int64))].reshape(shape)
               for name, shape, off in self.layout}
        if copy and self.host:
            out = {name: a.copy() for name, a in out.items()}
        return out

    def write(self, which: str, arrays: Mapping[str, Any]) -> None:
        """Copy float32 arrays, by tensor name (any subset), into ``which``."""
        views = self.named(which) if self.host else None
        for name, shape, off in self.layout:
            if name not in arrays:
                continue
            a = np.ascontiguousarray(arrays[name], dtype=np.float32)
            if a.shape != shape:
                raise ValueError(f"{which}[{name!r}]: shape {a.shape}, expected {shape}")
            if views is not None:
                views[name][...] = a
            else:
                self._core.write(which, a.reshape(-1), off)
        if which == "params":
            self._core.weights_changed()

    def write_flat(self, which: str, values: np.ndarray) -> None:
        """Copy float32 (num_parameters,) values into ``which``."""
        if self.host:
            self.flat(which)[...] = values
        else:
            self._core.write(which, np.ascontiguousarray(values, dtype=np.float32).reshape(-1), 0)
        if which == "params":
            self._core.weights_changed()

    def zero(self, which: str) -> None:
        """Set every element of ``which`` to 0."""
        n = int(self._core.num_parameters())
        if self.host:
            self.flat(which)[...] = 0.0
        else:
            self._core.write(which, np.zeros(n, np.float32), 0)

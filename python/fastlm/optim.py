"""The optimizer settings shared by ``LanguageModel.step`` and ``fastlm.train.fit``:
the optimizers known, their defaults per model and the betas check (which
tensors weight decay applies to is the C++ ParamStore's rule: 2 or more
dimensions)."""
from __future__ import annotations

from typing import Any, Dict, Tuple

from ._checks import check_float as _check_float

OPTIMIZERS = ("adamw", "adam", "sgd")


def check_betas(betas: Any) -> Tuple[float, float]:
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


def step_options(model: Any, **given: Any) -> Dict[str, Any]:
    """The model's ``DEFAULT_STEP`` overridden by the keywords given (not
    None). Choosing ``"adam"`` without a weight decay means none."""
    opts = dict(model.DEFAULT_STEP)
    opts.update({k: v for k, v in given.items() if v is not None})
    if opts["optimizer"] == "adam" and given.get("weight_decay") is None:
        opts["weight_decay"] = 0.0
    return opts

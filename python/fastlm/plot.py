"""The loss plot ``fastlm train`` writes (``loss.png``), with matplotlib from
the ``plot`` extra (``pip install 'fastlm[plot]'``)."""
from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any, Dict, Sequence

__all__ = ["can_plot", "plot_history"]


def can_plot() -> bool:
    """Whether matplotlib is installed."""
    return importlib.util.find_spec("matplotlib") is not None


def plot_history(path: str, history: Sequence[Dict[str, Any]]) -> bool:
    """Write the training loss of every step, and the train and val loss
    estimates of the evaluations, of a :class:`fastlm.train.History` as a PNG
    to ``path`` (atomically). Returns False without matplotlib; a plotting
    failure warns on stderr and returns False, never stopping training."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return False
    from ._io import atomic_open
    try:
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot([e["step"] for e in history], [e["loss"] for e in history], label="train", lw=1)
        for key, label in (("train_loss", "train (estimate)"), ("val_loss", "val")):
            ev = [(e["step"], e[key]) for e in history if e.get(key) is not None]
            if ev:
                ax.plot(*zip(*ev), "o-", label=label)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        with atomic_open(path, "wb") as f:
            fig.savefig(f, format="png", dpi=100)
        plt.close(fig)
        return True
    except Exception as e:  # pragma: no cover - depends on the matplotlib install
        print(f"fastlm: warning: could not write {os.path.basename(path)}: {e}", file=sys.stderr)
        return False

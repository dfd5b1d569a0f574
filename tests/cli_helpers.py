"""What the command-line tests share: a tiny model's flags, a tiny corpus, and
the check that a mistake ends in one ``fastlm: error:`` line."""
from __future__ import annotations

import numpy as np
import pytest

TINY = ["--block-size", "16", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--batch-size", "4",
        "--eval-interval", "10", "--eval-batches", "2", "--no-progress"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = np.random.default_rng(0)
    words = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "and", "runs", "away"]
    lines = [" ".join(rng.choice(words, 8)) + "." for _ in range(120)]
    p = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


def _error_line(capsys):
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastlm: error: "), err
    return lines[0]

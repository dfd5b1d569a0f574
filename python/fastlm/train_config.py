"""Config files for ``fastlm train --config FILE.toml``, as nanoGPT's
``config/*.py`` files and ``--key=value`` overrides.

The file is flat TOML whose keys are the ``fastlm train`` flags without the
leading dashes (``batch_size`` or ``batch-size``), values of the flag's type::

    corpus = "data/tinyshakespeare.txt"   # paths relative to the working directory
    out = "runs/shakespeare_char"
    n_layer = 4
    lr = 1e-3
    keep_best = true

Each value is checked as the flag would check it; flags given on the command
line win over the file. TOML needs :mod:`tomllib` (Python 3.11+) or the
``tomli`` package on older Pythons (a dependency there).
"""
from __future__ import annotations

import argparse
from typing import Any, Dict, List

__all__ = ["load_config", "apply_config", "normalize_flags"]

def load_config(path: str) -> Dict[str, Any]:
    """The table of the TOML file ``path``. ``ValueError`` naming the file for a
    missing or malformed file or one holding tables; ``RuntimeError`` without a
    TOML reader."""
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ImportError:
            raise RuntimeError("--config needs Python 3.11+ (tomllib) or the tomli package "
                               "(pip install tomli)") from None
    try:
        with open(path, "rb") as f:
            cfg = tomllib.load(f)
    except FileNotFoundError:
        raise ValueError(f"--config: file {path!r} not found") from None
    except IsADirectoryError:
        raise ValueError(f"--config: {path!r} is a directory, not a TOML file") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"--config: {path!r} is not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"--config: {path!r} is not UTF-8 text: {e}") from None
    nested = [k for k, v in cfg.items() if isinstance(v, dict)]
    if nested:
        raise ValueError(f"--config: {path!r} has a table [{nested[0]}]; the file is a flat list of "
                         "key = value settings")
    return cfg


def apply_config(parser: argparse.ArgumentParser, cfg: Dict[str, Any], path: str) -> None:
    """Make the settings of ``cfg`` (from the file ``path``) the defaults of
    ``parser``'s flags, each converted and checked by the flag's own type.
    ``ValueError`` naming the key and the file for an unknown key or a bad
    value."""
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}
    where = f"--config {path!r}"
    defaults: Dict[str, Any] = {}
    for key, value in cfg.items():
        dest = key.replace("-", "_")
        action = actions.get(dest)
        if action is None:
            known = ", ".join(sorted(actions))
            raise ValueError(f"{where}: unknown setting {key!r} (the settings are the train flags: {known})")
        if action.nargs == 0:  # an on/off flag (store_true)
            if not isinstance(value, bool):
                raise ValueError(f"{where}: {key} must be true or false, got {value!r}")
            defaults[dest] = value
            continue
        if isinstance(value, (bool, list, dict)) or value is None:
            raise ValueError(f"{where}: {key} must be a {'string' if action.type is None else 'number'}, "
                             f"got {value!r}")
        if action.type is not None:
            try:
                value = action.type(str(value))
            except argparse.ArgumentTypeError as e:
                raise ValueError(f"{where}: {key}: {e}") from None
        elif not isinstance(value, str):
            raise ValueError(f"{where}: {key} must be a string, got {value!r}")
        if action.choices is not None and value not in action.choices:
            raise ValueError(f"{where}: {key} must be one of {', '.join(map(str, action.choices))}, got {value!r}")
        defaults[dest] = value
    parser.set_defaults(**defaults)


def normalize_flags(argv: List[str]) -> List[str]:
    """nanoGPT's spelling of the flags, ``--batch_size=32``, as argparse's
    ``--batch-size=32`` (values are left alone)."""
    out = []
    for arg in argv:
        if arg.startswith("--") and "_" in arg.split("=", 1)[0]:
            name, eq, value = arg.partition("=")
            arg = name.replace("_", "-") + eq + value
        out.append(arg)
    return out

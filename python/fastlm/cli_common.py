"""What the ``fastlm`` commands share: the one-line user error, argparse
value types that reject a bad value before any work, and the checks of the
--device and --precision flags."""
from __future__ import annotations

import argparse
import math
from typing import Optional


class CLIError(Exception):
    """A user mistake: reported as one line, exit status 2."""



def _int_at_least(minimum: int):
    """An argparse type: an integer >= minimum."""
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {s!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {v}")
        return v
    return parse


_positive_int = _int_at_least(1)
_nonneg_int = _int_at_least(0)


def _int_below_2_to(bits: int):
    """An argparse type: an integer in [0, 2**bits)."""
    def parse(s: str) -> int:
        v = _nonneg_int(s)
        if v >= 2**bits:
            raise argparse.ArgumentTypeError(f"expected an integer below 2**{bits}, got {v}")
        return v
    return parse


_model_seed = _int_below_2_to(63)  # a checkpoint stores it as an int64
_sampler_seed = _int_below_2_to(64)


def _threads(s: str) -> int:
    from . import MAX_THREADS
    v = _positive_int(s)
    if v > MAX_THREADS:
        raise argparse.ArgumentTypeError(f"expected at most {MAX_THREADS} threads, got {v}")
    return v


def _float(s: str) -> float:
    try:
        return float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None


def _number(low: float, high: float = math.inf, *, above: bool = False, below: bool = False):
    """An argparse type: a finite number >= low (> low when ``above``) and <=
    high (< high when ``below``), so a bad value fails before any work."""
    if high == math.inf:
        want = f"{'>' if above else '>='} {low:g}"
    else:
        want = f"in {'(' if above else '['}{low:g}, {high:g}{')' if below else ']'}"

    def parse(s: str) -> float:
        v = _float(s)
        if not (math.isfinite(v) and (v > low if above else v >= low) and (v < high if below else v <= high)):
            raise argparse.ArgumentTypeError(f"expected a finite number {want}, got {s!r}")
        return v
    return parse


_nonneg_float = _number(0.0)
_positive_float = _number(0.0, above=True)
_unit_float = _number(0.0, 1.0, below=True)  # betas, the validation share


def _precision(precision: Optional[str], device: str = "cpu") -> None:
    import fastlm
    on_cpu = device.strip().lower() == "cpu"
    if precision == "tf32" and on_cpu:
        raise CLIError("--precision tf32 is for --device cuda (the CPU has no TF32 arithmetic)")
    if precision == "bf16" and on_cpu and fastlm.cpu_isa() != "avx512bf16":
        raise CLIError(f"--precision bf16 needs the avx512bf16 CPU ISA (AVX512_BF16); the active CPU ISA is "
                       f"{fastlm.cpu_isa()!r}")


def _device(device: str) -> None:
    from .lm import _check_device
    try:
        _check_device(device)
    except (RuntimeError, ValueError, TypeError) as e:
        msg = str(e).replace(" (fastlm.build_info()['cuda'] is False)", "").replace("device='cpu'", "--device cpu")
        raise CLIError(f"--device: {msg}") from None


def _set_threads(n: Optional[int]) -> None:
    import fastlm
    if n is None:
        return
    try:
        fastlm.set_num_threads(n)
    except RuntimeError as e:  # the system refused a thread
        raise CLIError(f"--threads: {e}") from None

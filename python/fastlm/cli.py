"""The ``fastlm`` command (also ``python -m fastlm``).

::

    fastlm train [CORPUS.txt] --out DIR [--steps N --batch-size B --block-size T ...]
    fastlm train --config FILE.toml [--key=value ...]
    fastlm sample DIR --prompt TEXT --max-new-tokens N [--temperature --top-k --top-p --seed --num-samples
                      --repetition-penalty --stop TEXT]
    fastlm info
    fastlm bench [ARGS...]

User mistakes (a missing file or checkpoint, a bad flag or value) print one
line ``fastlm: error: ...`` on stderr and exit with status 2; set
``FASTLM_DEBUG=1`` to see the traceback instead. A reader of stdout that
goes away (``fastlm sample ... | head``) ends it quietly with status 141.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from .cli_common import CLIError, _positive_int, _unit_float
from .cli_info import cmd_info
from .cli_sample import add_sample_parser, cmd_sample
from .cli_tokenize import add_tokenize_parser, cmd_tokenize
from .cli_train import add_train_parser, cmd_train

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise CLIError(f"{message} (see '{self.prog} --help')")


def _build_parser() -> _Parser:
    p = _Parser(prog="fastlm", description="Train and sample small language models on fastlm's kernels.",
                epilog="example: fastlm train --out runs/stdlib --steps 1000 --overwrite && "
                       "fastlm sample runs/stdlib --prompt 'def '; 'fastlm COMMAND --help' for each command's flags")
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    p.train_parser = add_train_parser(sub)  # type: ignore[attr-defined]  # for --config
    add_sample_parser(sub)
    add_tokenize_parser(sub, _positive_int, _unit_float)

    sub.add_parser("info", help="version, CPU ISA, threads, build and CUDA information")

    b = sub.add_parser("bench", help="benchmarks against NumPy and PyTorch", add_help=False)
    b.add_argument("args", nargs=argparse.REMAINDER, help="passed to the benchmark runner")
    return p


def _cmd_bench(a: argparse.Namespace) -> int:
    import importlib
    try:
        bench = importlib.import_module("fastlm.bench")
    except ModuleNotFoundError as e:
        if e.name not in ("fastlm.bench",):
            raise
        print("fastlm: benchmarks are unavailable in this build (no fastlm.bench module)", file=sys.stderr)
        return 1
    run = getattr(bench, "main", None)
    if not callable(run):
        print("fastlm: benchmarks are unavailable in this build (fastlm.bench has no main())", file=sys.stderr)
        return 1
    rc = run(list(a.args))
    return int(rc) if isinstance(rc, int) else 0


_COMMANDS = {"train": cmd_train, "sample": cmd_sample, "tokenize": cmd_tokenize, "info": cmd_info,
             "bench": _cmd_bench}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``fastlm`` command line with ``argv`` (default ``sys.argv[1:]``);
    returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("FASTLM_DEBUG", "") not in ("", "0")
    try:
        if argv[:1] == ["bench"]:
            # The benchmark runner parses its own flags (argparse's REMAINDER
            # would refuse ones that start with "--").
            return _cmd_bench(argparse.Namespace(args=argv[1:]))
        parser = _build_parser()
        if argv[:1] == ["train"]:
            from .train_config import normalize_flags
            argv = normalize_flags(argv)
        a = parser.parse_args(argv)
        if a.command == "train" and a.config is not None:
            # The file's settings become the flags' defaults; the command line wins.
            from .train_config import apply_config, load_config
            try:
                apply_config(parser.train_parser, load_config(a.config), a.config)
            except (ValueError, RuntimeError) as e:
                raise CLIError(str(e)) from None
            a = parser.parse_args(argv)
        if a.version:
            import fastlm
            print(f"fastlm {fastlm.__version__}")
            return 0
        if a.command is None:
            raise CLIError("a command is required: train, sample, tokenize, info or bench (see 'fastlm --help')")
        return _COMMANDS[a.command](a)
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    except CLIError as e:
        if debug:
            raise
        return _error(e, f"fastlm: error: {e}", 2)
    except BrokenPipeError:
        # The reader of stdout has gone (`fastlm sample ... | head`): stop
        # quietly, with stdout on /dev/null for the flush at exit (Python's recipe).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (OSError, ValueError, TypeError) as e:
        if debug:
            raise
        return _error(e, f"fastlm: error: {_one_line(e)}", 2)
    except MemoryError as e:  # a model, batch or sample count too large for this machine
        if debug:
            raise
        return _error(e, f"fastlm: error: out of memory: {_one_line(e)}", 2)
    except FloatingPointError as e:
        if debug:
            raise
        return _error(e, f"fastlm: error: {_one_line(e)}", 1)
    except KeyboardInterrupt:
        print("fastlm: interrupted", file=sys.stderr)
        return 130


def _error(e: BaseException, message: str, code: int) -> int:
    """Print ``message``, the error ``e``, and return ``code``; under
    ``mpirun``, once for the job (by rank 0) when every rank met it, or what
    the ranks agreed on when this rank alone did."""
    from . import distributed
    agreed = distributed.settle(e, "fastlm train")
    if agreed is not e:
        message = f"fastlm: error: {_one_line(agreed)}"
    if distributed.should_report(agreed):
        print(message, file=sys.stderr)
    return code


def _one_line(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    return msg or type(e).__name__


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

"""One table of a GPU check: the ours/torch ratio of every benchmark line and
the outcome of every stage, read from the logs `bench/gpu_check.sh` writes.

Run: python3 bench/gpu_table.py LOG_DIR   (or LOG files; prints Markdown)

Benchmark lines have the form the CUDA benchmarks print (bench/test_bench_cuda.py)
and any other ``[tag]`` benchmark may use::

    [cuda] gemm bf16 a@b 4096x4096x4096: fastlm 227.0 TFLOP/s (0.605 ms), torch 721.0 TFLOP/s (0.191 ms), ours/torch 0.32

Stage lines are written by gpu_check.sh itself::

    [stage] tests: ok 14s
    [stage] memcheck: failed (exit 1) 3s
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|nan|inf"
_BENCH = re.compile(
    rf"^\[(?P<tag>[a-z0-9_]+)\]\s+(?P<what>.+?):\s+fastlm\s+(?P<ours>{_NUM})\s+(?P<unit>\S+)"
    rf".*?,\s*torch\s+(?P<theirs>{_NUM})\s+\S+.*?ours/torch\s+(?P<ratio>{_NUM})\s*$")
_STAGE = re.compile(r"^\[stage\]\s+(?P<name>[\w-]+):\s+(?P<status>.+?)\s+(?P<secs>\d+)s\s*$")
_COPY = re.compile(r"^\[cuda\]\s+device-to-device copy:\s+(?P<bw>[\d.]+)\s+GB/s\s+\((?P<size>[^)]*)\)")
_HEADER = re.compile(r"^=== (?P<name>[\w-]+): ")  # gpu_check.sh, before each stage's output
_PYTEST = re.compile(r"^(?:=+ )?(?P<summary>(?:\d+ (?:passed|failed|errors?|skipped|deselected|"
                     r"xfailed|xpassed|warnings?)(?:, )?)+ in [\d.]+s(?: \([^)]*\))?)(?: =+)?$|"
                     r"^(?:=+ )?(?P<none>no tests ran in [\d.]+s)(?: =+)?$")
_SANITIZER = re.compile(r"^=+ ERROR SUMMARY: (?P<n>\d+) errors?")


@dataclass
class BenchLine:
    tag: str
    what: str
    ours: float
    theirs: float
    unit: str
    ratio: float


@dataclass
class Stage:
    name: str
    status: str
    seconds: int


@dataclass
class Report:
    bench: List[BenchLine] = field(default_factory=list)
    stages: List[Stage] = field(default_factory=list)
    copy: Optional[str] = None
    # What each stage's output said in summary (pytest's last line, the
    # sanitizer's error count), by stage name ("" before any stage header).
    notes: Dict[str, List[str]] = field(default_factory=dict)


def parse(lines: Iterable[str], into: Optional[Report] = None) -> Report:
    """Everything the table shows, from the lines of one log (ANSI colours and
    pytest's progress marks before a line are tolerated). Summaries belong to
    the stage whose header (``=== name: ...``) came last in the same log."""
    rep = Report() if into is None else into
    current = ""
    for raw in lines:
        line = re.sub(r"\x1b\[[0-9;]*m", "", raw).strip()
        # pytest -s prints a test's output right after its progress marks.
        line = re.sub(r"^[.sFExX]+(?=\[)", "", line)
        m = _BENCH.match(line)
        if m:
            rep.bench.append(BenchLine(m["tag"], m["what"], float(m["ours"]), float(m["theirs"]),
                                       m["unit"], float(m["ratio"])))
            continue
        m = _STAGE.match(line)
        if m:
            rep.stages.append(Stage(m["name"], m["status"], int(m["secs"])))
            continue
        m = _COPY.match(line)
        if m:
            rep.copy = f"{m['bw']} GB/s ({m['size']})"
            continue
        m = _HEADER.match(line)
        if m:
            current = m["name"]
            continue
        m = _PYTEST.match(line)
        if m:
            rep.notes.setdefault(current, []).append(m["summary"] or m["none"])
            continue
        m = _SANITIZER.match(line)
        if m:
            rep.notes.setdefault(current, []).append(f"sanitizer: {m['n']} errors")
    return rep


def _fmt(x: float) -> str:
    return f"{x:.1f}" if abs(x) >= 1 else f"{x:.3g}"


def table(rep: Report) -> str:
    """The report as Markdown: stages first, then one row per benchmark line."""
    out: List[str] = []
    staged = {s.name for s in rep.stages}
    if rep.stages:
        out += ["| stage | result | time | summary |", "|---|---|---|---|"]
        out += [f"| {s.name} | {s.status} | {s.seconds} s | {'; '.join(rep.notes.get(s.name, []))} |"
                for s in rep.stages]
        out.append("")
    for name, notes in rep.notes.items():
        if name not in staged:
            out += [f"{name or 'log'}: {n}" for n in notes]
    if rep.copy:
        out.append(f"large-copy bandwidth: {rep.copy}")
    if rep.bench:
        if out:
            out.append("")
        out += ["| benchmark | fastlm | torch | unit | ours/torch |", "|---|---|---|---|---|"]
        out += [f"| [{b.tag}] {b.what} | {_fmt(b.ours)} | {_fmt(b.theirs)} | {b.unit} | "
                f"{b.ratio:.2f} |" for b in rep.bench]
    else:
        out.append("no benchmark lines found")
    return "\n".join(out)


def _log_files(paths: Sequence[str]) -> List[Path]:
    files: List[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.suffix == ".log")
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"gpu_table: no such log file or directory: {p}")
    return files


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or any(a in ("-h", "--help") for a in args):
        print(next(line for line in __doc__.splitlines() if line.startswith("Run:")))
        return 0 if args else 2
    try:
        files = _log_files(args)
    except FileNotFoundError as e:
        print(e, file=sys.stderr)
        return 2
    rep = Report()
    for f in files:
        parse(f.read_text(errors="replace").splitlines(), rep)
    print(table(rep))
    return 0


if __name__ == "__main__":
    sys.exit(main())

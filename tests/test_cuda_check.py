"""The one-shot GPU check (bench/gpu_check.sh) on any machine: its argument
handling and plan (--dry-run), and the table its logs are turned into
(bench/gpu_table.py), on a made-up log."""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"


def _load_table():
    spec = importlib.util.spec_from_file_location("gpu_table", ROOT / "bench" / "gpu_table.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


gpu_table = _load_table()

FAKE_BENCH = """\
=== bench: python3 -m pytest -q -s bench/test_bench_cuda.py (limit 200s)
bench/test_bench_cuda.py
[cuda] gemm bf16 a@b 4096x4096x4096: fastlm 227.0 TFLOP/s (0.605 ms), torch 721.3 TFLOP/s (0.191 ms), ours/torch 0.32
.
[cuda] attention bf16 causal fwd+bwd B=8 H=12 T=1024 D=64: fastlm 66.0 TFLOP/s (1.250 ms), torch 105.0 TFLOP/s (0.785 ms), ours/torch 0.63
\x1b[32m.\x1b[0m[cuda] cross_entropy fwd+bwd fp32 (8192, 50304): fastlm 1630.0 GB/s (2.023 ms), torch 680.0 GB/s (4.849 ms), ours/torch 2.40
[cuda] device-to-device copy: 4312 GB/s (1074 MB)
[cuda]   gelu fwd: 97% of copy bandwidth
[model] gpt2-124M train bf16 B16 T1024: fastlm 1.2e5 tok/s (136.5 ms), torch 3.52e5 tok/s (46.5 ms), ours/torch 0.34
9 passed, 1 skipped in 61.02s
"""
FAKE_SANITIZERS = """\
=== memcheck: env FASTLM_CUDA_SYNC=1 compute-sanitizer --tool memcheck ... (limit 90s)
========= COMPUTE-SANITIZER
14 passed, 480 deselected in 3.10s
========= ERROR SUMMARY: 0 errors
=== initcheck: env FASTLM_CUDA_SYNC=1 compute-sanitizer --tool initcheck ... (limit 90s)
========= Uninitialized __global__ memory read of size 4 bytes
============================= 1 failed, 13 passed, 480 deselected in 5.20s =============================
========= ERROR SUMMARY: 2 errors
"""
FAKE_STAGES = """\
[stage] install: ok 4s
[stage] memcheck: ok 6s
[stage] initcheck: failed (exit 3) 9s
[stage] racecheck: timed out after 90s 90s
"""


def test_parse_bench_lines():
    rep = gpu_table.parse(FAKE_BENCH.splitlines())
    assert [(b.tag, b.what, b.ratio) for b in rep.bench] == [
        ("cuda", "gemm bf16 a@b 4096x4096x4096", 0.32),
        ("cuda", "attention bf16 causal fwd+bwd B=8 H=12 T=1024 D=64", 0.63),
        ("cuda", "cross_entropy fwd+bwd fp32 (8192, 50304)", 2.40),
        ("model", "gpt2-124M train bf16 B16 T1024", 0.34),
    ]
    first = rep.bench[0]
    assert (first.ours, first.theirs, first.unit) == (227.0, 721.3, "TFLOP/s")
    assert rep.bench[3].ours == 1.2e5 and rep.bench[3].unit == "tok/s"
    assert rep.copy == "4312 GB/s (1074 MB)"
    assert rep.notes == {"bench": ["9 passed, 1 skipped in 61.02s"]}


def test_parse_stages_and_their_summaries():
    rep = gpu_table.parse(FAKE_STAGES.splitlines())
    assert [(s.name, s.status, s.seconds) for s in rep.stages] == [
        ("install", "ok", 4), ("memcheck", "ok", 6), ("initcheck", "failed (exit 3)", 9),
        ("racecheck", "timed out after 90s", 90)]
    gpu_table.parse(FAKE_SANITIZERS.splitlines(), rep)
    assert rep.notes == {
        "memcheck": ["14 passed, 480 deselected in 3.10s", "sanitizer: 0 errors"],
        "initcheck": ["1 failed, 13 passed, 480 deselected in 5.20s", "sanitizer: 2 errors"]}
    assert rep.bench == [] and rep.copy is None


def test_table_has_a_row_per_stage_and_benchmark_line():
    rep = gpu_table.parse(FAKE_STAGES.splitlines())
    gpu_table.parse(FAKE_SANITIZERS.splitlines(), rep)
    gpu_table.parse(FAKE_BENCH.splitlines(), rep)
    lines = gpu_table.table(rep).splitlines()
    assert ("| initcheck | failed (exit 3) | 9 s | 1 failed, 13 passed, 480 deselected in 5.20s; "
            "sanitizer: 2 errors |") in lines
    assert "| racecheck | timed out after 90s | 90 s |  |" in lines
    assert "| [cuda] gemm bf16 a@b 4096x4096x4096 | 227.0 | 721.3 | TFLOP/s | 0.32 |" in lines
    assert "| [model] gpt2-124M train bf16 B16 T1024 | 120000.0 | 352000.0 | tok/s | 0.34 |" in lines
    assert "large-copy bandwidth: 4312 GB/s (1074 MB)" in lines
    assert "bench: 9 passed, 1 skipped in 61.02s" in lines  # no [stage] line for bench here
    assert sum(line.startswith("| [") for line in lines) == 4


def test_table_of_nothing_says_so():
    assert gpu_table.table(gpu_table.parse(["unrelated", ""])) == "no benchmark lines found"


def test_table_main_reads_a_log_directory(tmp_path, capsys):
    (tmp_path / "bench.log").write_text(FAKE_BENCH)
    (tmp_path / "sanitizers.log").write_text(FAKE_SANITIZERS)
    (tmp_path / "stages.log").write_text(FAKE_STAGES)
    (tmp_path / "notes.txt").write_text("[cuda] x y: fastlm 1 GB/s, torch 1 GB/s, ours/torch 9.99\n")
    assert gpu_table.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| [cuda] cross_entropy fwd+bwd fp32 (8192, 50304) |" in out
    assert "9.99" not in out  # only .log files are read from a directory
    # Each log's summaries go to its own stages, whatever order the files are read in.
    assert "| memcheck | ok | 6 s | 14 passed, 480 deselected in 3.10s; sanitizer: 0 errors |" in out
    assert gpu_table.main([str(tmp_path / "missing.log")]) == 2
    assert "no such log file" in capsys.readouterr().err


needs_bash = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils' timeout")


def run_script(*args, cwd=None):
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd)


@needs_bash
@pytest.mark.parametrize("args, message", [
    (["--budget", "x"], "--budget must be a positive whole number"),
    (["--budget", "0"], "--budget must be a positive whole number"),
    (["--budget"], "--budget needs a number"),
    (["--only", "tests,foo"], "unknown stage 'foo'"),
    (["--wheel", "/nonexistent/fastlm.whl"], "no such file"),
    (["--frobnicate"], "unknown argument '--frobnicate'"),
])
def test_script_refuses_bad_arguments(args, message, tmp_path):
    r = run_script("--logs", str(tmp_path / "logs"), *args)
    assert r.returncode == 2
    assert message in r.stderr and "usage" not in r.stdout
    assert "[dry-run]" not in r.stdout


@needs_bash
def test_script_refuses_a_file_that_is_not_a_wheel(tmp_path):
    f = tmp_path / "fastlm.tar.gz"
    f.write_text("")
    r = run_script("--wheel", str(f), "--logs", str(tmp_path / "logs"))
    assert r.returncode == 2 and "is not a .whl file" in r.stderr


@needs_bash
def test_script_dry_run_plans_every_stage_within_budget(tmp_path):
    r = run_script("--dry-run", "--budget", "100", "--logs", str(tmp_path / "logs"))
    assert r.returncode == 0, r.stderr
    plan = [line for line in r.stdout.splitlines() if line.startswith("[dry-run]")]
    names = [line.split()[1] for line in plan]
    assert names == ["install", "tests", "tests-nccl", "tests-attn-next", "tests-wgmma-next", "tests-pointwise",
                     "tests-pointwise-next", "models", "graphs", "memcheck",
                     "initcheck", "synccheck", "racecheck", "memcheck-wgmma", "memcheck-wgmma-next",
                     "memcheck-attn-next", "racecheck-attn-next", "memcheck-pointwise-next",
                     "racecheck-pointwise-next", "bench", "bench-wgmma",
                     "bench-wgmma-next", "bench-attn-next", "bench-pointwise-next"]
    limits = [int(line.split()[2].strip("():s")) for line in plan]
    # no stage may outlast the budget
    assert limits == [100, 100, 60, 60, 90, 90, 90, 100, 100, 90, 90, 90, 90, 60, 60, 60, 60, 60, 60, 100,
                      90, 90, 60, 60], plan
    assert "-DFASTLM_CUDA=ON" in r.stdout and "-k small" in r.stdout
    # The sanitizers run every op file's test_small_* functions on the GPU alone.
    memcheck = plan[names.index("memcheck")]
    assert "FASTLM_TEST_BACKENDS=cuda" in memcheck and "tests/test_softmax.py" in memcheck
    assert "bench/test_bench_cuda.py" in r.stdout
    graphs = plan[names.index("graphs")]
    assert "FASTLM_CUDA_GRAPHS=1" in graphs and "tests/test_decode_loop.py" in graphs and "sample_b1" in graphs


@needs_bash
def test_script_dry_run_with_a_wheel_installs_it(tmp_path):
    wheel = tmp_path / "fastlm-0.1.0-cp312-cp312-linux_x86_64.whl"
    wheel.write_text("")
    r = run_script("--dry-run", "--wheel", str(wheel), "--only", "install,tests",
                   "--logs", str(tmp_path / "logs"))
    assert r.returncode == 0, r.stderr
    plan = [line for line in r.stdout.splitlines() if line.startswith("[dry-run]")]
    assert len(plan) == 7  # install, tests, tests-nccl, tests-attn-next, tests-wgmma-next, tests-pointwise(-next)
    assert "pip install" in plan[0] and str(wheel) in plan[0] and "cmake" not in r.stdout
    assert "FASTLM_TEST_BACKENDS=cuda" in plan[1] and "tests/test_matmul.py" in plan[1]
    assert "tests/test_cuda_table.py" in plan[1] and "tests/test_distributed.py" in plan[2]
    assert "FASTLM_CUDA_GEMM=wgmma-next" in plan[4]


def test_table_help(capsys):
    assert gpu_table.main(["--help"]) == 0
    assert capsys.readouterr().out.startswith("Run: python3 bench/gpu_table.py")
    assert gpu_table.main([]) == 2

"""The release-wheel tooling (scripts/, [tool.cibuildwheel], CMake's processor
check) without building a wheel: bad arguments are refused with a message
naming them, the smoke check rejects a source-tree import, and the build matrix
is the one the README promises. scripts/check_wheel.sh builds and checks a real
wheel."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"


def run(args, **kw):
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120, **kw)


@pytest.mark.parametrize("script", ["build_wheel.sh", "check_wheel.sh"])
@pytest.mark.parametrize("args, message", [
    (["--bogus"], "unknown argument '--bogus'"),
    (["--python"], "--python needs a value"),
    (["--cuda-archs", ""], "--cuda-archs needs a value"),
])
def test_scripts_refuse_bad_arguments(script, args, message):
    r = run(["bash", str(SCRIPTS / script), *args])
    assert r.returncode == 2
    assert message in r.stderr


@pytest.mark.parametrize("args, message", [
    (["--jobs", "0"], "--jobs must be a positive integer, got '0'"),
    (["--jobs", "two"], "--jobs must be a positive integer, got 'two'"),
    (["--out"], "--out needs a value"),
    (["--python", "no-such-python"], "no interpreter 'no-such-python'"),
])
def test_build_wheel_refuses_bad_values(args, message):
    r = run(["bash", str(SCRIPTS / "build_wheel.sh"), *args])
    assert r.returncode == 2
    assert message in r.stderr


@pytest.mark.parametrize("script", ["build_wheel.sh", "check_wheel.sh"])
def test_help_is_the_header(script):
    r = run(["bash", str(SCRIPTS / script), "--help"])
    assert r.returncode == 0
    assert "--cpu-only" in r.stdout and "set -euo" not in r.stdout


def test_smoke_check_rejects_the_source_tree():
    # The smoke check must prove the wheel was imported; the tree on
    # PYTHONPATH (as in development) would hide a broken wheel.
    env = dict(os.environ, PYTHONPATH=str(ROOT / "python"))
    r = run([sys.executable, str(SCRIPTS / "wheel_smoke.py"), "--cpu-only"], env=env)
    assert r.returncode != 0
    assert "not from this environment's site-packages" in r.stderr


def test_smoke_check_refuses_bad_arguments():
    r = run([sys.executable, str(SCRIPTS / "wheel_smoke.py"), "--cuda", "--cpu-only"])
    assert r.returncode == 2
    assert "not allowed with argument" in r.stderr


def test_cibuildwheel_matrix():
    tomllib = pytest.importorskip("tomllib")
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["cibuildwheel"]
    assert cfg["build"] == ["cp310-*", "cp311-*", "cp312-*", "cp313-*"]
    assert cfg["archs"] == ["x86_64"]
    assert cfg["linux"]["manylinux-x86_64-image"] == "manylinux_2_28"
    assert cfg["linux"]["config-settings"]["cmake.define.FASTLM_CUDA"] == "ON"
    for cmd in (cfg["linux"]["before-all"], cfg["test-command"]):
        path = cmd.split("{project}/", 1)[1].split()[0]
        assert (ROOT / path).is_file(), f"'{cmd}' names a missing script"


@pytest.mark.skipif(shutil.which("cibuildwheel") is None, reason="cibuildwheel is not installed")
def test_cibuildwheel_identifiers():
    r = run(["cibuildwheel", "--print-build-identifiers", "--platform", "linux", "."])
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [f"cp3{m}-manylinux_x86_64" for m in (10, 11, 12, 13)]


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
def test_cmake_refuses_other_processors(tmp_path):
    r = run(["cmake", "-S", str(ROOT), "-B", str(tmp_path / "build"),
             "-DCMAKE_SYSTEM_NAME=Linux", "-DCMAKE_SYSTEM_PROCESSOR=aarch64"])
    assert r.returncode != 0
    assert "fastlm builds for x86-64 only" in r.stderr and "aarch64" in r.stderr

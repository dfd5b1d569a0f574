#!/usr/bin/env bash
# CI check of the release wheel: build it (scripts/build_wheel.sh), install it
# into a fresh virtual environment whose PATH reaches no compiler, and run
# scripts/wheel_smoke.py there (import, build_info, every ISA, a few training
# steps, `fastlm info`).
#
#   scripts/check_wheel.sh [--cuda-archs LIST | --cpu-only | --full] [--python PY] [--keep DIR]
#
# By default the CUDA kernels are built for sm_90a only, which checks the CUDA
# build, the static runtime and the packaging at a fraction of the full build's
# cost (without nvcc on PATH it says so and checks a CPU-only wheel); --full
# builds the release arch list, --cpu-only a wheel without CUDA.
# --keep DIR leaves the wheel there (otherwise a temporary folder is removed).
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"

build_args=(--no-sdist --cuda-archs "90a-real")
smoke_args=(--cuda)
py=python3
keep=""
asked_cuda=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --cuda-archs|--python|--keep)
      [[ $# -ge 2 && -n "$2" ]] || { echo "check_wheel: $1 needs a value" >&2; exit 2; } ;;&
    --cuda-archs) build_args=(--no-sdist --cuda-archs "$2"); smoke_args=(--cuda); asked_cuda=1; shift 2 ;;
    --full) build_args=(--no-sdist); smoke_args=(--cuda); asked_cuda=1; shift ;;
    --cpu-only) build_args=(--no-sdist --cpu-only); smoke_args=(--cpu-only); shift ;;
    --python) py="$2"; shift 2 ;;
    --keep) keep="$2"; shift 2 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "check_wheel: unknown argument '$1'" >&2; exit 2 ;;
  esac
done

if [[ ${smoke_args[0]} == --cuda && $asked_cuda == 0 ]] && ! command -v nvcc >/dev/null && [[ -z "${CUDACXX:-}" ]]; then
  echo "check_wheel: no nvcc on PATH: checking a CPU-only wheel" >&2
  build_args=(--no-sdist --cpu-only)
  smoke_args=(--cpu-only)
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
out="${keep:-$tmp/wheelhouse}"
t0=$SECONDS
scripts/build_wheel.sh --python "$py" --out "$out" "${build_args[@]}"
build_s=$((SECONDS - t0))
wheel="$(ls -t "$out"/fastlm-*manylinux*.whl | head -1)"

# The tag auditwheel gave: manylinux_2_XX, XX at most 34 (see README, "Wheels").
tag="$(basename "$wheel" .whl)"
tag="${tag##*-}"
if [[ ! $tag =~ ^manylinux_2_([0-9]+)_x86_64 ]] || (( BASH_REMATCH[1] > 34 )); then
  echo "check_wheel: FAIL: platform tag '$tag' is not manylinux_2_34 or lower" >&2
  exit 1
fi

"$py" -m venv "$tmp/venv"
venv_path="$tmp/venv/bin"
for cc in cc c++ gcc g++ clang clang++ nvcc ld; do
  if found="$(env -i PATH="$venv_path" /bin/bash -c "command -v $cc")"; then
    echo "check_wheel: FAIL: '$cc' is reachable from the test PATH ($found)" >&2
    exit 1
  fi
done
t0=$SECONDS
# --only-binary: nothing may be built from source, fastlm least of all.
env PATH="$venv_path" "$venv_path/python" -m pip install -q --only-binary :all: "$wheel"
install_s=$((SECONDS - t0))

# From an empty folder, so `import fastlm` cannot find the source tree.
(cd "$tmp" && env PATH="$venv_path" "$venv_path/python" "$repo/scripts/wheel_smoke.py" "${smoke_args[@]}")

size_kb=$(( $(stat -c %s "$wheel") / 1024 ))
echo "check_wheel: OK: $(basename "$wheel") (${size_kb} KiB); build ${build_s}s, install ${install_s}s"

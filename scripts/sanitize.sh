#!/usr/bin/env bash
# Build fastlm with AddressSanitizer + UndefinedBehaviorSanitizer (-O1 -g, CPU
# only) in its own build directory and run the test suite under it. Any
# sanitizer report ends the process that made it, so it fails its test.
#
#   scripts/sanitize.sh                   # the whole suite
#   scripts/sanitize.sh tests/test_x.py   # arguments go to pytest instead of "tests"
#
# The module is built into a copy of the package (build/sanitize/python/fastlm),
# never over the regular build's python/fastlm/_C*.so.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${FASTLM_SANITIZE_BUILD:-$root/build/sanitize}
pkg=$build/python/fastlm
cxx=${CXX:-g++}

mkdir -p "$pkg"
# Python sources copied fresh each run (the module stays in place for ninja).
find "$pkg" -maxdepth 1 -name '*.py' -delete
cp "$root"/python/fastlm/*.py "$pkg"/

san="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
cmake -S "$root" -B "$build" -G Ninja \
  -DCMAKE_CXX_COMPILER="$cxx" \
  -Dpybind11_DIR="$(python -m pybind11 --cmakedir)" \
  -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="-O1 -g" \
  -DCMAKE_CXX_FLAGS="$san" -DCMAKE_MODULE_LINKER_FLAGS="$san" -DCMAKE_SHARED_LINKER_FLAGS="$san" \
  -DFASTLM_CUDA=OFF -DFASTLM_MODULE_DIR="$pkg" \
  ${CCACHE:+-DCMAKE_CXX_COMPILER_LAUNCHER=ccache} >/dev/null
cmake --build "$build"

# Python is not built with ASan, so libasan must be loaded first, and
# libstdc++ right after it: otherwise the first C++ exception thrown through
# the module aborts in __cxa_throw. Leak detection is off: the interpreter
# keeps objects alive until exit by design. allocator_may_return_null lets a
# huge allocation fail as it does without ASan (a MemoryError), instead of
# ASan ending the process.
asan=$("$cxx" -print-file-name=libasan.so)
stdcxx=$("$cxx" -print-file-name=libstdc++.so)
for lib in "$asan" "$stdcxx"; do
  case $lib in /*) ;; *) echo "sanitize: $cxx does not know where $lib is (is libasan installed?)" >&2; exit 2 ;; esac
done
export LD_PRELOAD="$asan:$stdcxx${LD_PRELOAD:+:$LD_PRELOAD}"
export ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1:abort_on_error=1:${ASAN_OPTIONS:-}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:${UBSAN_OPTIONS:-}"
export PYTHONPATH="$build/python${PYTHONPATH:+:$PYTHONPATH}"
export FASTLM_SANITIZED=1  # tests that need an address-space limit skip (ASan reserves terabytes)

cd "$root"
if [ $# -eq 0 ]; then set -- tests; fi
python -c 'import fastlm, sys; sys.exit(0 if "/build/" in fastlm._C.__file__ else "sanitize: wrong fastlm._C: " + fastlm._C.__file__)'
exec python -m pytest -q -p no:cacheprovider "$@"

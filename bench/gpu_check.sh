#!/usr/bin/env bash
# The one-shot GPU check: on a fresh machine with an NVIDIA GPU, the CUDA toolkit
# and PyTorch, install fastlm (a prebuilt wheel, or a build of this checkout),
# run the CUDA tests, compute-sanitizer's four tools on the small tests and the
# CUDA benchmarks (and the decode step's opt-in CUDA graphs), then print one table of stage results and ours/torch ratios
# (bench/gpu_table.py). Every stage has its own time limit and the whole run a
# budget, so that a hang costs one stage, not the machine's lease.
#
#   bench/gpu_check.sh [--wheel FILE] [--budget SECONDS] [--logs DIR]
#                      [--only STAGE,...] [--dry-run]
#
# Stages: install, tests, sanitizers, bench, models. Logs (one .log per stage and
# summary.md) go to --logs, else $OUT when set, else ./gpu-check-logs.
# FASTLM_CHECK_CUDA_ARCHS sets the architectures of a build (default 90a-real).
# Exit status: 0 when every stage that ran passed, 1 when one failed, 2 on a
# bad argument.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

usage() { sed -n '9,10p' "$0" | sed 's/^# \{0,3\}//' >&2; }
die() { echo "gpu_check: $*" >&2; usage; exit 2; }

WHEEL="" BUDGET=360 LOGS="${OUT:-./gpu-check-logs}" ONLY="install,tests,sanitizers,bench,models" DRY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --wheel) [ $# -ge 2 ] || die "--wheel needs a file"; WHEEL="$2"; shift 2 ;;
    --budget) [ $# -ge 2 ] || die "--budget needs a number of seconds"; BUDGET="$2"; shift 2 ;;
    --logs) [ $# -ge 2 ] || die "--logs needs a directory"; LOGS="$2"; shift 2 ;;
    --only) [ $# -ge 2 ] || die "--only needs a comma-separated list of stages"; ONLY="$2"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument '$1'" ;;
  esac
done
[[ "$BUDGET" =~ ^[1-9][0-9]*$ ]] || die "--budget must be a positive whole number of seconds, got '$BUDGET'"
if [ -n "$WHEEL" ]; then
  [ -f "$WHEEL" ] || die "--wheel: no such file '$WHEEL'"
  [[ "$WHEEL" == *.whl ]] || die "--wheel: '$WHEEL' is not a .whl file"
fi
IFS=',' read -r -a STAGES <<< "$ONLY"
[ ${#STAGES[@]} -gt 0 ] || die "--only: no stage named"
for s in "${STAGES[@]}"; do
  case "$s" in install|tests|sanitizers|bench|models) ;; *) die "--only: unknown stage '$s' (install, tests, sanitizers, bench, models)" ;; esac
done
wants() { [[ ",$ONLY," == *",$1,"* ]]; }

PY="${PYTHON:-python3}"
ARCHS="${FASTLM_CHECK_CUDA_ARCHS:-90a-real}"
mkdir -p "$LOGS" || die "--logs: cannot create '$LOGS'"
SUMMARY="$LOGS/summary.md"
STAGE_LOG="$LOGS/stages.log"
: > "$STAGE_LOG"
START=$SECONDS
FAILED=0
export PYTHONUNBUFFERED=1

# run_stage NAME LIMIT LOG CMD...: CMD under `timeout`, at most LIMIT seconds and
# never past the budget; its output goes to LOG (appended) and the terminal.
run_stage() {
  local name="$1" limit="$2" log="$3"
  shift 3
  local left=$((BUDGET - (SECONDS - START)))
  [ "$DRY" = 0 ] || left=$BUDGET  # a plan: nothing has run, whatever the clock says
  [ "$limit" -le "$left" ] || limit=$left
  if [ "$DRY" = 1 ]; then
    printf '[dry-run] %s (%ss): %s\n' "$name" "$limit" "$*"
    return 0
  fi
  if [ "$limit" -le 0 ]; then
    echo "[stage] $name: skipped (budget spent) 0s" | tee -a "$STAGE_LOG"
    FAILED=1
    return 1
  fi
  local t0=$SECONDS rc
  echo "=== $name: $* (limit ${limit}s)" >> "$log"
  timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$log"
  rc=${PIPESTATUS[0]}
  local status="ok"
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then status="timed out after ${limit}s";
  elif [ "$rc" != 0 ]; then status="failed (exit $rc)"; fi
  echo "[stage] $name: $status $((SECONDS - t0))s" | tee -a "$STAGE_LOG"
  [ "$rc" = 0 ] || FAILED=1
  return "$rc"
}

SITE="${TMPDIR:-/tmp}/fastlm-gpu-check-site"
if [ -n "$WHEEL" ]; then
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"
fi

if wants install; then
  if [ -n "$WHEEL" ]; then
    [ "$DRY" = 1 ] || rm -rf "$SITE"
    run_stage install 120 "$LOGS/install.log" \
      "$PY" -m pip install -q --no-deps --no-compile --target "$SITE" "$WHEEL"
  else
    run_stage install 300 "$LOGS/install.log" bash -c "
      cmake -S . -B build/gpu-check -G Ninja -DCMAKE_BUILD_TYPE=Release -DFASTLM_CUDA=ON \
        -DCMAKE_CUDA_ARCHITECTURES='$ARCHS' -Dpybind11_DIR=\$('$PY' -m pybind11 --cmakedir) \
        -DPython_EXECUTABLE=\$(command -v '$PY') >/dev/null &&
      cmake --build build/gpu-check -j \$(nproc)"
  fi
fi
if [ "$FAILED" != 0 ]; then
  "$PY" bench/gpu_table.py "$LOGS" | tee "$SUMMARY"
  exit 1  # nothing to test without an installed fastlm
fi
if [ "$DRY" = 0 ]; then
  # Which fastlm the later stages import, and whether it sees the GPU.
  "$PY" -c 'import fastlm, torch; print("fastlm", fastlm.__file__, fastlm.build_info());
print("cuda_available", fastlm.cuda_available(), fastlm.cuda.device_name() if fastlm.cuda_available() else "");
print("torch", torch.__version__, torch.cuda.is_available())' 2>&1 | tee -a "$LOGS/install.log"
fi

PYTEST=("$PY" -m pytest -q -p no:cacheprovider)
# The op tests run every op on every backend (tests/conftest.py's `backend`
# fixture); FASTLM_TEST_BACKENDS=cuda keeps them to the GPU here. Their
# test_small_* functions (and test_cuda_table.py's) are the sanitizers' set.
OP_TESTS=(tests/test_matmul.py tests/test_matmul_bf16.py tests/test_softmax.py tests/test_layernorm.py
          tests/test_gelu.py tests/test_attention.py tests/test_dropout.py tests/test_cross_entropy.py
          tests/test_lstm_cell.py tests/test_gru_cell.py tests/test_adamw.py tests/test_sum_squares.py
          tests/test_cuda_table.py)
ON_GPU=(env FASTLM_TEST_BACKENDS=cuda)
if wants tests; then
  run_stage tests 150 "$LOGS/tests.log" "${ON_GPU[@]}" "${PYTEST[@]}" -n 8 --timeout 90 \
    "${OP_TESTS[@]}" tests/test_cuda_build.py tests/test_cuda_check.py tests/test_ops_arguments.py \
    tests/test_device_models.py
  # NCCL's first contact (one rank, in one process: no MPI here) and ZeRO-1 on a device model.
  run_stage tests-nccl 60 "$LOGS/tests.log" "${PYTEST[@]}" --timeout 90 tests/test_distributed.py \
    -k "nccl or zero1_in_one_process"
  # The opt-in attention forward (FASTLM_CUDA_ATTENTION=next): the attention tests again.
  run_stage tests-attn-next 60 "$LOGS/tests.log" "${ON_GPU[@]}" FASTLM_CUDA_ATTENTION=next \
    "${PYTEST[@]}" -n 8 --timeout 90 tests/test_attention.py tests/test_dropout.py -k attention
  # The opt-in Hopper GEMM (FASTLM_CUDA_GEMM=wgmma-next, every layout): the matmul tests on it.
  run_stage tests-wgmma-next 90 "$LOGS/tests.log" "${ON_GPU[@]}" FASTLM_CUDA_GEMM=wgmma-next \
    "${PYTEST[@]}" -n 8 --timeout 90 tests/test_matmul.py tests/test_matmul_bf16.py tests/test_cuda_table.py \
    -k "(matmul_tf32 or matmul_bfloat16 or matmul_deterministic or small_matmul) and not gemm_path"
  # The memory-bound kernels, default then opt-in (FASTLM_CUDA_POINTWISE=next:
  # warp-per-row LayerNorm, GELU forward, the fused bf16 classifier).
  run_stage tests-pointwise 90 "$LOGS/tests.log" "${ON_GPU[@]}" "${PYTEST[@]}" -n 8 --timeout 90 \
    tests/test_cuda_pointwise.py
  run_stage tests-pointwise-next 90 "$LOGS/tests.log" "${ON_GPU[@]}" FASTLM_CUDA_POINTWISE=next \
    "${PYTEST[@]}" -n 8 --timeout 90 tests/test_cuda_pointwise.py tests/test_device_models.py
fi

if wants models; then
  # GPT-2 124M training and sampling on the GPU beside torch ([model] lines), early:
  # the models use every default kernel, and their figures matter most.
  run_stage models 240 "$LOGS/bench.log" "${PYTEST[@]}" -s bench/test_bench_cuda_models.py
  # The opt-in CUDA graphs of the decode step (FASTLM_CUDA_GRAPHS=1): the generation
  # tests on the GPU, then the sample b1 lines again (labelled "graphs").
  run_stage graphs 150 "$LOGS/bench.log" env FASTLM_CUDA_GRAPHS=1 bash -c \
    "${PYTEST[*]} -n 8 --timeout 90 tests/test_decode_loop.py tests/test_device_models.py \
       -k 'cuda or graphs' && ${PYTEST[*]} -s bench/test_bench_cuda_models.py -k sample_b1"
fi

if wants sanitizers; then
  # One kernel launch at a time (FASTLM_CUDA_SYNC=1) so a report names its kernel.
  for tool in memcheck initcheck synccheck racecheck; do
    run_stage "$tool" 90 "$LOGS/sanitizers.log" "${ON_GPU[@]}" FASTLM_CUDA_SYNC=1 \
      compute-sanitizer --tool "$tool" --error-exitcode 3 --print-limit 20 \
      "${PYTEST[@]}" -x "${OP_TESTS[@]}" -k small
  done
  # The opt-in Hopper GEMMs (FASTLM_CUDA_GEMM=wgmma, wgmma-next) under memcheck too.
  run_stage memcheck-wgmma 60 "$LOGS/sanitizers.log" "${ON_GPU[@]}" FASTLM_CUDA_SYNC=1 \
    FASTLM_CUDA_GEMM=wgmma compute-sanitizer --tool memcheck --error-exitcode 3 \
    --print-limit 20 "${PYTEST[@]}" -x tests/test_matmul.py tests/test_cuda_table.py -k small_matmul
  run_stage memcheck-wgmma-next 60 "$LOGS/sanitizers.log" "${ON_GPU[@]}" FASTLM_CUDA_SYNC=1 \
    FASTLM_CUDA_GEMM=wgmma-next compute-sanitizer --tool memcheck --error-exitcode 3 \
    --print-limit 20 "${PYTEST[@]}" -x tests/test_matmul.py tests/test_cuda_table.py -k small_matmul
  # And the opt-in attention forward under memcheck and racecheck.
  for tool in memcheck racecheck; do
    run_stage "$tool-attn-next" 60 "$LOGS/sanitizers.log" "${ON_GPU[@]}" FASTLM_CUDA_SYNC=1 \
      FASTLM_CUDA_ATTENTION=next compute-sanitizer --tool "$tool" --error-exitcode 3 \
      --print-limit 20 "${PYTEST[@]}" -x tests/test_attention.py -k small_attention
  done
  # And the opt-in memory-bound kernels and fused classifier.
  for tool in memcheck racecheck; do
    run_stage "$tool-pointwise-next" 60 "$LOGS/sanitizers.log" "${ON_GPU[@]}" FASTLM_CUDA_SYNC=1 \
      FASTLM_CUDA_POINTWISE=next compute-sanitizer --tool "$tool" --error-exitcode 3 \
      --print-limit 20 "${PYTEST[@]}" -x tests/test_cuda_pointwise.py -k small
  done
fi

if wants bench; then
  run_stage bench 200 "$LOGS/bench.log" "${PYTEST[@]}" -s --benchmark-disable bench/test_bench_cuda.py
  # The bf16 GEMM lines again on the opt-in Hopper kernel, labelled [wgmma].
  run_stage bench-wgmma 90 "$LOGS/bench.log" env FASTLM_CUDA_GEMM=wgmma \
    "${PYTEST[@]}" -s --benchmark-disable bench/test_bench_cuda.py -k "gemm and bf16"
  # The opt-in Hopper GEMM: bf16 and TF32 lines labelled [wgmma-next].
  run_stage bench-wgmma-next 90 "$LOGS/bench.log" env FASTLM_CUDA_GEMM=wgmma-next \
    "${PYTEST[@]}" -s --benchmark-disable bench/test_bench_cuda.py -k "gemm and (bf16 or tf32)"
  # The opt-in attention forward: lines labelled attention bf16[next].
  run_stage bench-attn-next 60 "$LOGS/bench.log" env FASTLM_CUDA_ATTENTION=next \
    "${PYTEST[@]}" -s --benchmark-disable bench/test_bench_cuda.py -k attention
  # The opt-in memory-bound kernels on buffers above L2: lines labelled [next].
  run_stage bench-pointwise-next 60 "$LOGS/bench.log" env FASTLM_CUDA_POINTWISE=next \
    "${PYTEST[@]}" -s --benchmark-disable bench/test_bench_cuda.py -k "memory_bound_large or cross_entropy_bf16"
fi


if [ "$DRY" = 0 ]; then
  echo "[stage] total: $([ "$FAILED" = 0 ] && echo ok || echo 'not clean') $((SECONDS - START))s" \
    >> "$STAGE_LOG"
  "$PY" bench/gpu_table.py "$LOGS" | tee "$SUMMARY"
fi
exit "$FAILED"

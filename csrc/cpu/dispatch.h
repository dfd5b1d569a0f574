// Run-time choice of the CPU kernel table, and the OpenMP thread count.
#pragma once
#include <string>
#include <vector>

#include "kernels.h"

namespace fastlm {
namespace cpu {

// ISAs this CPU and OS can run, lowest first: "generic", then "avx2", "avx512",
// "avx512bf16" (avx512 plus a bfloat16 GEMM on AVX512_BF16).
std::vector<std::string> available_isas();
// The active table. The first call picks the best available ISA, or the one
// named by FASTLM_CPU_ISA (std::invalid_argument if unknown or unsupported).
const Kernels& kernels();
// The table a model computing its GEMMs in `precision` uses: kernels(), or
// for kBF16 its mixed-precision variant (every GEMM in bfloat16), which only
// avx512bf16 has (std::invalid_argument on any other ISA). Its attention runs
// in float32 where the GEMMs run on AMX tiles (cpu/amx.h), unless
// bf16_attention (the ops' precision="bf16").
const Kernels& kernels_for(GemmPrecision precision, bool bf16_attention = false);
// Switch tables (tests use this to run every ISA in one process).
void set_isa(const std::string& name);

// The kernels' thread count, one for the whole process (as PyTorch's): set
// from any thread, seen by all. It starts at OpenMP's default
// (OMP_NUM_THREADS, else the cores), at most kMaxThreads: far above any core
// count, far below a team libgomp fails to create (it then ends the process).
constexpr int kMaxThreads = 1024;
//
// A child forked after the threads started runs on one thread: OpenMP's
// workers do not survive fork(), and a team of more would wait for them
// forever.
int num_threads();
// std::invalid_argument unless 1 <= n <= kMaxThreads. Starts the team of n
// now, after trying n - 1 threads itself: std::runtime_error, the count
// unchanged, when the system refuses one (libgomp would end the process),
// or when called with n > 1 in such a forked child.
void set_num_threads(int n);

}  // namespace cpu
}  // namespace fastlm

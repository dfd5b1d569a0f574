// Run-time choice of the CPU kernel table, and the OpenMP thread count.
#pragma once
#include <string>
#include <vector>

#include "kernels.h"

namespace fastlm {
namespace cpu {

// ISAs this CPU and OS can run, lowest first: "generic", then "avx2", "avx512".
std::vector<std::string> available_isas();
// The active table. The first call picks the best available ISA, or the one
// named by FASTLM_CPU_ISA (std::invalid_argument if unknown or unsupported).
const Kernels& kernels();
// Switch tables (tests use this to run every ISA in one process).
void set_isa(const std::string& name);

int num_threads();
void set_num_threads(int n);

}  // namespace cpu
}  // namespace fastlm

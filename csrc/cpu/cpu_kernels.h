// Declarations of the CPU kernels of one ISA (namespace fastlm::cpu::FASTLM_ISA),
// one per entry of csrc/kernels.h, where each is documented; table.cpp collects them.
#pragma once
#include "kernels.h"
#include "cpu/parallel.h"

namespace fastlm {
namespace cpu {
namespace FASTLM_ISA {

FASTLM_KERNELS(FASTLM_DECLARE_KERNEL)

}  // namespace FASTLM_ISA
}  // namespace cpu
}  // namespace fastlm

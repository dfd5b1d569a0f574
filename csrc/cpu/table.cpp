// The kernel table of one ISA (this file is compiled once per ISA).
#include "cpu/cpu_kernels.h"

#define FASTLM_STR2(x) #x
#define FASTLM_STR(x) FASTLM_STR2(x)

namespace fastlm {
namespace cpu {
namespace FASTLM_ISA {

static Kernels make_table() {
  Kernels t{};
  t.name = FASTLM_STR(FASTLM_ISA);
#define FASTLM_SET_KERNEL(entry) t.entry = entry;
  FASTLM_KERNELS(FASTLM_SET_KERNEL)
#undef FASTLM_SET_KERNEL
  return t;
}

const Kernels* kernel_table() {
  static const Kernels table = make_table();
  return &table;
}

}  // namespace FASTLM_ISA
}  // namespace cpu
}  // namespace fastlm

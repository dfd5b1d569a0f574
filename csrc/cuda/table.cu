// The CUDA kernel table: the float32 kernels behind csrc/kernels.h's
// interface, every pointer a device pointer.
#include "cuda/cuda_kernels.h"

namespace fastlm {
namespace cuda {

// The GPU GEMM stages B through shared memory on every call: there is
// nothing to pre-pack, so callers get size 0 and leave b_packed null.
int64_t matmul_packed_size(int64_t, int64_t) { return 0; }
void matmul_pack_b(const GemmArgs&, float*) {}

static Kernels make_table() {
  Kernels t{};
  t.name = "cuda";
#define FASTLM_SET_KERNEL(entry) t.entry = entry;
  FASTLM_KERNELS(FASTLM_SET_KERNEL)
#undef FASTLM_SET_KERNEL
  return t;
}

const Kernels* kernel_table() {
  static const Kernels table = make_table();
  return &table;
}

}  // namespace cuda
}  // namespace fastlm

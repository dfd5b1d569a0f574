// The CUDA kernel table: the float32 kernels behind csrc/kernels.h's
// interface, every pointer a device pointer.
#include "cuda/cuda_kernels.h"

namespace fastlm {
namespace cuda {

namespace {
// The GPU GEMM stages B through shared memory on every call: there is
// nothing to pre-pack, so callers get size 0 and leave b_packed null.
int64_t matmul_packed_size(int64_t, int64_t) { return 0; }
void matmul_pack_b(const GemmArgs&, float*) {}
}  // namespace

const Kernels* kernel_table() {
  static const Kernels table = {
      "cuda",
      matmul,
      matmul_packed_size,
      matmul_pack_b,
      bias_backward,
      embedding_forward,
      embedding_backward,
      zero,
      copy,
      residual_forward,
      sum_squares,
      softmax_forward,
      softmax_backward,
      layernorm_forward,
      layernorm_backward,
      gelu_forward,
      gelu_backward,
      attention_forward,
      attention_backward,
      cross_entropy,
      lstm_cell_forward,
      lstm_cell_backward,
      gru_cell_forward,
      gru_cell_backward,
      adamw,
      sgd,
  };
  return &table;
}

}  // namespace cuda
}  // namespace fastlm

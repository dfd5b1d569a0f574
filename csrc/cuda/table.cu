// The CUDA kernel table: the float32 kernels behind csrc/kernels.h's
// interface, every pointer a device pointer.
#include "cuda/cuda_kernels.h"

namespace fastlm {
namespace cuda {

const Kernels* kernel_table() {
  static const Kernels table = {
      "cuda",
      matmul,
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

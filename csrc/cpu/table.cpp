// The kernel table of one ISA (this file is compiled once per ISA).
#include "cpu/cpu_kernels.h"

#define FASTLM_STR2(x) #x
#define FASTLM_STR(x) FASTLM_STR2(x)

namespace fastlm {
namespace cpu {
namespace FASTLM_ISA {

const Kernels* kernel_table() {
  static const Kernels table = {
      FASTLM_STR(FASTLM_ISA),
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

}  // namespace FASTLM_ISA
}  // namespace cpu
}  // namespace fastlm

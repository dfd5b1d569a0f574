// The kernel table of one ISA (this file is compiled once per ISA).
#include "cpu/cpu_kernels.h"
#include "cpu/memory.h"

#define FASTLM_STR2(x) #x
#define FASTLM_STR(x) FASTLM_STR2(x)

namespace fastlm {
namespace cpu {
#if defined(FASTLM_ISA_AVX512BF16)
namespace avx512 { const Kernels* kernel_table(); }
#endif
namespace FASTLM_ISA {

#if defined(FASTLM_ISA_AVX512BF16)
// avx512's table with this ISA's GEMM, the one kernel AVX512_BF16 changes
// (only matmul.cpp is compiled for it: CMakeLists.txt).
static Kernels make_table() {
  Kernels t = *avx512::kernel_table();
  t.name = FASTLM_STR(FASTLM_ISA);
  t.matmul = matmul;
  t.gemm = gemm;
  t.matmul_packed_size = matmul_packed_size;
  t.matmul_pack_b = matmul_pack_b;
  t.bias_backward = bias_backward;
  return t;
}

void matmul_mixed(const GemmArgs& g);
void matmul_pack_b_mixed(const GemmArgs& g, float* packed);
void attention_forward_bf16(const AttentionArgs& a);
void attention_backward_bf16(const AttentionGradArgs& g);

// The table of a model in mixed precision: this one with every GEMM in
// bfloat16 (operands rounded while packed, so the weights' bfloat16 copies
// are made as they are packed, and float32 accumulation) and attention's
// products in bfloat16 (float32 softmax statistics); everything else,
// LayerNorm, softmax, cross-entropy and AdamW, in float32.
const Kernels* mixed_table() {
  static const Kernels table = [] {
    Kernels t = make_table();
    t.matmul = matmul_mixed;
    t.matmul_pack_b = matmul_pack_b_mixed;
    t.attention_forward = attention_forward_bf16;
    t.attention_backward = attention_backward_bf16;
    return t;
  }();
  return &table;
}
#else
static Kernels make_table() {
  Kernels t{};
  t.name = FASTLM_STR(FASTLM_ISA);
  t.device = "cpu";
  t.alloc = host_alloc, t.release = host_release, t.upload = host_copy, t.download = host_copy;
#define FASTLM_SET_KERNEL(entry) t.entry = entry;
  FASTLM_KERNELS(FASTLM_SET_KERNEL)
#undef FASTLM_SET_KERNEL
  return t;
}
#endif

const Kernels* kernel_table() {
  static const Kernels table = make_table();
  return &table;
}

}  // namespace FASTLM_ISA
}  // namespace cpu
}  // namespace fastlm

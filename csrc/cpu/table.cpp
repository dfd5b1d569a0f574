// The kernel table of one ISA (this file is compiled once per ISA).
#include "cpu/cpu_kernels.h"
#include "cpu/memory.h"
#if defined(FASTLM_ISA_AVX512BF16)
#include "cpu/amx.h"
#endif

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

// Attention's products in bfloat16 on vdpbf16ps pay only where it outruns
// the float32 FMA: on Zen 4 it does 2.3 times the FMA's multiply-adds a
// cycle, on Intel's Sapphire Rapids half (their bfloat16 engine is AMX). So
// where the GEMMs run on AMX tiles, attention computes in float32.
void attention_forward_mixed(const AttentionArgs& a) {
  if (amx_enabled()) avx512::kernel_table()->attention_forward(a);
  else attention_forward_bf16(a);
}
void attention_backward_mixed(const AttentionGradArgs& g) {
  if (amx_enabled()) avx512::kernel_table()->attention_backward(g);
  else attention_backward_bf16(g);
}

// The tables of mixed precision: this one with every GEMM in bfloat16
// (operands rounded while packed, so the weights' bfloat16 copies are made as
// they are packed, and float32 accumulation) and attention's products in
// bfloat16 (float32 softmax statistics); everything else, LayerNorm,
// softmax, cross-entropy and AdamW, in float32. A model's table (mixed_table)
// runs attention as above, in float32 where the GEMMs run on AMX tiles; the
// ops' (bf16_products_table) always in bfloat16, as precision="bf16" promises.
static Kernels make_mixed_table(bool bf16_attention) {
  Kernels t = make_table();
  t.matmul = matmul_mixed;
  t.matmul_pack_b = matmul_pack_b_mixed;
  t.attention_forward = bf16_attention ? attention_forward_bf16 : attention_forward_mixed;
  t.attention_backward = bf16_attention ? attention_backward_bf16 : attention_backward_mixed;
  return t;
}
const Kernels* mixed_table() {
  static const Kernels table = make_mixed_table(false);
  return &table;
}
const Kernels* bf16_products_table() {
  static const Kernels table = make_mixed_table(true);
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

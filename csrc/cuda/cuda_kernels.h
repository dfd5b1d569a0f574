// The CUDA kernels, host side: the float32 entries of the `Kernels` table
// (csrc/kernels.h; same names, contracts and accumulation rules as the CPU's,
// every pointer a device pointer) plus the entry points the table has no room
// for (bfloat16 and TF32 GEMM, bfloat16 attention, int32 targets), which
// csrc/bindings/device.cpp calls directly. Plain C++: bfloat16 data travel as
// void pointers, so the host compiler never sees a CUDA header.
//
// All work is queued on the default stream; functions return before it
// finishes except where a value comes back to the host (cross_entropy,
// sum_squares). Launch errors throw std::runtime_error naming the kernel;
// arguments the kernels cannot honour throw std::invalid_argument.
#pragma once
#include <cstdint>

#include "kernels.h"

namespace fastlm {
namespace cuda {

enum class DType { kFloat32, kBFloat16 };

// The CUDA `Kernels` tables (name "cuda"): every GEMM in `precision`, on
// float32 data (kBF16 rounds the operands to bfloat16 and accumulates and
// writes float32: a model's mixed precision).
const Kernels* kernel_table(GemmPrecision precision = GemmPrecision::kExact);

// ---- The table's entries (float32; matmul is exact float32: FMA tiles, no
// TF32; matmul_packed_size is 0, as the GPU GEMM stages B itself) ----------
FASTLM_KERNELS(FASTLM_DECLARE_KERNEL)

// ---- GEMM in every precision --------------------------------------------
// kExact: float32 operands, FMA in float32 (the table's matmul).
// kTF32: float32 operands rounded to TF32 (10-bit mantissa) on tensor cores,
//        float32 accumulation; as torch with allow_tf32.
// kBF16: bfloat16 operands on tensor cores, float32 accumulation; c and bias
//        are bfloat16 too (c rounded once, after bias and accumulate).
using ::fastlm::GemmPrecision;  // csrc/kernels.h

// Same meaning as GemmArgs, with untyped pointers (float or bfloat16 per precision).
struct GemmDesc {
  GemmPrecision precision = GemmPrecision::kExact;
  const void* a = nullptr;
  const void* b = nullptr;
  const void* bias = nullptr;
  void* c = nullptr;
  int64_t m = 0, n = 0, k = 0;
  int64_t lda = 0, ldb = 0, ldc = 0;
  bool trans_a = false, trans_b = false, accumulate = false;
  // kBF16 only: c and bias are float32 (accumulate adds into float32 c), as a
  // mixed-precision model keeps float32 activations over bfloat16 operands.
  bool c_float = false;
};
void gemm(const GemmDesc& d);

// ---- Attention in float32 or bfloat16 ------------------------------------
// As AttentionArgs, with q, k, v, out (and dout, dq, dk, dv) of `dtype`; lse
// is float32 in both. head_dim <= kMaxHeadDim (std::invalid_argument above).
constexpr int64_t kMaxHeadDim = 128;
struct AttentionDesc {
  DType dtype = DType::kFloat32;
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* out = nullptr;
  float* lse = nullptr;
  Strides sq, sk, sv, so;
  int64_t batch = 0, heads = 0, seq_q = 0, seq_k = 0, head_dim = 0;
  bool causal = true;
  float dropout_p = 0.f;  // as AttentionArgs
  uint64_t dropout_seed = 0;
};
struct AttentionGradDesc {
  AttentionDesc fwd;  // out and lse as the forward produced them (read only)
  const void* dout = nullptr;
  void* dq = nullptr;
  void* dk = nullptr;
  void* dv = nullptr;
};
void attention_forward_ex(const AttentionDesc& d);
// The descriptor of AttentionArgs' tensors (their pointers, now of `dtype`).
AttentionDesc attention_desc(const AttentionArgs& a, DType dtype);
void attention_backward_ex(const AttentionGradDesc& d);

// ---- Cross-entropy with a range check ------------------------------------
// As the table's cross_entropy, with int32 or int64 targets (targets_are_int32).
// A target outside [0, vocab) that is not ignore_index is not read through: the
// row counts as ignored and *bad_row receives the first such row (else -1).
float cross_entropy_ex(const float* logits, const void* targets, bool targets_are_int32,
                       float* dlogits, int64_t rows, int64_t vocab, int64_t ignore_index,
                       float dloss, int64_t* bad_row);

// The same over bfloat16 logits (and dlogits, which may alias them): float32
// statistics and loss, the gradient rounded to bfloat16 once (the fused
// classifier's loss; FASTLM_CUDA_POINTWISE=next).
float cross_entropy_bf16_ex(const void* logits, const void* targets, bool targets_are_int32,
                            void* dlogits, int64_t rows, int64_t vocab, int64_t ignore_index,
                            float dloss, int64_t* bad_row);

// ---- Backward kernel that may overwrite -----------------------------------
// As the table's, but with accumulate == false dx is written rather than
// added to, which spares a fresh output its zero fill and a read (the ops
// use this; dweight and dbias are still accumulated).
void layernorm_backward_ex(const float* dy, const float* x, const float* weight,
                           const float* mean, const float* rstd, float* dx, float* dweight,
                           float* dbias, int64_t rows, int64_t cols, bool accumulate);

// ---- bfloat16 <-> float32 on the device ----------------------------------
void bf16_to_float(const void* src, float* dst, int64_t n);
void float_to_bf16(const float* src, void* dst, int64_t n);

}  // namespace cuda
}  // namespace fastlm

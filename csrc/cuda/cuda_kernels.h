// The CUDA kernels, host side: the float32 entries of the `Kernels` table
// (csrc/kernels.h; same names, contracts and accumulation rules as the CPU's,
// every pointer a device pointer) plus the few helpers the table's own code
// shares. Plain C++: bfloat16 data travel behind float or void pointers, so
// the host compiler never sees a CUDA header.
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

// The CUDA `Kernels` tables (name "cuda"): every GEMM in `precision`, on
// float32 data (kBF16 rounds the operands to bfloat16 and accumulates and
// writes float32: a model's mixed precision).
const Kernels* kernel_table(GemmPrecision precision = GemmPrecision::kExact);

// ---- The table's entries (float32; matmul is exact float32: FMA tiles, no
// TF32; matmul_packed_size is 0, as the GPU GEMM stages B itself) ----------
FASTLM_KERNELS(FASTLM_DECLARE_KERNEL)

// The table's entries honour the dtype of GemmArgs and AttentionArgs where
// csrc/kernels.h says so: `gemm` computes kExact (float32 FMA), kTF32 (float32
// operands rounded to TF32 on tensor cores, float32 accumulation; as torch with
// allow_tf32) or kBF16 (bfloat16 operands, float32 accumulation; c and bias
// bfloat16, rounded once after bias and accumulate, or float32 with c_float);
// attention_forward / attention_backward take float32 or bfloat16 q, k, v
// (and out, dout, dq, dk, dv), lse float32, head_dim <= kMaxHeadDim
// (std::invalid_argument above).
constexpr int64_t kMaxHeadDim = 128;

// ---- Backward kernel that may overwrite -----------------------------------
// As the table's layernorm_backward; with accumulate == false dx is written
// (the table's layernorm_backward_write).
void layernorm_backward_ex(const float* dy, const float* x, const float* weight,
                           const float* mean, const float* rstd, float* dx, float* dweight,
                           float* dbias, int64_t rows, int64_t cols, bool accumulate);

// ---- bfloat16 <-> float32 on the device ----------------------------------
void bf16_to_float(const void* src, float* dst, int64_t n);
void float_to_bf16(const float* src, void* dst, int64_t n);

}  // namespace cuda
}  // namespace fastlm

// Small-m products for decoding (csrc/cuda/gemv.cu): the CUDA tables route
// x @ W^T with at most kGemvMaxRows rows here instead of the tiled GEMM.
#pragma once
#include <cstdint>

#include "kernels.h"

namespace fastlm {
namespace cuda {

constexpr int64_t kGemvMaxRows = 8;

struct GemvParams {
  const float* a = nullptr;
  const float* bias = nullptr;
  float* c = nullptr;
  int64_t m = 0, n = 0, k = 0, lda = 0, ldb = 0, ldc = 0;
  bool accumulate = false;
  bool vec = false;  // a and b rows 16-byte aligned: vector loads
};

// Whether g (float32 a and c) is a product gemv takes: 1 <= m <= kGemvMaxRows,
// a not transposed, b transposed (n, k).
bool gemv_fits(const GemmArgs& g);
// c = a @ b^T [+ bias] [+ c] with g's sizes and strides and b given apart:
// float32, or bfloat16 (b_bf16, with a rounded to bfloat16) at the same ldb.
void gemv(const GemmArgs& g, const void* b, bool b_bf16);

}  // namespace cuda
}  // namespace fastlm

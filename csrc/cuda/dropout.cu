// Dropout with the CPU kernel's mask (csrc/dropout_hash.h): the same key and
// index give the same kept elements on either backend.
#include "cuda/common.cuh"
#include "dropout_hash.h"

namespace fastlm {
namespace cuda {

namespace {

// y may alias x (each element is read before it is written).
struct Drop {
  const float* x;
  float* y;
  uint32_t thr;
  float scale;
  uint64_t key;
  template <int W>
  __device__ void at(int64_t i) const {
    Pack<W> v = load_pack<W>(x, i);
#pragma unroll
    for (int k = 0; k < W; ++k)
      v[k] = dropout::bits(key, (uint64_t)(i + k)) >= thr ? v[k] * scale : 0.f;
    store_pack<W>(y, i, v);
  }
};

}  // namespace

void dropout(const float* x, float* y, int64_t n, float p, uint64_t key) {
  elementwise(Drop{x, y, dropout::threshold(p), 1.f / (1.f - p), key}, n, packs_aligned(x, y),
              "dropout_kernel");
}

}  // namespace cuda
}  // namespace fastlm

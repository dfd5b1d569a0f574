// Token + position embedding, forward and backward.
#include "cpu/cpu_kernels.h"

namespace fastlm {
namespace cpu {
namespace FASTLM_ISA {

void embedding_forward(const int64_t* idx, const float* wte, const float* wpe, float* out,
                       int64_t b, int64_t t, int64_t c, int64_t pos0) {
  parallel_for(b * t, b * t * c > (1 << 15), [&](int64_t r) {
    const float* te = wte + idx[r] * c;
    float* o = out + r * c;
    if (!wpe) {
      std::memcpy(o, te, c * sizeof(float));
      return;
    }
    const float* pe = wpe + (pos0 + r % t) * c;
    int64_t j = 0;
    for (; j + kW <= c; j += kW) vstore(o + j, vload(te + j) + vload(pe + j));
    if (j < c) vstore_part(o + j, vload_part(te + j, c - j) + vload_part(pe + j, c - j), c - j);
  });
}

// Rows of dwte are hit by repeated tokens, so threads split the channels
// instead of the rows: each gradient element is summed by one thread, in
// token order, whatever the thread count.
void embedding_backward(const float* dout, const int64_t* idx, float* dwte, float* dwpe,
                        int64_t b, int64_t t, int64_t c, int64_t pos0) {
  const int64_t chunk = 4 * kW, nchunks = (c + chunk - 1) / chunk;
  parallel_for(nchunks, b * t * c > (1 << 15), [&](int64_t ch) {
    const int64_t j0 = ch * chunk, j1 = imin(c, j0 + chunk);
    for (int64_t r = 0; r < b * t; ++r) {
      const float* d = dout + r * c;
      float* te = dwte + idx[r] * c;
      for (int64_t j = j0; j < j1; ++j) te[j] += d[j];
      if (!dwpe) continue;
      float* pe = dwpe + (pos0 + r % t) * c;
      for (int64_t j = j0; j < j1; ++j) pe[j] += d[j];
    }
  });
}

}  // namespace FASTLM_ISA
}  // namespace cpu
}  // namespace fastlm

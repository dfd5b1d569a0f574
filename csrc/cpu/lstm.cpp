// Pointwise part of an LSTM step (gate order i, f, g, o; each row of preact,
// gates and dpreact is [i | f | g | o], hidden wide). Rows are independent.
#include "cpu/cpu_kernels.h"

namespace fastlm {
namespace cpu {
namespace FASTLM_ISA {

namespace {

constexpr int64_t kParallelMin = 1 << 15;

// Lanes j..j+r of a row (r <= kW); full vectors take the plain load/store,
// which the branch predictor makes free, the tail the masked one.
FASTLM_INLINE V ld(const float* p, int64_t r) { return r == kW ? vload(p) : vload_part(p, r); }
FASTLM_INLINE void st(float* p, V a, int64_t r) {
  if (r == kW)
    vstore(p, a);
  else
    vstore_part(p, a, r);
}

void forward_row(const float* pre, const float* c, float* gates, float* c_next, float* h_next,
                 int64_t h) {
  for (int64_t j = 0; j < h; j += kW) {
    const int64_t r = imin(kW, h - j);
    const V i = vsigmoid(ld(pre + j, r));
    const V f = vsigmoid(ld(pre + h + j, r));
    const V g = vtanh(ld(pre + 2 * h + j, r));
    const V o = vsigmoid(ld(pre + 3 * h + j, r));
    const V cn = vfma(f, ld(c + j, r), i * g);
    st(gates + j, i, r);
    st(gates + h + j, f, r);
    st(gates + 2 * h + j, g, r);
    st(gates + 3 * h + j, o, r);
    st(c_next + j, cn, r);
    st(h_next + j, o * vtanh(cn), r);
  }
}

// With tc = tanh(c_next) and dct = dc_next + dh o (1 - tc^2) (the total
// gradient reaching c_next): d i = dct g, d f = dct c, d g = dct i, d o = dh tc,
// each times its activation's derivative; dc += dct f. The activations' own
// outputs give those derivatives: s (1 - s) for sigmoid, 1 - t^2 for tanh.
void backward_row(const float* dh_next, const float* dc_next, const float* c, const float* c_next,
                  const float* gates, float* dpre, float* dc, int64_t h) {
  const V one = vset(1.f);
  for (int64_t j = 0; j < h; j += kW) {
    const int64_t r = imin(kW, h - j);
    const V dh = dh_next ? ld(dh_next + j, r) : vzero();
    const V dcn = dc_next ? ld(dc_next + j, r) : vzero();
    const V i = ld(gates + j, r), f = ld(gates + h + j, r), g = ld(gates + 2 * h + j, r),
            o = ld(gates + 3 * h + j, r);
    const V tc = vtanh(ld(c_next + j, r));
    const V dct = vfma(dh * o, vfnma(tc, tc, one), dcn);
    float* dp = dpre + j;
    st(dp, vfma(dct * g, i * (one - i), ld(dp, r)), r);
    st(dp + h, vfma(dct * ld(c + j, r), f * (one - f), ld(dp + h, r)), r);
    st(dp + 2 * h, vfma(dct * i, vfnma(g, g, one), ld(dp + 2 * h, r)), r);
    st(dp + 3 * h, vfma(dh * tc, o * (one - o), ld(dp + 3 * h, r)), r);
    st(dc + j, vfma(dct, f, ld(dc + j, r)), r);
  }
}

}  // namespace

void lstm_cell_forward(const float* preact, const float* c, float* gates, float* c_next,
                       float* h_next, int64_t n, int64_t hidden) {
  if (n <= 0 || hidden <= 0) return;
  const int64_t g4 = 4 * hidden;
  parallel_for(n, n * g4 >= kParallelMin, [&](int64_t row) {
    forward_row(preact + row * g4, c + row * hidden, gates + row * g4, c_next + row * hidden,
                h_next + row * hidden, hidden);
  });
}

void lstm_cell_backward(const float* dh_next, const float* dc_next, const float* c,
                        const float* c_next, const float* gates, float* dpreact, float* dc,
                        int64_t n, int64_t hidden) {
  if (n <= 0 || hidden <= 0) return;
  const int64_t g4 = 4 * hidden;
  parallel_for(n, n * g4 >= kParallelMin, [&](int64_t row) {
    const int64_t o = row * hidden;
    backward_row(dh_next ? dh_next + o : nullptr, dc_next ? dc_next + o : nullptr, c + o,
                 c_next + o, gates + row * g4, dpreact + row * g4, dc + o, hidden);
  });
}

}  // namespace FASTLM_ISA
}  // namespace cpu
}  // namespace fastlm

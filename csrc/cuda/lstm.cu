// LSTM cell, pointwise part (gate order i, f, g, o; each row of preact, gates
// and dpreact is [i | f | g | o], hidden wide): one thread per (row, unit),
// the CPU's formulas.
#include "cuda/common.cuh"

namespace fastlm {
namespace cuda {

namespace {

constexpr int kThreads = 256;

__global__ void lstm_forward_kernel(const float* __restrict__ pre, const float* __restrict__ c,
                                    float* __restrict__ gates, float* __restrict__ c_next,
                                    float* __restrict__ h_next, int64_t n, int64_t h) {
  for_each_row_unit(n, h, [&](int64_t e, int64_t row, int64_t j) {
    const float* p = pre + row * 4 * h;
    float* gt = gates + row * 4 * h;
    const float i = sigmoid(p[j]), f = sigmoid(p[h + j]), g = tanhf(p[2 * h + j]),
                o = sigmoid(p[3 * h + j]);
    const float cn = fmaf(f, c[e], i * g);
    gt[j] = i;
    gt[h + j] = f;
    gt[2 * h + j] = g;
    gt[3 * h + j] = o;
    c_next[e] = cn;
    h_next[e] = o * tanhf(cn);
  });
}

// With tc = tanh(c_next) and dct = dc_next + dh o (1 - tc^2): d i = dct g,
// d f = dct c, d g = dct i, d o = dh tc, each times its activation's
// derivative; dc += dct f. All accumulated.
__global__ void lstm_backward_kernel(const float* __restrict__ dh_next,
                                     const float* __restrict__ dc_next,
                                     const float* __restrict__ c, const float* __restrict__ c_next,
                                     const float* __restrict__ gates, float* __restrict__ dpre,
                                     float* __restrict__ dc, int64_t n, int64_t h) {
  for_each_row_unit(n, h, [&](int64_t e, int64_t row, int64_t j) {
    const float* gt = gates + row * 4 * h;
    float* dp = dpre + row * 4 * h;
    const float dh = dh_next ? dh_next[e] : 0.f;
    const float dcn = dc_next ? dc_next[e] : 0.f;
    const float i = gt[j], f = gt[h + j], g = gt[2 * h + j], o = gt[3 * h + j];
    const float tc = tanhf(c_next[e]);
    const float dct = fmaf(dh * o, fmaf(-tc, tc, 1.f), dcn);
    dp[j] = fmaf(dct * g, i * (1.f - i), dp[j]);
    dp[h + j] = fmaf(dct * c[e], f * (1.f - f), dp[h + j]);
    dp[2 * h + j] = fmaf(dct * i, fmaf(-g, g, 1.f), dp[2 * h + j]);
    dp[3 * h + j] = fmaf(dh * tc, o * (1.f - o), dp[3 * h + j]);
    dc[e] = fmaf(dct, f, dc[e]);
  });
}

}  // namespace

void lstm_cell_forward(const float* preact, const float* c, float* gates, float* c_next,
                       float* h_next, int64_t n, int64_t hidden) {
  if (n <= 0 || hidden <= 0) return;
  lstm_forward_kernel<<<grid_for(n * hidden, kThreads), kThreads, 0, launch_stream()>>>(preact, c, gates, c_next,
                                                                   h_next, n, hidden);
  FASTLM_CHECK_LAUNCH("lstm_forward_kernel");
}

void lstm_cell_backward(const float* dh_next, const float* dc_next, const float* c,
                        const float* c_next, const float* gates, float* dpreact, float* dc,
                        int64_t n, int64_t hidden) {
  if (n <= 0 || hidden <= 0) return;
  lstm_backward_kernel<<<grid_for(n * hidden, kThreads), kThreads, 0, launch_stream()>>>(
      dh_next, dc_next, c, c_next, gates, dpreact, dc, n, hidden);
  FASTLM_CHECK_LAUNCH("lstm_backward_kernel");
}

}  // namespace cuda
}  // namespace fastlm

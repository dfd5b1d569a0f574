// GRU cell, pointwise part (PyTorch gate order r, z, n), one thread per
// (row, unit), the CPU's formulas:
//   r = sigmoid(gi_r + gh_r), z = sigmoid(gi_z + gh_z),
//   n = tanh(gi_n + r gh_n), h' = (1 - z) n + z h
// gates (rows, 4h) keeps r, z, n and gh_n for the backward.
#include "cuda/common.cuh"

namespace fastlm {
namespace cuda {

namespace {

constexpr int kThreads = 256;

__global__ void gru_forward_kernel(const float* __restrict__ gi, const float* __restrict__ gh,
                                   const float* __restrict__ h, float* __restrict__ gates,
                                   float* __restrict__ h_next, int64_t n, int64_t H) {
  for_each_row_unit(n, H, [&](int64_t e, int64_t row, int64_t j) {
    const float* xi = gi + row * 3 * H;
    const float* xh = gh + row * 3 * H;
    float* g = gates + row * 4 * H;
    const float r = sigmoid(xi[j] + xh[j]);
    const float z = sigmoid(xi[H + j] + xh[H + j]);
    const float hn = xh[2 * H + j];
    const float nn = tanhf(fmaf(r, hn, xi[2 * H + j]));
    g[j] = r;
    g[H + j] = z;
    g[2 * H + j] = nn;
    g[3 * H + j] = hn;
    h_next[e] = fmaf(z, h[e] - nn, nn);  // n + z (h - n)
  });
}

__global__ void gru_backward_kernel(const float* __restrict__ dh_next, const float* __restrict__ h,
                                    const float* __restrict__ gates, float* __restrict__ dgi,
                                    float* __restrict__ dgh, float* __restrict__ dh, int64_t n,
                                    int64_t H) {
  for_each_row_unit(n, H, [&](int64_t e, int64_t row, int64_t j) {
    const float* g = gates + row * 4 * H;
    float* di = dgi + row * 3 * H;
    float* dhh = dgh + row * 3 * H;
    const float d = dh_next[e], hv = h[e];
    const float r = g[j], z = g[H + j], nn = g[2 * H + j], hn = g[3 * H + j];
    const float dn = d * (1.f - z) * (1.f - nn * nn);  // through tanh
    const float dz = d * (hv - nn) * z * (1.f - z);     // through sigmoid
    const float dr = dn * hn * r * (1.f - r);
    di[j] += dr;
    di[H + j] += dz;
    di[2 * H + j] += dn;
    dhh[j] += dr;
    dhh[H + j] += dz;
    dhh[2 * H + j] += dn * r;
    dh[e] = fmaf(d, z, dh[e]);
  });
}

}  // namespace

void gru_cell_forward(const float* gi, const float* gh, const float* h, float* gates,
                      float* h_next, int64_t n, int64_t hidden) {
  if (n <= 0 || hidden <= 0) return;
  gru_forward_kernel<<<grid_for(n * hidden, kThreads), kThreads, 0, launch_stream()>>>(gi, gh, h, gates, h_next, n,
                                                                  hidden);
  FASTLM_CHECK_LAUNCH("gru_forward_kernel");
}

void gru_cell_backward(const float* dh_next, const float* h, const float* gates, float* dgi,
                       float* dgh, float* dh, int64_t n, int64_t hidden) {
  if (n <= 0 || hidden <= 0) return;
  gru_backward_kernel<<<grid_for(n * hidden, kThreads), kThreads, 0, launch_stream()>>>(dh_next, h, gates, dgi, dgh,
                                                                   dh, n, hidden);
  FASTLM_CHECK_LAUNCH("gru_backward_kernel");
}

}  // namespace cuda
}  // namespace fastlm

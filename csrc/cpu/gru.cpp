// GRU cell, pointwise part, forward and backward (PyTorch gate order r, z, n):
//   r = sigmoid(gi_r + gh_r), z = sigmoid(gi_z + gh_z),
//   n = tanh(gi_n + r * gh_n), h' = (1 - z) * n + z * h
// where gi = x W_ih^T + b_ih and gh = h W_hh^T + b_hh. gates (rows, 4h) keeps
// r, z, n and gh_n, all the backward needs.
#include "cpu/cpu_kernels.h"

namespace fastlm {
namespace cpu {
namespace FASTLM_ISA {

void gru_cell_forward(const float* gi, const float* gh, const float* h, float* gates,
                      float* h_next, int64_t n, int64_t hidden) {
  const int64_t H = hidden;
  parallel_for(n, n * H > (1 << 14), [&](int64_t row) {
    const float* xi = gi + row * 3 * H;
    const float* xh = gh + row * 3 * H;
    const float* hp = h + row * H;
    float* g = gates + row * 4 * H;
    float* ho = h_next + row * H;
    for (int64_t j = 0; j < H; j += kW) {
      const int64_t w = imin(kW, H - j);
      const V r = vsigmoid(vload_part(xi + j, w) + vload_part(xh + j, w));
      const V z = vsigmoid(vload_part(xi + H + j, w) + vload_part(xh + H + j, w));
      const V hn = vload_part(xh + 2 * H + j, w);
      const V nn = vtanh(vfma(r, hn, vload_part(xi + 2 * H + j, w)));
      const V hv = vload_part(hp + j, w);
      vstore_part(g + j, r, w);
      vstore_part(g + H + j, z, w);
      vstore_part(g + 2 * H + j, nn, w);
      vstore_part(g + 3 * H + j, hn, w);
      vstore_part(ho + j, vfma(z, hv - nn, nn), w);  // n + z (h - n)
    }
  });
}

void gru_cell_backward(const float* dh_next, const float* h, const float* gates, float* dgi,
                       float* dgh, float* dh, int64_t n, int64_t hidden) {
  const int64_t H = hidden;
  const V one = vset(1.f);
  parallel_for(n, n * H > (1 << 14), [&](int64_t row) {
    const float* dy = dh_next + row * H;
    const float* hp = h + row * H;
    const float* g = gates + row * 4 * H;
    float* di = dgi + row * 3 * H;
    float* dhh = dgh + row * 3 * H;
    float* dho = dh + row * H;
    for (int64_t j = 0; j < H; j += kW) {
      const int64_t w = imin(kW, H - j);
      const V d = vload_part(dy + j, w), hv = vload_part(hp + j, w);
      const V r = vload_part(g + j, w), z = vload_part(g + H + j, w);
      const V nn = vload_part(g + 2 * H + j, w), hn = vload_part(g + 3 * H + j, w);
      const V dn = d * (one - z) * (one - nn * nn);   // through tanh
      const V dz = d * (hv - nn) * z * (one - z);     // through sigmoid
      const V dr = dn * hn * r * (one - r);
      vstore_part(di + j, vload_part(di + j, w) + dr, w);
      vstore_part(di + H + j, vload_part(di + H + j, w) + dz, w);
      vstore_part(di + 2 * H + j, vload_part(di + 2 * H + j, w) + dn, w);
      vstore_part(dhh + j, vload_part(dhh + j, w) + dr, w);
      vstore_part(dhh + H + j, vload_part(dhh + H + j, w) + dz, w);
      vstore_part(dhh + 2 * H + j, vload_part(dhh + 2 * H + j, w) + dn * r, w);
      vstore_part(dho + j, vfma(d, z, vload_part(dho + j, w)), w);
    }
  });
}

}  // namespace FASTLM_ISA
}  // namespace cpu
}  // namespace fastlm

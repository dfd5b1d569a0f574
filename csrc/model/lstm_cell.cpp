#include "model/lstm_cell.h"

#include <vector>

namespace fastlm {

static void gemm(const Kernels& k, const float* a, const float* b, const float* bias, float* c,
                 int64_t m, int64_t n, int64_t kk, bool ta, bool tb, bool acc) {
  GemmArgs g;
  g.a = a;
  g.b = b;
  g.bias = bias;
  g.c = c;
  g.m = m;
  g.n = n;
  g.k = kk;
  g.lda = ta ? m : kk;
  g.ldb = tb ? kk : n;
  g.ldc = n;
  g.trans_a = ta;
  g.trans_b = tb;
  g.accumulate = acc;
  k.matmul(g);
}

void add_column_sums(const Kernels& k, const float* m, int64_t rows, int64_t n, float* out) {
  // ones(1, rows) @ m: the GEMM's blocking makes this fast and deterministic.
  std::vector<float> ones(rows, 1.f);
  gemm(k, ones.data(), m, nullptr, out, 1, n, rows, false, false, true);
}

void lstm_cell_step_forward(const Kernels& k, const LstmCellSizes& s, const float* x,
                            const float* h, const float* c, const float* w_ih, const float* w_hh,
                            const float* b_ih, const float* b_hh, float* preact, float* gates,
                            float* c_next, float* h_next) {
  const int64_t g4 = 4 * s.hidden;
  gemm(k, x, w_ih, b_ih, preact, s.n, g4, s.input, false, true, false);
  gemm(k, h, w_hh, b_hh, preact, s.n, g4, s.hidden, false, true, true);
  k.lstm_cell_forward(preact, c, gates, c_next, h_next, s.n, s.hidden);
}

void lstm_cell_step_backward(const Kernels& k, const LstmCellSizes& s, const float* dh_next,
                             const float* dc_next, const float* x, const float* h, const float* c,
                             const float* c_next, const float* gates, const float* w_ih,
                             const float* w_hh, float* dpreact, float* dx, float* dh, float* dc,
                             float* dw_ih, float* dw_hh, float* db) {
  const int64_t g4 = 4 * s.hidden;
  k.lstm_cell_backward(dh_next, dc_next, c, c_next, gates, dpreact, dc, s.n, s.hidden);
  gemm(k, dpreact, w_ih, nullptr, dx, s.n, s.input, g4, false, false, true);
  gemm(k, dpreact, w_hh, nullptr, dh, s.n, s.hidden, g4, false, false, true);
  gemm(k, dpreact, x, nullptr, dw_ih, g4, s.input, s.n, true, false, true);
  gemm(k, dpreact, h, nullptr, dw_hh, g4, s.hidden, s.n, true, false, true);
  add_column_sums(k, dpreact, s.n, g4, db);
}

}  // namespace fastlm

#include "model/rnn_cell.h"

#include "model/linear.h"

namespace fastlm {

void lstm_cell_step_forward(const Kernels& k, const CellSizes& s, const float* x,
                            const float* h, const float* c, const float* w_ih, const float* w_hh,
                            const float* b_ih, const float* b_hh, float* preact, float* gates,
                            float* c_next, float* h_next) {
  const int64_t g4 = 4 * s.hidden;
  linear_forward(k, x, w_ih, b_ih, preact, s.n, s.input, g4);
  gemm(k, h, w_hh, b_hh, preact, s.n, g4, s.hidden, false, true, /*accumulate=*/true);
  k.lstm_cell_forward(preact, c, gates, c_next, h_next, s.n, s.hidden);
}

void lstm_cell_step_backward(const Kernels& k, const CellSizes& s, const float* dh_next,
                             const float* dc_next, const float* x, const float* h, const float* c,
                             const float* c_next, const float* gates, const float* w_ih,
                             const float* w_hh, float* dpreact, float* dx, float* dh, float* dc,
                             float* dw_ih, float* dw_hh, float* db) {
  const int64_t g4 = 4 * s.hidden;
  k.lstm_cell_backward(dh_next, dc_next, c, c_next, gates, dpreact, dc, s.n, s.hidden);
  linear_backward(k, dpreact, x, w_ih, dx, dw_ih, db, s.n, s.input, g4);
  linear_backward(k, dpreact, h, w_hh, dh, dw_hh, nullptr, s.n, s.hidden, g4);
}

void gru_cell_step_forward(const Kernels& k, const CellSizes& s, const float* x, const float* h,
                           const float* w_ih, const float* w_hh, const float* b_ih,
                           const float* b_hh, float* gi, float* gh, float* gates, float* h_next) {
  linear_forward(k, x, w_ih, b_ih, gi, s.n, s.input, 3 * s.hidden);
  linear_forward(k, h, w_hh, b_hh, gh, s.n, s.hidden, 3 * s.hidden);
  k.gru_cell_forward(gi, gh, h, gates, h_next, s.n, s.hidden);
}

void gru_cell_step_backward(const Kernels& k, const CellSizes& s, const float* dh_next,
                            const float* x, const float* h, const float* gates, const float* w_ih,
                            const float* w_hh, float* dgi, float* dgh, float* dx, float* dh,
                            float* dw_ih, float* dw_hh, float* db_ih, float* db_hh) {
  const int64_t g3 = 3 * s.hidden;
  k.gru_cell_backward(dh_next, h, gates, dgi, dgh, dh, s.n, s.hidden);
  linear_backward(k, dgi, x, w_ih, dx, dw_ih, db_ih, s.n, s.input, g3);
  linear_backward(k, dgh, h, w_hh, dh, dw_hh, db_hh, s.n, s.hidden, g3);
}

}  // namespace fastlm

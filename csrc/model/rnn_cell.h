// One LSTM or GRU step as GEMMs plus the fused pointwise kernel, in PyTorch's
// layout (w_ih (G*h, in), w_hh (G*h, h); LSTM gates i, f, g, o, G = 4; GRU
// gates r, z, n, G = 3). Callers check sizes.
#pragma once
#include <cstdint>

#include "kernels.h"

namespace fastlm {

struct CellSizes {
  int64_t n, input, hidden;
};

// preact (n, 4h) is scratch; gates (n, 4h), c_next, h_next (n, h) are written.
void lstm_cell_step_forward(const Kernels& k, const CellSizes& s, const float* x,
                            const float* h, const float* c, const float* w_ih, const float* w_hh,
                            const float* b_ih, const float* b_hh, float* preact, float* gates,
                            float* c_next, float* h_next);

// Accumulates into dx (n, in), dh, dc (n, h), dw_ih, dw_hh, db (4h); dpreact
// (n, 4h) is scratch that must be zero on entry.
void lstm_cell_step_backward(const Kernels& k, const CellSizes& s, const float* dh_next,
                             const float* dc_next, const float* x, const float* h, const float* c,
                             const float* c_next, const float* gates, const float* w_ih,
                             const float* w_hh, float* dpreact, float* dx, float* dh, float* dc,
                             float* dw_ih, float* dw_hh, float* db);

// gi, gh (n, 3h) are scratch; gates (n, 4h) and h_next (n, h) are written.
void gru_cell_step_forward(const Kernels& k, const CellSizes& s, const float* x, const float* h,
                           const float* w_ih, const float* w_hh, const float* b_ih,
                           const float* b_hh, float* gi, float* gh, float* gates, float* h_next);

// Accumulates into dx, dh, dw_ih, dw_hh, db_ih, db_hh; dgi, dgh (n, 3h) are
// scratch that must be zero on entry.
void gru_cell_step_backward(const Kernels& k, const CellSizes& s, const float* dh_next,
                            const float* x, const float* h, const float* gates, const float* w_ih,
                            const float* w_hh, float* dgi, float* dgh, float* dx, float* dh,
                            float* dw_ih, float* dw_hh, float* db_ih, float* db_hh);

}  // namespace fastlm

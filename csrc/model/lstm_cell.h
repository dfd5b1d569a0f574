// One LSTM step as GEMMs plus the fused pointwise kernel (PyTorch layout:
// w_ih (4h, in), w_hh (4h, h), gate order i, f, g, o). Callers check sizes.
#pragma once
#include <cstdint>

#include "kernels.h"

namespace fastlm {

struct LstmCellSizes {
  int64_t n, input, hidden;
};

// preact (n, 4h) is scratch; gates (n, 4h), c_next, h_next (n, h) are written.
void lstm_cell_step_forward(const Kernels& k, const LstmCellSizes& s, const float* x,
                            const float* h, const float* c, const float* w_ih, const float* w_hh,
                            const float* b_ih, const float* b_hh, float* preact, float* gates,
                            float* c_next, float* h_next);

// Accumulates into dx (n, in), dh, dc (n, h), dw_ih, dw_hh, db (4h); dpreact
// (n, 4h) is scratch that must be zero on entry.
void lstm_cell_step_backward(const Kernels& k, const LstmCellSizes& s, const float* dh_next,
                             const float* dc_next, const float* x, const float* h, const float* c,
                             const float* c_next, const float* gates, const float* w_ih,
                             const float* w_hh, float* dpreact, float* dx, float* dh, float* dc,
                             float* dw_ih, float* dw_hh, float* db);

}  // namespace fastlm

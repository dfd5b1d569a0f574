#include "model/linear.h"

namespace fastlm {

static GemmArgs gemm_args(const float* a, const float* b, const float* bias, float* c, int64_t m,
                          int64_t n, int64_t kdim, bool trans_a, bool trans_b, bool accumulate) {
  GemmArgs g;
  g.a = a;
  g.b = b;
  g.bias = bias;
  g.c = c;
  g.m = m;
  g.n = n;
  g.k = kdim;
  g.lda = trans_a ? m : kdim;
  g.ldb = trans_b ? kdim : n;
  g.ldc = n;
  g.trans_a = trans_a;
  g.trans_b = trans_b;
  g.accumulate = accumulate;
  return g;
}

void gemm(const Kernels& k, const float* a, const float* b, const float* bias, float* c,
          int64_t m, int64_t n, int64_t kdim, bool trans_a, bool trans_b, bool accumulate,
          const float* b_packed) {
  GemmArgs g = gemm_args(a, b, bias, c, m, n, kdim, trans_a, trans_b, accumulate);
  g.b_packed = b_packed;
  k.matmul(g);
}

int64_t packed_b_size(const Kernels& k, int64_t n, int64_t kdim) {
  return k.matmul_packed_size(n, kdim);
}

const float* pack_b(const Kernels& k, const float* b, int64_t n, int64_t kdim, bool trans_b,
                    float* packed) {
  if (k.matmul_packed_size(n, kdim) == 0) return nullptr;
  k.matmul_pack_b(gemm_args(nullptr, b, nullptr, nullptr, 0, n, kdim, false, trans_b, false), packed);
  return packed;
}

void linear_forward(const Kernels& k, const float* inp, const float* weight, const float* bias,
                    float* out, int64_t rows, int64_t n_in, int64_t n_out,
                    const float* weight_packed) {
  gemm(k, inp, weight, bias, out, rows, n_out, n_in, false, true, false, weight_packed);
}

void linear_backward(const Kernels& k, const float* dout, const float* inp, const float* weight,
                     float* dinp, float* dweight, float* dbias, int64_t rows, int64_t n_in,
                     int64_t n_out, bool add_to_dinp) {
  if (dinp) gemm(k, dout, weight, nullptr, dinp, rows, n_in, n_out, false, false, add_to_dinp);
  gemm(k, dout, inp, nullptr, dweight, n_out, n_in, rows, true, false, true);
  if (dbias) k.bias_backward(dout, dbias, rows, n_out);
}

float classifier_loss(const Kernels& k, const ClassifierArgs& a) {
  if (k.classifier) return k.classifier(a);
  linear_forward(k, a.inp, a.weight, nullptr, a.logits, a.rows, a.channels, a.vocab);
  float* dlogits = a.dinp ? a.logits : nullptr;
  const float loss =
      k.cross_entropy(a.logits, a.targets, dlogits, a.rows, a.vocab, a.ignore_index, a.dloss);
  if (a.dinp)
    linear_backward(k, a.logits, a.inp, a.weight, a.dinp, a.dweight, nullptr, a.rows, a.channels,
                    a.vocab, false);
  return loss;
}

}  // namespace fastlm

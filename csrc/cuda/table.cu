// The CUDA kernel tables: the float32 kernels behind csrc/kernels.h's
// interface, every pointer a device pointer, and the device's memory.
#include "cuda/cuda_kernels.h"
#include "cuda/gemv.h"
#include "cuda/runtime.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace fastlm {
namespace cuda {

// The GPU GEMM stages B through shared memory on every call: there is
// nothing to pre-pack, so callers get size 0 and leave b_packed null.
int64_t matmul_packed_size(int64_t, int64_t) { return 0; }
void matmul_pack_b(const GemmArgs&, float*) {}

namespace {

void* device_alloc(int64_t bytes) { return malloc_device((size_t)bytes); }
void device_release(void* p) { free_device(p); }
void device_upload(void* dst, const void* src, int64_t bytes) {
  copy_to_device(dst, src, (size_t)bytes);
}
void device_download(void* dst, const void* src, int64_t bytes) {
  copy_to_host(dst, src, (size_t)bytes);
}

// g as `gemm` takes it: float32 data (bfloat16 operands set after), no pack.
GemmArgs gemm_args(const GemmArgs& g, GemmPrecision precision) {
  GemmArgs d = g;
  d.b_packed = nullptr;
  d.precision = precision;
  d.dtype = DType::kFloat32;
  d.c_float = false;
  return d;
}

// Decoding's few-row products go to gemv (exact float32, which TF32 may
// round), the rest to the tiled GEMM.
void matmul_exact(const GemmArgs& g) {
  if (gemv_fits(g)) return gemv(g, g.b, false);
  matmul(g);
}

// float32 operands rounded to TF32 on the tensor cores.
void matmul_tf32(const GemmArgs& g) {
  if (gemv_fits(g)) return gemv(g, g.b, false);
  gemm(gemm_args(g, GemmPrecision::kTF32));
}

// Elements a row-major operand of `rows` x `cols` with row stride ld spans.
int64_t span(int64_t rows, int64_t cols, int64_t ld) { return rows ? (rows - 1) * ld + cols : 0; }

// Mixed precision: the float32 operands rounded to bfloat16 (nearest even),
// multiplied on the tensor cores with float32 accumulation, into float32 c
// (and bias), as the CPU's mixed table does. b comes packed (a weight that
// many products share: decoding's) or is rounded into scratch per call.
int64_t bf16_packed_size(int64_t n, int64_t k) { return (n * k + 1) / 2; }

// Packs keep b's layout (GemmArgs' ldb and trans_b still describe it), as
// bfloat16; the models pack contiguous weights only, which the size assumes.
void bf16_pack_b(const GemmArgs& g, float* packed) {
  float_to_bf16(g.b, packed, g.trans_b ? span(g.n, g.k, g.ldb) : span(g.k, g.n, g.ldb));
}

void matmul_bf16(const GemmArgs& g) {
  if (g.m == 0 || g.n == 0) return;
  const int64_t nb = g.trans_b ? span(g.n, g.k, g.ldb) : span(g.k, g.n, g.ldb);
  Scratch b_scratch(g.b_packed ? 0 : 2 * nb);
  const float* b16 = g.b_packed;  // bfloat16 data
  if (!b16) {
    float_to_bf16(g.b, b_scratch.as<void>(), nb);
    b16 = b_scratch.as<float>();
  }
  if (gemv_fits(g)) return gemv(g, b16, true);
  const int64_t na = g.trans_a ? span(g.k, g.m, g.lda) : span(g.m, g.k, g.lda);
  Scratch a16(2 * na);
  float_to_bf16(g.a, a16.as<void>(), na);
  GemmArgs d = gemm_args(g, GemmPrecision::kBF16);
  d.dtype = DType::kBFloat16;
  d.a = a16.as<float>(), d.b = b16;
  d.c_float = true;
  gemm(d);
}

// ---- Mixed-precision attention: bfloat16 operands on the tensor cores ----
// The model's q, k, v (and out, dout, dq, dk, dv) are float32 inside fused
// buffers; each fused range is rounded to bfloat16 once, keeping its layout,
// so the strides still apply. Training and prefill (seq_q == seq_k) take this
// path; decoding's few queries over the float32 KV cache stay in float32.

// Elements a (batch, heads, rows, head_dim) strided tensor spans from its base.
int64_t strided_span(const Strides& s, int64_t batch, int64_t heads, int64_t rows, int64_t d) {
  return (batch - 1) * s.batch + (heads - 1) * s.head + (rows - 1) * s.row + d;
}

// The float32 range from the lowest to the highest element of three strided
// tensors, as bfloat16 scratch (rounded from it when `round`, else zeroed).
class Bf16Range {
 public:
  Bf16Range(const float* a, const float* b, const float* c, int64_t span, bool round)
      : lo_(std::min({a, b, c})), n_(std::max({a, b, c}) + span - lo_), mem_(2 * (size_t)n_) {
    if (round) float_to_bf16(lo_, mem_.as<void>(), n_);
    else zero_device(mem_.as<void>(), 2 * (size_t)n_);
  }
  // Where the bfloat16 copy of float32 element p lies (bfloat16 data behind
  // a float pointer, as AttentionArgs carries it with dtype kBFloat16).
  float* at(const void* p) const {
    return reinterpret_cast<float*>(static_cast<uint16_t*>(mem_.as<void>()) +
                                    (static_cast<const float*>(p) - lo_));
  }
  // Adds the bfloat16 values to the float32 range they came from.
  void add_to(float* dst) const {
    Scratch f(sizeof(float) * n_);
    bf16_to_float(mem_.as<void>(), f.as<float>(), n_);
    residual_forward(dst, f.as<float>(), dst, n_);
  }

 private:
  const float* lo_;
  int64_t n_;
  Scratch mem_;
};

bool bf16_attention_fits(const AttentionArgs& a) {
  return a.seq_q == a.seq_k && a.batch > 0 && a.heads > 0 && a.seq_q > 0 &&
         strided_span(a.so, a.batch, a.heads, a.seq_q, a.head_dim) ==
             a.batch * a.heads * a.seq_q * a.head_dim &&
         a.sq.row == a.sk.row && a.sq.row == a.sv.row && a.sq.head == a.sk.head &&
         a.sq.head == a.sv.head && a.sq.batch == a.sk.batch && a.sq.batch == a.sv.batch;
}

void attention_forward_bf16(const AttentionArgs& a) {
  if (!bf16_attention_fits(a)) return attention_forward(a);
  const int64_t span = strided_span(a.sq, a.batch, a.heads, a.seq_q, a.head_dim);
  const int64_t n_out = a.batch * a.heads * a.seq_q * a.head_dim;
  Bf16Range qkv(a.q, a.k, a.v, span, true);
  Scratch out16(2 * (size_t)n_out);
  AttentionArgs d = a;
  d.dtype = DType::kBFloat16;
  d.q = qkv.at(a.q), d.k = qkv.at(a.k), d.v = qkv.at(a.v), d.out = out16.as<float>();
  attention_forward(d);
  bf16_to_float(out16.as<void>(), a.out, n_out);
}

void attention_backward_bf16(const AttentionGradArgs& g) {
  const AttentionArgs& a = g.fwd;
  if (!bf16_attention_fits(a)) return attention_backward(g);
  const int64_t span = strided_span(a.sq, a.batch, a.heads, a.seq_q, a.head_dim);
  const int64_t n_out = a.batch * a.heads * a.seq_q * a.head_dim;
  Bf16Range qkv(a.q, a.k, a.v, span, true), grads(g.dq, g.dk, g.dv, span, false);
  Scratch out16(2 * (size_t)n_out), dout16(2 * (size_t)n_out);
  float_to_bf16(a.out, out16.as<void>(), n_out);
  float_to_bf16(g.dout, dout16.as<void>(), n_out);
  AttentionGradArgs d;
  d.fwd = a;
  d.fwd.dtype = DType::kBFloat16;
  d.fwd.q = qkv.at(a.q), d.fwd.k = qkv.at(a.k), d.fwd.v = qkv.at(a.v);
  d.fwd.out = out16.as<float>();
  d.dout = dout16.as<float>();
  d.dq = grads.at(g.dq), d.dk = grads.at(g.dk), d.dv = grads.at(g.dv);
  attention_backward(d);
  grads.add_to(std::min({g.dq, g.dk, g.dv}));
}

// ---- The fused classifier (opt-in: FASTLM_CUDA_POINTWISE=next) ------------
// llm.c's fused classifier in mixed precision: the head GEMM writes bfloat16
// logits into the first half of the float32 workspace, the cross-entropy
// reads them (float32 max, sum and loss) and writes the bfloat16 gradient
// over them, and both backward GEMMs take that gradient as their bfloat16
// operand directly. The (rows, vocab) logits never exist in float32 (the
// unfused path writes them, rewrites them as the gradient and converts that
// twice to bfloat16).
float classifier_bf16(const ClassifierArgs& a) {
  const int64_t R = a.rows, C = a.channels, V = a.vocab;
  if (R <= 0) return NAN;
  Scratch in16(2 * (size_t)(R * C)), w16(2 * (size_t)(V * C));
  float_to_bf16(a.inp, in16.as<void>(), R * C);
  float_to_bf16(a.weight, w16.as<void>(), V * C);
  void* logits16 = a.logits;  // rows * vocab bfloat16: half the workspace
  // bfloat16 operands (GemmArgs' float pointers carry bfloat16 data here).
  auto bf16_gemm = [](const void* a16, const void* b16, void* c) {
    GemmArgs g;
    g.precision = GemmPrecision::kBF16, g.dtype = DType::kBFloat16;
    g.a = static_cast<const float*>(a16), g.b = static_cast<const float*>(b16);
    g.c = static_cast<float*>(c);
    return g;
  };
  GemmArgs f = bf16_gemm(in16.as<void>(), w16.as<void>(), logits16);
  f.m = R, f.n = V, f.k = C, f.lda = C, f.ldb = C, f.ldc = V, f.trans_b = true;
  gemm(f);
  int64_t bad = -1;
  const float loss = cross_entropy_checked(logits16, DType::kBFloat16, a.targets, false,
                                           a.dinp ? logits16 : nullptr, R, V, a.ignore_index,
                                           a.dloss, &bad);
  if (bad >= 0)
    throw std::invalid_argument("cross_entropy: targets[" + std::to_string(bad) +
                                "] is out of range [0, " + std::to_string(V) +
                                ") and is not ignore_index");
  if (!a.dinp) return loss;
  GemmArgs dx = bf16_gemm(logits16, w16.as<void>(), a.dinp);  // dinp (R, C) = dlogits (R, V) @ weight (V, C)
  dx.c_float = true;
  dx.m = R, dx.n = C, dx.k = V, dx.lda = V, dx.ldb = C, dx.ldc = C;
  gemm(dx);
  GemmArgs dw = bf16_gemm(logits16, in16.as<void>(), a.dweight);  // dweight (V, C) += dlogits^T (V, R) @ inp (R, C)
  dw.c_float = true;
  dw.m = V, dw.n = C, dw.k = R, dw.lda = V, dw.ldb = C, dw.ldc = C;
  dw.trans_a = true, dw.accumulate = true;
  gemm(dw);
  return loss;
}

Kernels make_table() {
  Kernels t{};
  t.name = "cuda";
  t.device = "cuda";
  t.alloc = device_alloc, t.release = device_release;
  t.upload = device_upload, t.download = device_download;
  if (graphs_enabled()) t.graph_begin = graph_begin, t.graph_end = graph_end, t.graph_release = graph_release;
#define FASTLM_SET_KERNEL(entry) t.entry = entry;
  FASTLM_KERNELS(FASTLM_SET_KERNEL)
#undef FASTLM_SET_KERNEL
  t.matmul = matmul_exact;
  return t;
}

}  // namespace

const Kernels* kernel_table(GemmPrecision precision) {
  static const Kernels exact = make_table();
  static const Kernels tf32 = [] {
    Kernels t = make_table();
    t.matmul = matmul_tf32;
    return t;
  }();
  static const Kernels bf16 = [] {
    Kernels t = make_table();
    t.matmul = matmul_bf16;
    t.matmul_packed_size = bf16_packed_size;
    t.matmul_pack_b = bf16_pack_b;
    t.attention_forward = attention_forward_bf16;
    t.attention_backward = attention_backward_bf16;
    if (pointwise_next()) t.classifier = classifier_bf16;
    return t;
  }();
  switch (precision) {
    case GemmPrecision::kTF32: return &tf32;
    case GemmPrecision::kBF16: return &bf16;
    default: return &exact;
  }
}

}  // namespace cuda
}  // namespace fastlm

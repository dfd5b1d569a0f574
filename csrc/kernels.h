// The backend interface: one entry per kernel, raw pointers and sizes only.
//
// A backend (the CPU at one ISA, CUDA, the emulated device) fills one
// `Kernels` table: its memory and its kernels. Model code allocates and calls
// kernels only through a table, so the same model runs on any backend. Kernels do not validate their arguments: callers (the bindings, the
// models) guarantee sizes >= 0, non-null pointers where required, and buffers
// of the documented extents. All matrices are row-major.
//
// Accumulation convention (as llm.c): every *_backward kernel ADDS (+=) into
// each of its gradient outputs, so gradients of shared inputs (residual
// streams, tied weights) sum naturally; the caller zeroes them first.
#pragma once
#include <cstdint>
#include <type_traits>

namespace fastlm {

// Arithmetic of a GEMM on float32 data. kExact: float32 FMA. kTF32: operands
// may be rounded to TF32 (CUDA tensor cores; the CPU computes kExact). kBF16:
// operands rounded to bfloat16 (nearest even) with float32 accumulation and
// output; on the CPU only the avx512bf16 table runs it, the others throw
// std::invalid_argument. The CUDA table's float32 matmul computes kExact
// whatever is asked; its `gemm` entry honours every precision (kBF16 on
// bfloat16 data, GemmArgs::dtype).
enum class GemmPrecision { kExact, kTF32, kBF16 };

// Element type of the data a GEMM or attention call reads and writes. The
// pointers of GemmArgs and AttentionArgs are typed float*; with kBFloat16 they
// hold bfloat16 data (cast), which only the CUDA table's `gemm` and attention
// entries take (the CPU kernels are float32 only; callers check).
enum class DType { kFloat32, kBFloat16 };

// c (m, n) = op(a) @ op(b) [+ bias] [+ c]
//   op(a) is (m, k): a is (m, k) with row stride lda, or (k, m) when trans_a.
//   op(b) is (k, n): b is (k, n) with row stride ldb, or (n, k) when trans_b.
//   bias (n) or null, added to every row; accumulate adds the old c.
//   b_packed: op(b) already packed by matmul_pack_b (a B used for many
//   products, as an RNN's recurrent weights); b must still be valid.
//   b_packed must have been packed with the same precision.
//   dtype: of a, b and (unless c_float) c and bias. kBFloat16 goes with
//   precision kBF16 (the `gemm` entry on CUDA only); c_float: bfloat16
//   operands with a float32 c and bias, as a mixed-precision model keeps
//   float32 activations.
struct GemmArgs {
  const float* a = nullptr;
  const float* b = nullptr;
  const float* b_packed = nullptr;
  const float* bias = nullptr;
  float* c = nullptr;
  int64_t m = 0, n = 0, k = 0;
  int64_t lda = 0, ldb = 0, ldc = 0;
  bool trans_a = false, trans_b = false, accumulate = false;
  GemmPrecision precision = GemmPrecision::kExact;
  DType dtype = DType::kFloat32;
  bool c_float = false;
};

// Element strides of a (batch, head, row, dim) tensor whose dim is contiguous.
struct Strides {
  int64_t batch = 0, head = 0, row = 0;
};

// Scaled dot-product attention, scale 1/sqrt(head_dim), flash style (online
// softmax, no (seq_q, seq_k) score matrix). Query i attends keys j with
// j <= i + (seq_k - seq_q) when causal, all keys otherwise. lse (batch, heads,
// seq_q) contiguous holds each score row's natural log-sum-exp. dtype: of q,
// k, v, out (and the backward's dout, dq, dk, dv); lse is float32 always.
struct AttentionArgs {
  const float* q = nullptr;
  const float* k = nullptr;
  const float* v = nullptr;
  float* out = nullptr;
  float* lse = nullptr;
  Strides sq, sk, sv, so;
  int64_t batch = 0, heads = 0, seq_q = 0, seq_k = 0, head_dim = 0;
  bool causal = true;
  // Dropout on the attention probabilities (training): probability p in
  // [0, 1); element (b, h, i, j) is dropped as csrc/dropout_hash.h decides for
  // key dropout::key(dropout_seed, b * heads + h) and index i * seq_k + j, so
  // the backward (same args) regenerates the forward's mask. lse stays that
  // of the undropped softmax. The CUDA kernels drop the same elements.
  float dropout_p = 0.f;
  uint64_t dropout_seed = 0;
  DType dtype = DType::kFloat32;
};

// Gradients of attention; dq, dk, dv use the strides of q, k, v and dout
// those of out. Requires seq_q == seq_k. Accumulates into dq, dk, dv.
struct AttentionGradArgs {
  AttentionArgs fwd;  // q, k, v, out, lse as produced by the forward
  const float* dout = nullptr;
  float* dq = nullptr;
  float* dk = nullptr;
  float* dv = nullptr;
};

// PyTorch's AdamW (decoupled weight decay, bias correction), step >= 1.
// grad_scale multiplies the gradient first (gradient clipping, accumulation).
// Hyperparameters are doubles, as PyTorch's Python floats: 1 - 0.999f is
// 1.3e-5 (relative) away from 1 - 0.999, which would show directly in v.
struct AdamWArgs {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
  int64_t step = 1;
  float grad_scale = 1.0f;
};

// PyTorch's SGD with momentum (dampening 0, not Nesterov): g' = grad_scale g
// + weight_decay p; buf = g' on the first step, momentum buf + g' after;
// p -= lr buf.
struct SgdArgs {
  float lr = 1e-2f, momentum = 0.f, weight_decay = 0.f, grad_scale = 1.f;
  bool first_step = true;
};

// A classifier head and its loss (a language model's lm_head): logits
// (rows, vocab) = inp (rows, channels) @ weight^T, weight (vocab, channels),
// then cross-entropy against targets as Kernels::cross_entropy (ignore_index,
// dloss: the returned loss and the gradient's scale). With dinp, the backward
// too: dinp (rows, channels) = dlogits @ weight (written) and dweight
// (vocab, channels) += dlogits^T @ inp. logits is workspace of rows * vocab
// floats the call may use in any format: afterwards it holds nothing defined.
struct ClassifierArgs {
  const float* inp = nullptr;
  const float* weight = nullptr;
  const int64_t* targets = nullptr;
  float* logits = nullptr;
  float* dinp = nullptr;     // null: the loss only
  float* dweight = nullptr;  // required with dinp
  int64_t rows = 0, channels = 0, vocab = 0, ignore_index = -100;
  float dloss = 1.f;
};

struct Kernels {
  const char* name;    // "generic", "avx2", "avx512", "avx512bf16", "cuda", "cuda-emulated"
  const char* device;  // where the pointers it takes live: "cpu" or "cuda"

  // The device's memory (csrc/model/buffer.h owns it for the models). alloc
  // returns `bytes` aligned to 64 bytes, uninitialised (nullptr for 0 bytes),
  // or throws fastlm::OutOfMemory (a std::bad_alloc naming the bytes);
  // release(nullptr) does nothing. upload copies host -> device and download
  // device -> host; both block until the copy (and the work queued before it)
  // is done.
  void* (*alloc)(int64_t bytes);
  void (*release)(void* p);
  void (*upload)(void* dst, const void* src, int64_t bytes);
  void (*download)(void* dst, const void* src, int64_t bytes);
  // A decode step replayed as a CUDA graph; null where the backend has none
  // (the CPU, the emulated device, CUDA without FASTLM_CUDA_GRAPHS=1).
  // graph_begin records the calling thread's kernels from then on into the
  // graph `*graph` (a handle the model owns, null before its first step);
  // graph_end runs what was recorded (launch) or drops it (an exception came
  // between); graph_release frees the handle. No upload or download between.
  void (*graph_begin)(void** graph);
  void (*graph_end)(void** graph, bool launch);
  void (*graph_release)(void* graph);

  void (*matmul)(const GemmArgs& args);
  // Floats matmul_pack_b writes for an op(b) of (k, n), an upper bound in every
  // precision (avx512bf16's bfloat16 packs hold pairs, AMX tiles and a tag);
  // packs args' b, ldb, trans_b, n, k, precision for GemmArgs::b_packed
  // (layout specific to this table).
  int64_t (*matmul_packed_size)(int64_t n, int64_t k);
  void (*matmul_pack_b)(const GemmArgs& args, float* packed);
  // dbias (cols) += column sums of dout (rows, cols): the bias gradient of a Linear layer.
  void (*bias_backward)(const float* dout, float* dbias, int64_t rows, int64_t cols);

  // out (b, t, c) = wte[idx[b, t]] + wpe[pos0 + t]; the backward scatters dout
  // into dwte (vocab, c) and dwpe (block, c). Ids are in range (caller checks).
  // wpe / dwpe may be null: no position embedding.
  void (*embedding_forward)(const int64_t* idx, const float* wte, const float* wpe, float* out,
                            int64_t b, int64_t t, int64_t c, int64_t pos0);
  void (*embedding_backward)(const float* dout, const int64_t* idx, float* dwte, float* dwpe,
                             int64_t b, int64_t t, int64_t c, int64_t pos0);

  // x[0:n] = 0; dst[0:n] = src[0:n]
  void (*zero)(float* x, int64_t n);
  void (*copy)(float* dst, const float* src, int64_t n);
  // out = a + b over n floats (out may alias a or b).
  void (*residual_forward)(const float* a, const float* b, float* out, int64_t n);
  // Sum of squares of n floats in double, in an order fixed by n alone.
  double (*sum_squares)(const float* x, int64_t n);

  // y = softmax(x) over rows of length cols; dx += y * (dy - sum(dy * y)).
  void (*softmax_forward)(const float* x, float* y, int64_t rows, int64_t cols);
  void (*softmax_backward)(const float* dy, const float* y, float* dx, int64_t rows,
                           int64_t cols);

  // y = (x - mean) * rstd * weight + bias per row; mean and rstd (rows) saved.
  void (*layernorm_forward)(const float* x, const float* weight, const float* bias, float* y,
                            float* mean, float* rstd, int64_t rows, int64_t cols, float eps);
  void (*layernorm_backward)(const float* dy, const float* x, const float* weight,
                             const float* mean, const float* rstd, float* dx, float* dweight,
                             float* dbias, int64_t rows, int64_t cols);

  // GPT-2's tanh GELU: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
  // The one backward that writes rather than adds: dx = dy * gelu'(x), since
  // its input gradient is never shared and zeroing it first cost a pass.
  void (*gelu_forward)(const float* x, float* y, int64_t n);
  void (*gelu_backward)(const float* dy, const float* x, float* dx, int64_t n);

  void (*attention_forward)(const AttentionArgs& args);
  void (*attention_backward)(const AttentionGradArgs& args);

  // Fused softmax cross-entropy over logits (rows, vocab). Rows whose target
  // equals ignore_index do not count. Returns the mean loss over counted rows
  // (NaN when none count). When dlogits is not null it receives (written, not
  // accumulated) dloss / count * (softmax - onehot), 0 on ignored rows; it may
  // alias logits. targets are in [0, vocab) or equal ignore_index.
  float (*cross_entropy)(const float* logits, const int64_t* targets, float* dlogits,
                         int64_t rows, int64_t vocab, int64_t ignore_index, float dloss);

  // LSTM cell pointwise part (PyTorch gate order i, f, g, o).
  //   preact (n, 4h) = x W_ih^T + h W_hh^T + b_ih + b_hh
  //   gates (n, 4h) = sigmoid(i), sigmoid(f), tanh(g), sigmoid(o)
  //   c_next = f c + i g; h_next = o tanh(c_next)
  void (*lstm_cell_forward)(const float* preact, const float* c, float* gates, float* c_next,
                            float* h_next, int64_t n, int64_t hidden);
  // dh_next, dc_next (either may be null = zero) -> dpreact (n, 4h) and dc (n, h),
  // both accumulated.
  void (*lstm_cell_backward)(const float* dh_next, const float* dc_next, const float* c,
                             const float* c_next, const float* gates, float* dpreact, float* dc,
                             int64_t n, int64_t hidden);

  // GRU cell pointwise part (PyTorch gate order r, z, n).
  //   gi, gh (n, 3h) = x W_ih^T + b_ih, h W_hh^T + b_hh
  //   gates (n, 4h) = r, z, n and gh_n (kept for the backward); h_next (n, h)
  void (*gru_cell_forward)(const float* gi, const float* gh, const float* h, float* gates,
                           float* h_next, int64_t n, int64_t hidden);
  // dh_next -> dgi, dgh (n, 3h) and dh (n, h), all accumulated.
  void (*gru_cell_backward)(const float* dh_next, const float* h, const float* gates, float* dgi,
                            float* dgh, float* dh, int64_t n, int64_t hidden);

  // In place over n contiguous floats.
  void (*adamw)(float* param, const float* grad, float* m, float* v, int64_t n,
                const AdamWArgs& args);
  void (*sgd)(float* param, const float* grad, float* momentum_buf, int64_t n,
              const SgdArgs& args);

  // The exact GELU, x Phi(x) = 0.5 x (1 + erf(x / sqrt(2))) (PyTorch's default,
  // Hugging Face's "gelu"); the backward writes, as gelu_backward does.
  void (*gelu_erf_forward)(const float* x, float* y, int64_t n);
  void (*gelu_erf_backward)(const float* dy, const float* x, float* dx, int64_t n);
  // y = x * keep / (1 - p), keep = dropout::bits(key, i) >= dropout::threshold(p)
  // (csrc/dropout_hash.h), p in [0, 1); y may alias x. Its own backward: the
  // same call on dy with the same key gives dx (written, not accumulated).
  void (*dropout)(const float* x, float* y, int64_t n, float p, uint64_t key);

  // ---- What the ops (csrc/bindings/ops.cpp) need besides the models' entries.
  // The GEMM exactly as args ask: precision and dtype honoured, m or n of 0
  // allowed, no routing of few-row products (a model table's matmul may round
  // or route differently). std::invalid_argument for what the backend cannot
  // compute (bfloat16 data on the CPU, kBF16 without AVX512_BF16).
  void (*gemm)(const GemmArgs& args);
  // As layernorm_backward, but dx is written rather than added to (dweight
  // and dbias still accumulate): a fresh output needs no zero fill.
  void (*layernorm_backward_write)(const float* dy, const float* x, const float* weight,
                                   const float* mean, const float* rstd, float* dx,
                                   float* dweight, float* dbias, int64_t rows, int64_t cols);
  // As cross_entropy, with logits and dlogits (which may alias them) float32
  // or, where dtype is kBFloat16, bfloat16 (float32 statistics and loss, the
  // gradient rounded once; std::invalid_argument on the CPU), and targets
  // int32 (targets_int32) or int64 in the device's memory and unchecked:
  // *bad_row receives the first row whose target is outside [0, vocab) and not
  // ignore_index, else -1. When one is bad the loss and dlogits are
  // unspecified (the CPU computes nothing; CUDA counts such rows as ignored);
  // the caller raises.
  float (*cross_entropy_checked)(const void* logits, DType dtype, const void* targets,
                                 bool targets_int32, void* dlogits, int64_t rows, int64_t vocab,
                                 int64_t ignore_index, float dloss, int64_t* bad_row);

  // ---- Optional entries: null where the backend has no fused version ----
  // The classifier head and its loss fused (ClassifierArgs): the CUDA bf16
  // table's keeps the logits and their gradient in bfloat16, never float32.
  // Callers use classifier_loss (csrc/model/linear.h), which composes
  // matmul, cross_entropy and matmul when this is null.
  float (*classifier)(const ClassifierArgs& args);
};

// The memory entries, which a backend fills from its memory functions.
#define FASTLM_MEMORY(X) X(alloc) X(release) X(upload) X(download)
// The CUDA graph entries (null but in the CUDA table, runtime.h).
#define FASTLM_GRAPH(X) X(graph_begin) X(graph_end) X(graph_release)

// Every kernel entry of Kernels, once: each backend declares its kernels
// (FASTLM_DECLARE_KERNEL, with the entry's exact type) and fills its table
// from this list, so the three never drift apart.
#define FASTLM_KERNELS(X)                                                                  \
  X(matmul) X(matmul_packed_size) X(matmul_pack_b) X(bias_backward) X(embedding_forward)  \
  X(embedding_backward) X(zero) X(copy) X(residual_forward) X(sum_squares)                \
  X(softmax_forward) X(softmax_backward) X(layernorm_forward) X(layernorm_backward)       \
  X(gelu_forward) X(gelu_backward) X(attention_forward) X(attention_backward)             \
  X(cross_entropy) X(lstm_cell_forward) X(lstm_cell_backward) X(gru_cell_forward)         \
  X(gru_cell_backward) X(adamw) X(sgd) X(gelu_erf_forward) X(gelu_erf_backward) X(dropout)  \
  X(gemm) X(layernorm_backward_write) X(cross_entropy_checked)

// Entries a backend may leave null (callers fall back to plain kernels).
#define FASTLM_OPTIONAL_KERNELS(X) X(classifier)

#define FASTLM_DECLARE_KERNEL(entry) std::remove_pointer_t<decltype(Kernels::entry)> entry;
#define FASTLM_COUNT_KERNEL(entry) +1
static_assert(sizeof(Kernels) == 2 * sizeof(const char*) +
                                     (0 FASTLM_MEMORY(FASTLM_COUNT_KERNEL)
                                          FASTLM_GRAPH(FASTLM_COUNT_KERNEL)
                                          FASTLM_KERNELS(FASTLM_COUNT_KERNEL)
                                              FASTLM_OPTIONAL_KERNELS(FASTLM_COUNT_KERNEL)) *
                                         sizeof(void (*)()),
              "FASTLM_MEMORY, FASTLM_GRAPH, FASTLM_KERNELS and FASTLM_OPTIONAL_KERNELS must list "
              "every function entry of Kernels");

}  // namespace fastlm

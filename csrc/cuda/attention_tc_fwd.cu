// bfloat16 attention forward in FlashAttention-2's layout, opt-in
// (FASTLM_CUDA_ATTENTION=next) until it has passed the tests on a GPU.
//
// Against the default forward (attention_tc.cu: 64 queries and 4 warps a
// block, one K/V buffer loaded and waited for at every tile, every score
// masked with 64-bit compares), a block here is 8 warps over 128 queries of
// one (batch, head), so each K/V tile fetched serves twice the rows:
// - each warp's 16 rows of Q fragments stay in registers for the whole pass;
// - K and V tiles of 64 keys stream through two cp.async stages, the next
//   tile loading while this one is multiplied; Q arrives through stage 1,
//   which is free again once the fragments are in registers;
// - scores turn into probabilities with one FFMA and one exp2 each (the row
//   max kept in raw score units, scale * log2(e) folded into the FFMA);
// - only a tile that crosses the causal diagonal or the end of the keys is
//   masked, with 32-bit compares against a per-row limit, and a warp whose
//   rows see none of a tile skips it;
// - causal blocks start longest first (the query tile counts down along the
//   grid's slower index), so the short ones fill the tail.
#include <climits>
#include <cstdlib>
#include <cstring>

#include "cuda/attention_tc.cuh"

namespace fastlm {
namespace cuda {
namespace attn {

namespace {

constexpr int kWarps = 8, kThreads = 32 * kWarps;
constexpr int kBM = 16 * kWarps;  // queries per block, 16 per warp
constexpr int kBN = 64;           // keys per tile
static_assert(kBM == 2 * kBN, "Q fills exactly one stage (a K and a V tile)");

// Two stages, each a K tile then a V tile of kBN rows.
template <int DMAX>
constexpr size_t smem_bytes() {
  return sizeof(bf16) * 4 * kBN * (DMAX + 8);
}

// DROP: dropout on the probabilities, a separate instance so that the
// registers it needs (about 60 at DMAX 64) do not cost the plain kernel.
template <int DMAX, bool DROP>
__global__ void __launch_bounds__(kThreads, DMAX <= 64 ? 2 : 1) fwd_next_kernel(const FwdParams p) {
  constexpr int LD = DMAX + 8, NKD = DMAX / 16, NDT = DMAX / 8, NT = kBN / 8;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  bf16* stages = reinterpret_cast<bf16*>(smem_raw);  // stage s at stages + s * 2 kBN LD
  const Lane L;
  const int64_t b = blockIdx.x / p.heads, h = blockIdx.x % p.heads;
  const int64_t tile = p.causal ? gridDim.y - 1 - blockIdx.y : blockIdx.y;
  const int64_t q0 = tile * kBM;
  const bf16* Q = head_ptr<bf16>(p.q, p.sq, b, h);
  const bf16* K = head_ptr<bf16>(p.k, p.sk, b, h);
  const bf16* V = head_ptr<bf16>(p.v, p.sv, b, h);
  const int D = p.head_dim;
  const int64_t kend = key_end(q0, kBM, p.seq_q, p.seq_k, p.causal);
  const int ntiles = kend > 0 ? (int)((kend + kBN - 1) / kBN) : 0;

  auto load_kv = [&](int t) {
    bf16* Ks = stages + (t & 1) * 2 * kBN * LD;
    const int64_t k0 = (int64_t)t * kBN;
    load_tile<bf16, kBN, DMAX, LD, kThreads>(Ks, K, p.sk.row, k0, 0, p.seq_k, D, p.vec);
    load_tile<bf16, kBN, DMAX, LD, kThreads>(Ks + kBN * LD, V, p.sv.row, k0, 0, p.seq_k, D,
                                             p.vec);
  };
  bf16* Qs = stages + 2 * kBN * LD;  // stage 1
  load_tile<bf16, kBM, DMAX, LD, kThreads>(Qs, Q, p.sq.row, q0, 0, p.seq_q, D, p.vec);
  cp_async_commit();
  if (ntiles > 0) load_kv(0);
  cp_async_commit();
  cp_async_wait<1>();  // Q has landed; K and V of tile 0 may still be in flight
  __syncthreads();
  uint32_t qf[NKD][4];
#pragma unroll
  for (int kd = 0; kd < NKD; ++kd) frag_a<LD>(qf[kd], Qs, 16 * L.warp, 16 * kd, L);

  // This thread's two rows, g and g + 8 of the warp's 16, see keys <= rlim.
  const int64_t off = p.seq_k - p.seq_q, r0w = q0 + 16 * L.warp;
  const int64_t rows[2] = {r0w + L.g, r0w + L.g + 8};
  int64_t rlim[2];
#pragma unroll
  for (int hr = 0; hr < 2; ++hr)
    rlim[hr] = p.causal && rows[hr] + off < p.seq_k - 1 ? rows[hr] + off : p.seq_k - 1;
  // Keys below wfull are seen by every row of the warp, keys from wend on by none.
  const int64_t wfull = p.causal ? (r0w + off + 1 < p.seq_k ? r0w + off + 1 : p.seq_k) : p.seq_k;
  const int64_t wend = p.causal ? (r0w + off + 16 < p.seq_k ? r0w + off + 16 : p.seq_k) : p.seq_k;
  const uint64_t dkey = DROP ? drop_key(p, b, h) : 0;
  const float sl2 = p.scale * kLog2e;

  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};  // m in raw score units
  float o[NDT][4];
#pragma unroll
  for (int dt = 0; dt < NDT; ++dt)
#pragma unroll
    for (int e = 0; e < 4; ++e) o[dt][e] = 0.f;

  for (int t = 0; t < ntiles; ++t) {
    __syncthreads();  // stage (t + 1) & 1 (tile t - 1, or Q) is no longer read
    if (t + 1 < ntiles) load_kv(t + 1);
    cp_async_commit();
    cp_async_wait<1>();  // tile t has landed
    __syncthreads();
    const int64_t k0 = (int64_t)t * kBN;
    if (k0 >= wend) continue;  // warp-uniform: no row of this warp sees the tile
    const bf16* Ks = stages + (t & 1) * 2 * kBN * LD;
    const bf16* Vs = Ks + kBN * LD;

    // S = Q K^T: 16 queries x 64 keys per warp; element e of tile nt is row
    // rows[e >> 1], key k0 + 8 nt + 2 t + (e & 1).
    float s[NT][4];
    qk_tile<LD>(s, qf, Ks, L);
    if (k0 + kBN > wfull) {  // warp-uniform: the diagonal or the last keys
      int lim[2];
#pragma unroll
      for (int hr = 0; hr < 2; ++hr) {
        const int64_t x = rlim[hr] - k0;
        lim[hr] = x < 0 ? -1 : (x > kBN ? kBN : (int)x);
      }
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e)
          if (8 * nt + 2 * L.t + (e & 1) > lim[e >> 1]) s[nt][e] = -INFINITY;
    }

    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) mx[e >> 1] = fmaxf(mx[e >> 1], s[nt][e]);
    float ms[2];
    online_rescale(m, l, o, mx, sl2, ms);
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float pv = exp2f(fmaf(s[nt][e], sl2, -ms[e >> 1]));
        l[e >> 1] += pv;
        s[nt][e] = pv;
      }
    if (DROP) drop_tile(s, p, dkey, rows, k0, L);  // after l: it sums kept and dropped alike

    add_pv<LD>(o, s, Vs, L);
  }
  cp_async_wait<0>();  // nothing may be in flight at exit
  const float m2[2] = {m[0] * sl2, m[1] * sl2};
  store_forward(p, b, h, rows, o, l, m2, L);
}

template <int DMAX, bool DROP>
void launch(const FwdParams& p, dim3 grid) {
  allow_shared_bytes(fwd_next_kernel<DMAX, DROP>, smem_bytes<DMAX>());  // per device: every call
  fwd_next_kernel<DMAX, DROP><<<grid, kThreads, smem_bytes<DMAX>(), launch_stream()>>>(p);
  FASTLM_CHECK_LAUNCH("attention fwd_next_kernel");
}

template <int DMAX>
bool forward_next(const FwdParams& p, int64_t batch) {
  const int64_t heads = batch * p.heads, tiles = (p.seq_q + kBM - 1) / kBM;
  if (heads > INT_MAX || tiles > 65535) return false;
  const dim3 grid((unsigned)heads, (unsigned)tiles);
  if (p.drop_threshold != 0)
    launch<DMAX, true>(p, grid);
  else
    launch<DMAX, false>(p, grid);
  return true;
}

bool wanted() {
  static const bool on = [] {
    const char* s = std::getenv("FASTLM_CUDA_ATTENTION");
    return s != nullptr && std::strcmp(s, "next") == 0;
  }();
  return on;
}

}  // namespace

bool launch_forward_bf16_next(const FwdParams& p, int64_t batch) {
  if (!wanted()) return false;
  return p.head_dim <= 64 ? forward_next<64>(p, batch) : forward_next<128>(p, batch);
}

}  // namespace attn
}  // namespace cuda
}  // namespace fastlm

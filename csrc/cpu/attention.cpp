// Flash attention on the CPU: FlashAttention-2 forward (online softmax) and
// backward (probabilities recomputed from lse), in 64 x 64 tiles.
//
// Score tiles are kept transposed, S^T (keys x queries). Every product then
// has the one shape a small register-blocked kernel does well, "broadcast a
// scalar of A, FMA it into vector rows of B": S^T = K Q^T reads K rows in
// place (any row stride, e.g. a fused qkv buffer) against Q^T transposed once
// per (batch, head) rather than once per tile, and the softmax runs down the
// key rows vectorized across queries, with no horizontal reductions. On a
// diagonal tile of a causal mask the score vectors hidden entirely are
// neither computed nor exponentiated, only zeroed.
#include <omp.h>

#include <cfloat>
#include <cmath>

#include "cpu/cpu_kernels.h"
#include "cpu/attention_tiles.h"
#include "cpu/memory.h"
#include "dropout_hash.h"

namespace fastlm {
namespace cpu {
namespace FASTLM_ISA {
namespace {

// dst rows (stride rs) += scale * sum over u < nsrc, in order, of the
// (n x dp) matrices at src[u] + off.
void add_rows(float* dst, int64_t rs, float* const* src, int nsrc, int64_t off, int64_t n,
              int64_t dim, int64_t dp, float scale) {
  const V vs = vset(scale);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t d = 0; d < dim; d += kW) {
      V s = vload(src[0] + off + i * dp + d);
      for (int u = 1; u < nsrc; ++u) s = s + vload(src[u] + off + i * dp + d);
      float* o = dst + i * rs + d;
      if (d + kW <= dim) vstore(o, vfma(s, vs, vload(o)));
      else vstore_part(o, vfma(s, vs, vload_part(o, dim - d)), dim - d);
    }
  }
}

const float kIota[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};

// Causal mask on a score tile s^T (nk x nqv vectors, row stride kBq): entry
// (key j, query i) is hidden when i < j + lim. Only the vector that is
// partly hidden is masked here; the wholly hidden ones, which the score
// product skips (gemm's cols_from = lim), are for the caller to zero:
// in column vector v the rows from hidden_from(v, lim) on.
void mask_tile(float* st, int64_t nk, int64_t nqv, int64_t lim) {
  const V iota = vload(kIota), ninf = vset(-INFINITY);
  for (int64_t j = 0; j < nk; ++j) {
    const int64_t t = j + lim, v = t / kW;
    if (t <= 0 || v >= nqv || t % kW == 0) continue;
    float* p = st + j * kBq + v * kW;
    vstore(p, vblend_lt(iota, vset((float)(t - v * kW)), ninf, vload(p)));
  }
}

// The first row of a score tile whose column vector v is wholly hidden by
// the causal mask of mask_tile (clamped to [0, nk]).
int64_t hidden_from(int64_t v, int64_t lim, int64_t nk) {
  return imax(0, imin(nk, (v + 1) * kW - lim));
}

// Dropout factors of one score vector whose lanes are queries i0 + l (l < kW)
// at key j: 1 / (1 - p) where kept, 0 where dropped (AttentionArgs::dropout_p).
V drop_scale(uint64_t key, int64_t i0, int64_t j, int64_t seq_k, uint32_t thr, float scale) {
  float f[kW];
  for (int l = 0; l < kW; ++l)
    f[l] = dropout::bits(key, (uint64_t)((i0 + l) * seq_k + j)) >= thr ? scale : 0.f;
  return vload(f);
}

struct Head {  // pointers to row 0 of one (batch, head)
  const float *q, *k, *v;
  float* o;
};

Head head_at(const AttentionArgs& a, int64_t h) {
  const int64_t b = h / a.heads, hh = h % a.heads;
  return {a.q + b * a.sq.batch + hh * a.sq.head, a.k + b * a.sk.batch + hh * a.sk.head,
          a.v + b * a.sv.batch + hh * a.sv.head, a.out + b * a.so.batch + hh * a.so.head};
}

// Scratch floats of forward_rows for rows_p query rows (a multiple of kW).
template <class P>
int64_t forward_floats(int64_t D, int64_t rows_p) {
  const int64_t Dp = round_up(D, kW);
  const int64_t f32 = (D + Dp + 2) * rows_p + kBq + kBk * Dp + kBk * kBq;
  // Q^T, K and P as pairs (V's pairs take V's float buffer).
  return P::kPairs ? f32 + ceil_div(D, 2) * rows_p + kBk * Dp / 2 + kBk / 2 * kBq : f32;
}

// Forward of query rows [r0, r0 + rows) of head h, the products' operands read
// as P says (F32 or B16). Scratch (forward_floats): qt D x rows_p, o rows_p x
// Dp, m, l rows_p, alpha kBq, vp kBk x Dp, st kBk x kBq with rows_p = rows
// rounded up to kW; for B16 then qtb, kb, pb.
template <class P>
void forward_rows(const AttentionArgs& a, int64_t h, int64_t r0, int64_t rows, float* scratch) {
  using S = typename P::S;
  using T = typename P::T;
  const int64_t D = a.head_dim, Dp = round_up(D, kW), ldq = round_up(rows, kW);
  const int64_t off = a.seq_k - a.seq_q;
  const float scale = 1.f / sqrtf((float)D);
  const V vscale = vset(scale);
  float *qt = scratch, *o = qt + D * ldq, *m = o + ldq * Dp, *l = m + ldq, *alpha = l + ldq,
        *vp = alpha + kBq, *st = vp + kBk * Dp;
  T *qtb = nullptr, *kb = nullptr, *pb = nullptr;
  if (P::kPairs) {
    qtb = reinterpret_cast<T*>(st + kBk * kBq), kb = qtb + ceil_div(D, 2) * ldq;
    pb = kb + kBk * Dp / 2;
  }
  const Head hd = head_at(a, h);
  const bool drop = a.dropout_p > 0.f;
  const uint64_t dkey = dropout::key(a.dropout_seed, h);
  const uint32_t dthr = dropout::threshold(a.dropout_p);
  const float dscale = 1.f / (1.f - a.dropout_p);
  prefetch_rows(hd.o + r0 * a.so.row, a.so.row, rows, D, true);  // written at the end
  prefetch_rows(hd.k, a.sk.row, imin(kBk, a.seq_k), D);  // the first key block
  prefetch_rows(hd.v, a.sv.row, imin(kBk, a.seq_k), D);
  pack_t(hd.q + r0 * a.sq.row, a.sq.row, rows, D, qt, ldq);
  zero_cols(qt, rows, ldq, D);
  const MatB<T> qb = P::b_rows(qt, ldq, D, ldq, ldq, qtb);
  memset(o, 0, rows * Dp * sizeof(float));
  for (int64_t i = 0; i < ldq; ++i) m[i] = -INFINITY, l[i] = 0.f;
  const int64_t kend = a.causal ? imin(a.seq_k, r0 + rows + off) : a.seq_k;
  for (int64_t k0 = 0; k0 < kend; k0 += kBk) {
    const int64_t nk = imin(kBk, kend - k0), nnext = imin(kBk, kend - k0 - kBk);
    if (nnext > 0) {  // the next block's K and V rows, while this block computes
      prefetch_rows(hd.k + (k0 + kBk) * a.sk.row, a.sk.row, nnext, D);
      prefetch_rows(hd.v + (k0 + kBk) * a.sv.row, a.sv.row, nnext, D);
    }
    const MatB<T> vr = P::b_rows(hd.v + k0 * a.sv.row, a.sv.row, nk, D, Dp, reinterpret_cast<T*>(vp));
    const MatA<T> ka = P::a_rows(hd.k + k0 * a.sk.row, a.sk.row, nk, D, kb, Dp / 2);
    for (int64_t q0 = 0; q0 < rows; q0 += kBq) {
      const int64_t nq = imin(kBq, rows - q0), nqv = ceil_div(nq, kW), gq0 = r0 + q0;
      // Keys past the last query's horizon are hidden from the whole block.
      const int64_t tnk = a.causal ? imin(nk, gq0 + nq + off - k0) : nk;
      if (tnk <= 0) continue;
      const int64_t lim = a.causal ? k0 - off - gq0 : -kAll;
      gemm<S>(tnk, nqv, D, ka, qb.p + q0, qb.ld, st, kBq, false, -kAll, kAll, lim);
      if (a.causal && k0 + tnk - 1 > gq0 + off) mask_tile(st, tnk, nqv, lim);
      for (int64_t v = 0; v < nqv; ++v) {
        float* col = st + v * kW;
        const int64_t live = hidden_from(v, lim, tnk);
        for (int64_t j = live; j < tnk; ++j) vstore(col + j * kBq, vzero());
        V mx = vset(-INFINITY);
        for (int64_t j = 0; j < live; ++j) mx = vmax(mx, vload(col + j * kBq));
        const V mold = vload(m + q0 + v * kW), mnew = vmax(mold, mx);
        // A query with no visible key yet keeps m = -inf; offset by 0 so its
        // probabilities come out exp(-inf) = 0 rather than NaN.
        const V msafe = vblend_lt(mnew, vset(-FLT_MAX), vzero(), mnew);
        const V bias = vzero() - msafe * vscale;
        V sum = vzero();
        for (int64_t j = 0; j < live; ++j) {
          const V p = vexp(vfma(vload(col + j * kBq), vscale, bias));
          vstore(col + j * kBq, p);
          sum = sum + p;
        }
        // The normaliser l sums the kept and the dropped probabilities alike.
        if (drop)
          for (int64_t j = 0; j < live; ++j)
            vstore(col + j * kBq, vload(col + j * kBq) *
                                      drop_scale(dkey, gq0 + v * kW, k0 + j, a.seq_k, dthr, dscale));
        const V al = vexp((mold - msafe) * vscale);
        vstore(l + q0 + v * kW, vfma(vload(l + q0 + v * kW), al, sum));
        vstore(m + q0 + v * kW, mnew);
        vstore(alpha + v * kW, al);
      }
      for (int64_t i = 0; i < nq; ++i) {
        if (alpha[i] == 1.f) continue;
        const V al = vset(alpha[i]);
        float* orow = o + (q0 + i) * Dp;
        for (int64_t d = 0; d < Dp; d += kW) vstore(orow + d, vload(orow + d) * al);
      }
      // Query i needs keys j <= i + gq0 + off - k0 only.
      gemm<S>(nq, Dp / kW, tnk, P::a_cols(st, kBq, tnk, nqv * kW, pb), vr.p, vr.ld, o + q0 * Dp,
              Dp, true, -kAll, a.causal ? gq0 + off - k0 : kAll);
    }
  }
  float* lse = a.lse + h * a.seq_q + r0;
  for (int64_t i = 0; i < rows; ++i) {
    float* out = hd.o + (r0 + i) * a.so.row;
    // A row that sees no key (causal with seq_q > seq_k) gets out 0, lse -inf.
    const V inv = vset(l[i] > 0.f ? 1.f / l[i] : 0.f);
    for (int64_t d = 0; d < D; d += kW) {
      const V y = vload(o + i * Dp + d) * inv;
      if (d + kW <= D) vstore(out + d, y);
      else vstore_part(out + d, y, D - d);
    }
    lse[i] = l[i] == 0.f ? -INFINITY : m[i] * scale + logf(l[i]);  // NaN stays NaN
  }
}

// What the backward of one (batch, head) reads many times, packed once:
// Q^T and dO^T (D x ldt), Q and dO rows (T x Dp), lse and
// delta = rowsum(dO * O) (ldt), with ldt = T rounded up to kW. B16 reads
// Q^T and dO^T as pairs of rows (qtb, dotb), and Q and dO rows as pairs in
// place of qp and dop.
template <class P>
struct Packed {
  float *qt, *dot, *qp, *dop, *lse, *delta;
  typename P::T *qtb, *dotb, *qpb, *dopb;
};

template <class P>
int64_t packed_floats(int64_t T, int64_t D) {
  const int64_t ldt = round_up(T, kW), Dp = round_up(D, kW);
  return 2 * D * ldt + 2 * T * Dp + 2 * ldt + (P::kPairs ? 2 * ceil_div(D, 2) * ldt : 0);
}

template <class P>
Packed<P> packed_at(float* p, int64_t T, int64_t D) {
  using E = typename P::T;
  const int64_t ldt = round_up(T, kW), Dp = round_up(D, kW);
  Packed<P> k{};
  k.qt = p, k.dot = k.qt + D * ldt, k.qp = k.dot + D * ldt, k.dop = k.qp + T * Dp;
  k.lse = k.dop + T * Dp, k.delta = k.lse + ldt;
  if (P::kPairs) {
    k.qtb = reinterpret_cast<E*>(k.delta + ldt), k.dotb = k.qtb + ceil_div(D, 2) * ldt;
    k.qpb = reinterpret_cast<E*>(k.qp), k.dopb = reinterpret_cast<E*>(k.dop);
  }
  return k;
}

// Rows [r0, r1) of head h into pk (r0 even). delta reads dO as the products
// do (rounded to bfloat16 for B16), so it equals sum_j P_ij dP_ij.
template <class P>
void pack_head(const AttentionGradArgs& g, int64_t h, int64_t r0, int64_t r1, const Packed<P>& pk) {
  const AttentionArgs& a = g.fwd;
  const int64_t T = a.seq_q, D = a.head_dim, Dp = round_up(D, kW), ldt = round_up(T, kW);
  const Head hd = head_at(a, h);
  const float* dout = g.dout + (hd.o - a.out);  // dout shares out's strides
  const float *q = hd.q + r0 * a.sq.row, *dor = dout + r0 * a.so.row;
  pack_t(q, a.sq.row, r1 - r0, D, pk.qt + r0, ldt);
  pack_t(dor, a.so.row, r1 - r0, D, pk.dot + r0, ldt);
  if (P::kPairs) {
    P::b_rows(q, a.sq.row, r1 - r0, D, Dp, pk.qpb + r0 / 2 * Dp);
    P::b_rows(dor, a.so.row, r1 - r0, D, Dp, pk.dopb + r0 / 2 * Dp);
  } else if (D < Dp) {  // else backward_keys reads the rows in place
    pack_rows(q, a.sq.row, r1 - r0, D, Dp, pk.qp + r0 * Dp);
    pack_rows(dor, a.so.row, r1 - r0, D, Dp, pk.dop + r0 * Dp);
  }
  for (int64_t i = r0; i < r1; ++i) {
    const float *x = dout + i * a.so.row, *y = hd.o + i * a.so.row;
    V s = vzero();
    for (int64_t d = 0; d < D; d += kW)
      s = d + kW <= D ? vfma(P::round(vload(x + d)), vload(y + d), s)
                      : vfma(P::round(vload_part(x + d, D - d)), vload_part(y + d, D - d), s);
    pk.delta[i] = vsum(s);
    pk.lse[i] = a.lse[h * T + i];
  }
  if (r1 == T) {
    zero_cols(pk.qt, T, ldt, D);
    zero_cols(pk.dot, T, ldt, D);
    for (int64_t i = T; i < ldt; ++i) pk.lse[i] = pk.delta[i] = 0.f;
  }
  if constexpr (P::kPairs) {  // the columns [r0, r1) of Q^T and dO^T (to ldt at the end)
    const int64_t c1 = r1 == T ? ldt : r1;
    P::pairs(pk.qt + r0, ldt, D, c1 - r0, pk.qtb + r0, ldt, c1 - r0);
    P::pairs(pk.dot + r0, ldt, D, c1 - r0, pk.dotb + r0, ldt, c1 - r0);
  }
}

// Scratch floats of backward_keys.
template <class P>
int64_t tile_floats(int64_t Dp) {
  return 3 * kBk * Dp + 2 * kBk * kBq + (P::kPairs ? kBk * Dp + 3 * kBk * kBq / 2 : 0);
}

// Backward of key block [k0, k0 + kBk) of head h against every query that
// sees it: dk, dv rows += their full gradient; dqacc (T x Dp) += dS K, unscaled.
// Scratch (tile_floats): kp, dk, dv kBk x Dp; st, dpt kBk x kBq; for B16 then
// K and V as A pairs (kBk x Dp / 2 each), P and dS as row pairs
// (kBk x kBq / 2 each) and dS as column pairs (kBk / 2 x kBq).
template <class P>
void backward_keys(const AttentionGradArgs& g, int64_t h, int64_t k0, const Packed<P>& pk,
                   float* dqacc, float* scratch) {
  using S = typename P::S;
  using E = typename P::T;
  const AttentionArgs& a = g.fwd;
  const int64_t T = a.seq_q, D = a.head_dim, Dp = round_up(D, kW), ldt = round_up(T, kW);
  const int64_t nk = imin(kBk, T - k0);
  const float scale = 1.f / sqrtf((float)D);
  const V vscale = vset(scale);
  float *kp = scratch, *dk = kp + kBk * Dp, *dv = dk + kBk * Dp, *st = dv + kBk * Dp,
        *dpt = st + kBk * kBq;
  E *kab = nullptr, *vab = nullptr, *prow = nullptr, *drow = nullptr, *dcol = nullptr;
  if (P::kPairs) {
    kab = reinterpret_cast<E*>(dpt + kBk * kBq), vab = kab + kBk * Dp / 2;
    prow = vab + kBk * Dp / 2, drow = prow + kBk * kBq / 2, dcol = drow + kBk * kBq / 2;
  }
  const Head hd = head_at(a, h);
  const bool drop = a.dropout_p > 0.f;
  const uint64_t dkey = dropout::key(a.dropout_seed, h);
  const uint32_t dthr = dropout::threshold(a.dropout_p);
  const float dscale = 1.f / (1.f - a.dropout_p);
  const float *kr = hd.k + k0 * a.sk.row, *vr = hd.v + k0 * a.sv.row;
  const int64_t b = h / a.heads, hh = h % a.heads;
  float *dkr = g.dk + b * a.sk.batch + hh * a.sk.head + k0 * a.sk.row,
        *dvr = g.dv + b * a.sv.batch + hh * a.sv.head + k0 * a.sv.row;
  prefetch_rows(dkr, a.sk.row, nk, D, true);  // updated at the end
  prefetch_rows(dvr, a.sv.row, nk, D, true);
  const int64_t nnext = imin(kBk, T - k0 - kBk);
  if (nnext > 0) {  // the next key block's rows, while this one computes
    prefetch_rows(kr + kBk * a.sk.row, a.sk.row, nnext, D);
    prefetch_rows(vr + kBk * a.sv.row, a.sv.row, nnext, D);
  }
  const MatB<E> krows = P::b_rows(kr, a.sk.row, nk, D, Dp, reinterpret_cast<E*>(kp));
  const MatA<E> ka = P::a_rows(kr, a.sk.row, nk, D, kab, Dp / 2);
  const MatA<E> va = P::a_rows(vr, a.sv.row, nk, D, vab, Dp / 2);
  // Q and dO rows: packed by pack_head, or in place when D is whole vectors.
  const float* dout = g.dout + (hd.o - a.out);
  MatB<E> qrows, dorows;
  const E *qtb, *dotb;
  if constexpr (P::kPairs) {
    qrows = {pk.qpb, Dp}, dorows = {pk.dopb, Dp}, qtb = pk.qtb, dotb = pk.dotb;
  } else {
    qrows = D == Dp ? MatB<E>{hd.q, a.sq.row} : MatB<E>{pk.qp, Dp};
    dorows = D == Dp ? MatB<E>{dout, a.so.row} : MatB<E>{pk.dop, Dp};
    qtb = pk.qt, dotb = pk.dot;
  }
  memset(dk, 0, 2 * kBk * Dp * sizeof(float));  // dk and dv
  for (int64_t q0 = a.causal ? k0 / kBq * kBq : 0; q0 < T; q0 += kBq) {
    const int64_t nq = imin(kBq, T - q0), nqv = ceil_div(nq, kW);
    const int64_t tnk = a.causal ? imin(nk, q0 + nq - k0) : nk;
    const int64_t lim = a.causal ? k0 - q0 : -kAll;
    gemm<S>(tnk, nqv, D, ka, qtb + q0, ldt, st, kBq, false, -kAll, kAll, lim);
    gemm<S>(tnk, nqv, D, va, dotb + q0, ldt, dpt, kBq, false, -kAll, kAll, lim);
    if (a.causal && k0 + tnk - 1 > q0) mask_tile(st, tnk, nqv, lim);
    for (int64_t v = 0; v < nqv; ++v) {
      const V nlse = vzero() - vload(pk.lse + q0 + v * kW), delta = vload(pk.delta + q0 + v * kW);
      const int64_t live = hidden_from(v, lim, tnk);
      for (int64_t j = live; j < tnk; ++j) {
        vstore(st + j * kBq + v * kW, vzero());
        vstore(dpt + j * kBq + v * kW, vzero());
      }
      for (int64_t j = 0; j < live; ++j) {
        float *ps = st + j * kBq + v * kW, *pd = dpt + j * kBq + v * kW;
        const V p = vexp(vfma(vload(ps), vscale, nlse));
        if (drop) {  // dV takes the dropped P; dS = P (Z dP_dropped - delta)
          const V z = drop_scale(dkey, q0 + v * kW, k0 + j, a.seq_k, dthr, dscale);
          vstore(ps, p * z);
          vstore(pd, p * (vload(pd) * z - delta));
          continue;
        }
        vstore(ps, p);
        vstore(pd, p * (vload(pd) - delta));  // dS, unscaled
      }
    }
    // Key j is seen by queries i >= j + k0 - q0 only; query i sees j <= i + q0 - k0.
    const int64_t lo = a.causal ? k0 - q0 : -kAll, hi = a.causal ? q0 - k0 : kAll;
    gemm<S>(tnk, Dp / kW, nq, P::a_rows(st, kBq, tnk, nq, prow, kBq / 2), dorows.row(q0, S::kPer),
            dorows.ld, dv, Dp, true, lo);  // P^T dO
    gemm<S>(tnk, Dp / kW, nq, P::a_rows(dpt, kBq, tnk, nq, drow, kBq / 2), qrows.row(q0, S::kPer),
            qrows.ld, dk, Dp, true, lo);  // dS^T Q
    gemm<S>(nq, Dp / kW, tnk, P::a_cols(dpt, kBq, tnk, nqv * kW, dcol), krows.p, krows.ld,
            dqacc + q0 * Dp, Dp, true, -kAll, hi);  // dS K
  }
  add_rows(dkr, a.sk.row, &dk, 1, 0, nk, D, Dp, scale);
  add_rows(dvr, a.sv.row, &dv, 1, 0, nk, D, Dp, 1.f);
}

}  // namespace

// One query per head (decoding a token against the KV cache): the tiles
// would be 1/kW full, so scores, softmax and the weighted sum of V run as
// plain vector loops over D; exact two-pass softmax (scores kept, seq_k floats).
void forward_one_query(const AttentionArgs& a, int64_t h, float* scores) {
  const Head hd = head_at(a, h);
  const int64_t D = a.head_dim, nk = a.causal ? imin(a.seq_k, a.seq_k - a.seq_q + 1) : a.seq_k;
  const float scale = 1.f / sqrtf((float)D);
  const float* q = hd.q;
  float* out = hd.o;
  if (nk <= 0) {  // no visible key: out 0, lse -inf (as forward_rows)
    for (int64_t d = 0; d < D; ++d) out[d] = 0.f;
    a.lse[h * a.seq_q] = -INFINITY;
    return;
  }
  float mx = -INFINITY;
  for (int64_t j = 0; j < nk; ++j) {
    const float* kj = hd.k + j * a.sk.row;
    V acc = vzero();
    for (int64_t d = 0; d < D; d += kW) {
      const int64_t w = imin(kW, D - d);
      acc = vfma(vload_part(q + d, w), vload_part(kj + d, w), acc);
    }
    scores[j] = vsum(acc) * scale;
    mx = fmaxs(mx, scores[j]);
  }
  double sum = 0;
  for (int64_t j = 0; j < nk; ++j) {
    scores[j] = expf(scores[j] - mx);
    sum += scores[j];
  }
  const float inv = (float)(1.0 / sum);
  for (int64_t d = 0; d < D; d += kW) {
    const int64_t w = imin(kW, D - d);
    V acc = vzero();
    for (int64_t j = 0; j < nk; ++j) acc = vfma(vset(scores[j]), vload_part(hd.v + j * a.sv.row + d, w), acc);
    vstore_part(out + d, acc * vset(inv), w);
  }
  a.lse[h * a.seq_q] = mx + (float)std::log(sum);
}

// forward_one_query on every head; scores: seq_k floats per head.
void forward_one_query_heads(const AttentionArgs& a, float* scores) {
  const int64_t bh = a.batch * a.heads;
  parallel_for(bh, bh * a.seq_k * a.head_dim > (1 << 15),
               [&](int64_t h) { forward_one_query(a, h, scores + h * a.seq_k); });
}

// The tiled forward and backward with the products' operands read as P says.
template <class P>
void forward_impl(const AttentionArgs& a) {
  const int64_t bh = a.batch * a.heads, nqb = ceil_div(a.seq_q, kBq), D = a.head_dim;
  if (a.seq_q == 1 && a.dropout_p == 0.f) {
    // The scores on the stack up to a decoding step's sizes (no allocation
    // per token).
    constexpr int64_t kStackScores = 4096;
    if (bh * a.seq_k <= kStackScores) {
      alignas(64) float stack[kStackScores];
      return forward_one_query_heads(a, stack);
    }
    ScratchFloats heap(bh * a.seq_k, "attention: the scores of one query per head");
    return forward_one_query_heads(a, heap.data);
  }
  const int nth = num_threads();
  // Query blocks of one head share one Q^T: as many per work item as still
  // leaves every thread a few items.
  int64_t g = imin(nqb, 16);
  while (g > 1 && bh * ceil_div(nqb, g) < 4 * nth) g = ceil_div(g, 2);
  const int64_t ng = ceil_div(nqb, g), items = bh * ng, span = g * kBq, Dp = round_up(D, kW);
  // Per-thread scratch is allocated before the region: a failed allocation
  // inside it could not be reported (the exception would end the process).
  const int64_t scratch = per_thread_floats(forward_floats<P>(D, span));
  ScratchFloats bufs(scratch * nth, "attention: per-thread tiles");
#pragma omp parallel num_threads(nth)
  {
    float* buf = bufs.data + scratch * omp_get_thread_num();
    // Last query groups first: under a causal mask they cost the most.
#pragma omp for schedule(dynamic)
    for (int64_t it = 0; it < items; ++it) {
      const int64_t r0 = (ng - 1 - it / bh) * span;
      forward_rows<P>(a, it % bh, r0, imin(span, a.seq_q - r0), buf);
    }
  }
}

template <class P>
void backward_impl(const AttentionGradArgs& g) {
  const AttentionArgs& a = g.fwd;
  const int64_t bh = a.batch * a.heads, T = a.seq_q, D = a.head_dim, Dp = round_up(D, kW);
  const int64_t nkb = ceil_div(T, kBk), tile_fl = tile_floats<P>(Dp);
  const float scale = 1.f / sqrtf((float)D);
  const int nth = num_threads();
  if (nkb == 1 || bh % nth == 0 || bh >= 4 * nth) {
    // Enough heads to go round: one thread per head, dq accumulated in order.
    const int64_t per_thread = per_thread_floats(packed_floats<P>(T, D) + T * Dp + tile_fl);
    ScratchFloats bufs(per_thread * nth, "attention_backward: per-thread head buffers");
#pragma omp parallel num_threads(nth)
    {
      float* buf = bufs.data + per_thread * omp_get_thread_num();
      const Packed<P> pk = packed_at<P>(buf, T, D);
      float *dqacc = buf + packed_floats<P>(T, D), *tile = dqacc + T * Dp;
#pragma omp for schedule(static)
      for (int64_t h = 0; h < bh; ++h) {
        pack_head(g, h, 0, T, pk);
        memset(dqacc, 0, T * Dp * sizeof(float));
        const int64_t b = h / a.heads, hh = h % a.heads;
        float* dq = g.dq + b * a.sq.batch + hh * a.sq.head;
        for (int64_t kb = 0; kb < nkb; ++kb) {
          if (kb == nkb - 1) prefetch_rows(dq, a.sq.row, T, D, true);  // updated next
          backward_keys(g, h, kb * kBk, pk, dqacc, tile);
        }
        add_rows(dq, a.sq.row, &dqacc, 1, 0, T, D, Dp, scale);
      }
    }
    return;
  }
  // Few heads: the threads share each head by key blocks. Each keeps its own
  // dq partial, summed in thread order afterwards, so the result does not
  // depend on timing.
  const int64_t tile_stride = per_thread_floats(tile_fl);
  ScratchFloats shared(packed_floats<P>(T, D) + nth * T * Dp + nth * tile_stride,
                       "attention_backward: packed head, dq partials and tiles");
  const Packed<P> pk = packed_at<P>(shared.data, T, D);
  float* dqacc[kMaxThreads];  // not std::vector: no template code shared across ISA objects
  for (int t = 0; t < nth; ++t) dqacc[t] = shared.data + packed_floats<P>(T, D) + t * T * Dp;
  float* const tiles = shared.data + packed_floats<P>(T, D) + nth * T * Dp;
#pragma omp parallel num_threads(nth)
  {
    float* tile = tiles + tile_stride * omp_get_thread_num();
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int64_t nchunk = ceil_div(T, 64), rounds = ceil_div(nkb, nt);
    for (int64_t h = 0; h < bh; ++h) {
#pragma omp for schedule(static)
      for (int64_t c = 0; c < nchunk; ++c) pack_head(g, h, c * 64, imin(T, c * 64 + 64), pk);
      memset(dqacc[t], 0, T * Dp * sizeof(float));
      // Snake order over key blocks: under a causal mask block kb costs
      // ~ nkb - kb, and alternating direction per round evens threads out.
#pragma omp for schedule(static, 1)
      for (int64_t it = 0; it < rounds * nt; ++it) {
        const int64_t r = it / nt, pos = it % nt, kb = r * nt + (r % 2 ? nt - 1 - pos : pos);
        if (kb < nkb) backward_keys(g, h, kb * kBk, pk, dqacc[t], tile);
      }
      const int64_t b = h / a.heads, hh = h % a.heads;
#pragma omp for schedule(static)
      for (int64_t c = 0; c < nchunk; ++c) {
        add_rows(g.dq + b * a.sq.batch + hh * a.sq.head + c * 64 * a.sq.row, a.sq.row, dqacc, nt,
                 c * 64 * Dp, imin(64, T - c * 64), D, Dp, scale);
      }
    }
  }
}

#if defined(FASTLM_ISA_AVX512BF16)
// The attention of the mixed-precision table (table.cpp): QK^T and PV, and
// the backward's five products, on bfloat16 operands with float32
// accumulation; softmax statistics, outputs and gradients in float32. One
// query per head (decoding) stays float32.
void attention_forward_bf16(const AttentionArgs& a) { forward_impl<B16>(a); }
void attention_backward_bf16(const AttentionGradArgs& g) { backward_impl<B16>(g); }
#else
void attention_forward(const AttentionArgs& a) { forward_impl<F32>(a); }
void attention_backward(const AttentionGradArgs& g) { backward_impl<F32>(g); }
#endif

}  // namespace FASTLM_ISA
}  // namespace cpu
}  // namespace fastlm

// Causal self-attention on CPU, forward and backward, as XLA FFI handlers:
//
//   out[b, i, h] = sum_{j <= i} softmax_j(scale * q[b, i, h] . k[b, j, h / G]) v[b, j, h / G]
//
// q, out: [B, T, H, D]; k, v: [B, T, Hk, D] (G = H / Hk query heads per key/value head);
// lse: [B, H, T], the log-sum-exp of each row's scaled logits, saved for the backward.
//
// Why a kernel of our own: XLA:CPU runs attention as separate batched products of one head
// each (for the Transformer-LM shapes, 32-128 rows by 32-64 dims, a small fraction of the
// machine's peak), with the masked softmax as separate passes and the heads transposed out of
// and back into [B, T, H, D] around them, and PyTorch's fused CPU kernel was faster than that
// (`python -m benchmarks.attention`: rows causal_*_xla_* against the peer; the native rows
// beside them measure this kernel; stored in benchmarks/results/). Here each (batch, key/value
// head) is one task: its rows are packed once, the logits of a block of 4 query rows against the
// keys they may see (never the masked upper triangle) stay in a T x T buffer that lives in L2,
// the softmax runs over it in place, and each product is a register-tiled loop:
//
//   rows x keys:   C[r, j] = sum_d A[r, d] BT[d, j]     4 rows x CV vectors of keys
//   rows x dims:   C[r, :] = sum_j W[r, j] B[j, :]      4 rows x DV vectors of head dims
//
// The backward recomputes the probabilities from q, k and lse (FlashAttention's backward):
// dV = P^T dO, dP = dO V^T, dS = P (dP - rowsum(dO o O)), dQ = scale dS K, dK = dS^T (scale Q).
// Vector width and register budget per instruction set come from jaxnets/kernels/native.py
// (JAXNETS_VW floats per vector, JAXNETS_ACC accumulators).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <vector>

#include "native_kernels.h"

namespace ffi = xla::ffi;

namespace {

using namespace jaxnets_native;

constexpr int R = 4;                                  // query rows per register tile
constexpr int CV = JAXNETS_ACC / R;                   // vectors per row in a tile

// C[r, j] = sum_d A[r * lda + d] * BT[d * ldb + j] for rows [0, nr), columns [0, ncols) (a
// multiple of VW; BT is zero-padded to it), C row stride ldc.
template <int NR>
void rows_by_keys(const float* A, int64_t lda, const float* BT, int64_t ldb, int64_t D,
                  float* C, int64_t ldc, int64_t ncols) {
  int64_t j = 0;
  for (; j + CV * VW <= ncols; j += CV * VW) {
    vec acc[NR][CV] = {};
    for (int64_t d = 0; d < D; ++d) {
      vec b[CV];
      for (int c = 0; c < CV; ++c) b[c] = load_kept(BT + d * ldb + j + c * VW);
      for (int r = 0; r < NR; ++r) {
        vec a = splat(A[r * lda + d]);
        for (int c = 0; c < CV; ++c) acc[r][c] += a * b[c];
      }
    }
    for (int r = 0; r < NR; ++r)
      for (int c = 0; c < CV; ++c) store(C + r * ldc + j + c * VW, acc[r][c]);
  }
  for (; j < ncols; j += VW) {
    vec acc[NR] = {};
    for (int64_t d = 0; d < D; ++d) {
      vec b = load_kept(BT + d * ldb + j);
      for (int r = 0; r < NR; ++r) acc[r] += splat(A[r * lda + d]) * b;
    }
    for (int r = 0; r < NR; ++r) store(C + r * ldc + j, acc[r]);
  }
}

// C[r, e:e + NV*VW] (+)= sum_{j in [j0, j1)} W[r * rs + j * js] * B[j * ldb + e:...] for rows
// [0, NR): one register tile of NV vectors of the head dims. (rs, js) = (ldw, 1) reads W by
// rows; (1, ldw) reads its transpose in place (W^T B without a transposed copy).
template <int NR, int NV>
void rows_by_dims_tile(const float* W, int64_t rs, int64_t js, const float* B, int64_t ldb,
                       int64_t j0, int64_t j1, float* C, bool accumulate) {
  vec acc[NR][NV] = {};
  for (int64_t j = j0; j < j1; ++j) {
    vec b[NV];
    for (int c = 0; c < NV; ++c) b[c] = load_kept(B + j * ldb + c * VW);
    for (int r = 0; r < NR; ++r) {
      vec w = splat(W[r * rs + j * js]);
      for (int c = 0; c < NV; ++c) acc[r][c] += w * b[c];
    }
  }
  for (int r = 0; r < NR; ++r)
    for (int c = 0; c < NV; ++c) {
      float* dst = C + r * ldb + c * VW;
      store(dst, accumulate ? load(dst) + acc[r][c] : acc[r][c]);
    }
}

// C[r, :D] (+)= sum_{j in [j0, j1)} W[r * rs + j * js] * B[j * D + :D] for rows [0, NR); B and
// C rows are D floats apart, D a multiple of VW. `accumulate`: add to C instead of overwriting.
template <int NR>
void rows_by_dims(const float* W, int64_t rs, int64_t js, const float* B, int64_t D, int64_t j0,
                  int64_t j1, float* C, bool accumulate) {
  int64_t e = 0;
  for (; e + CV * VW <= D; e += CV * VW)
    rows_by_dims_tile<NR, CV>(W, rs, js, B + e, D, j0, j1, C + e, accumulate);
  switch ((D - e) / VW) {   // the remaining vectors, fewer than CV
    case 0: break;
    case 1: rows_by_dims_tile<NR, 1>(W, rs, js, B + e, D, j0, j1, C + e, accumulate); break;
    case 2: rows_by_dims_tile<NR, 2>(W, rs, js, B + e, D, j0, j1, C + e, accumulate); break;
    default:
      for (; e < D; e += VW) rows_by_dims_tile<NR, 1>(W, rs, js, B + e, D, j0, j1, C + e, accumulate);
  }
}

// Row tiles of R rows, then single rows, of a loop body templated on its row count.
template <typename F>
void over_row_tiles(int64_t T, F&& body) {
  int64_t i = 0;
  for (; i + R <= T; i += R) body(std::integral_constant<int, R>{}, i);
  for (; i < T; ++i) body(std::integral_constant<int, 1>{}, i);
}

struct Dims {
  int64_t B, T, H, Hk, D, G, Tp;   // Tp: T rounded up to the vector width
};

// Per task: rows of one head gathered from [B, T, heads, D] into [T, D] (times `mul`), and the
// transposed [D, Tp] copy (zero columns past T) that rows_by_keys reads.
void gather_rows(const float* x, int64_t b, int64_t head, int64_t heads, const Dims& s, float mul,
                 float* rows) {
  for (int64_t t = 0; t < s.T; ++t) {
    const float* src = x + ((b * s.T + t) * heads + head) * s.D;
    for (int64_t d = 0; d < s.D; ++d) rows[t * s.D + d] = src[d] * mul;
  }
}

// In blocks of VW rows: each column's VW values go out as one vector store. Written column by
// column over all rows, every store landed on another cache line, and the copy took a quarter
// of the forward's time outside the products (T 256, D 64).
void transpose_rows(const float* rows, const Dims& s, float* cols) {
  int64_t t = 0;
  for (; t + VW <= s.T; t += VW)
    for (int64_t d = 0; d < s.D; ++d) {
      vec v;
      for (int l = 0; l < VW; ++l) v[l] = rows[(t + l) * s.D + d];
      store(cols + d * s.Tp + t, v);
    }
  for (; t < s.T; ++t)
    for (int64_t d = 0; d < s.D; ++d) cols[d * s.Tp + t] = rows[t * s.D + d];
  for (int64_t d = 0; d < s.D; ++d) std::fill(cols + d * s.Tp + s.T, cols + (d + 1) * s.Tp, 0.f);
}

// Scaled logits of every row against the keys it may see, into S [T, Tp] (columns past a row's
// tile are garbage; callers read j <= i only).
void logits(const float* Qs, const float* KT, const Dims& s, float* S) {
  over_row_tiles(s.T, [&](auto nr, int64_t i) {
    const int64_t ncols = round_up(i + nr, VW);
    rows_by_keys<decltype(nr)::value>(Qs + i * s.D, s.D, KT, s.Tp, s.D, S + i * s.Tp, s.Tp, ncols);
  });
}

// Lane numbers 0..VW-1: masks for the vector that holds a row's last visible key.
inline vec lanes() {
  vec l;
  for (int c = 0; c < VW; ++c) l[c] = static_cast<float>(c);
  return l;
}

inline float hmax(vec v) {
  float m = v[0];
  for (int c = 1; c < VW; ++c) m = std::max(m, v[c]);
  return m;
}

// Row i of S [T, Tp] sees keys [0, i]: `visit(j, mask)` for each vector start j up to the one
// holding key i, `mask` true on the visible lanes; the vector after it (still inside Tp) is
// zeroed, so column reads of a 4-key tile below the diagonal (keys up to i + 3) read zeros.
template <typename F>
inline void causal_row(float* row, int64_t i, int64_t Tp, F&& visit) {
  const int64_t full = (i + 1) / VW * VW;
  for (int64_t j = 0; j < full; j += VW) visit(j, splat(0.f) == splat(0.f));
  if (full < i + 1) visit(full, lanes() < splat(static_cast<float>(i + 1 - full)));
  const int64_t next = round_up(i + 1, VW);
  if (next < Tp) store(row + next, splat(0.f));
}

// Forward softmax of the causal rows in place: S row i becomes exp(S - m_i) on keys [0, i] and 0
// on the other lanes of its last vector; lse_i = m_i + log(l_i), inv_l_i = 1 / l_i.
void softmax_rows(float* S, const Dims& s, float* lse, float* inv_l) {
  const vec minus_inf = splat(-INFINITY), zero = splat(0.f);
  for (int64_t i = 0; i < s.T; ++i) {
    float* row = S + i * s.Tp;
    vec mv = minus_inf;
    causal_row(row, i, s.Tp, [&](int64_t j, auto mask) {
      vec x = mask ? load(row + j) : minus_inf;
      mv = x > mv ? x : mv;
    });
    const float m = hmax(mv);
    vec total = zero;
    causal_row(row, i, s.Tp, [&](int64_t j, auto mask) {
      vec p = mask ? vexp(load(row + j) - splat(m)) : zero;
      store(row + j, p);
      total += p;
    });
    const float l = hsum(total);
    lse[i] = m + std::log(l);
    inv_l[i] = 1.f / l;
  }
}

// Backward: S row i becomes P = exp(S - lse_i) on keys [0, i], 0 past them (see causal_row).
void probabilities(float* S, const float* lse, const Dims& s) {
  const vec zero = splat(0.f);
  for (int64_t i = 0; i < s.T; ++i) {
    float* row = S + i * s.Tp;
    const vec m = splat(lse[i]);
    causal_row(row, i, s.Tp, [&](int64_t j, auto mask) {
      store(row + j, mask ? vexp(load(row + j) - m) : zero);
    });
  }
}

// dS = P * (dP - delta_i) in place of dP, on the same lanes as P (P is 0 elsewhere).
void softmax_grad(const float* P, const float* delta, const Dims& s, float* dS) {
  for (int64_t i = 0; i < s.T; ++i) {
    float* row = dS + i * s.Tp;
    const float* p = P + i * s.Tp;
    const vec d = splat(delta[i]);
    causal_row(row, i, s.Tp, [&](int64_t j, auto) { store(row + j, load(p + j) * (load(row + j) - d)); });
  }
}

ffi::Error check(ffi::Buffer<ffi::F32>& q, ffi::Buffer<ffi::F32>& k, ffi::Buffer<ffi::F32>& v, Dims& s) {
  const auto qd = q.dimensions(), kd = k.dimensions(), vd = v.dimensions();
  if (qd.size() != 4 || kd.size() != 4 || vd.size() != 4)
    return ffi::Error::InvalidArgument("causal_attention: q, k, v must be [B, T, heads, D]");
  s = Dims{qd[0], qd[1], qd[2], kd[2], qd[3], 0, 0};
  if (kd[0] != s.B || kd[1] != s.T || kd[3] != s.D || vd[0] != s.B || vd[1] != s.T ||
      vd[2] != s.Hk || vd[3] != s.D || s.Hk == 0 || s.H % s.Hk != 0 || s.D % VW != 0)
    return ffi::Error::InvalidArgument("causal_attention: incompatible shapes (or head_dim not a "
                                       "multiple of the vector width)");
  s.G = s.H / s.Hk;
  s.Tp = round_up(s.T, VW);
  return ffi::Error::Success();
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                   ffi::Buffer<ffi::F32> v, ffi::ResultBuffer<ffi::F32> out,
                   ffi::ResultBuffer<ffi::F32> lse, float scale, int64_t threads) {
  Dims s;
  if (ffi::Error err = check(q, k, v, s); err.failure()) return err;
  const float *qs = q.typed_data(), *ks = k.typed_data(), *vs = v.typed_data();
  float *os = out->typed_data(), *ls = lse->typed_data();
  run_tasks(pool, threads, s.B * s.Hk, [=](int64_t task) {
    const int64_t b = task / s.Hk, hk = task % s.Hk;
    const int64_t TD = s.T * s.D, DT = s.D * s.Tp, TT = s.T * s.Tp;
    Scratch scratch(scratch_floats({TD, DT, TD, TD, TT, R * s.D, s.T}));
    float *K = scratch.take(TD), *KT = scratch.take(DT), *V = scratch.take(TD), *Q = scratch.take(TD),
          *S = scratch.take(TT), *O = scratch.take(R * s.D), *inv_l = scratch.take(s.T);
    gather_rows(ks, b, hk, s.Hk, s, 1.f, K);
    transpose_rows(K, s, KT);
    gather_rows(vs, b, hk, s.Hk, s, 1.f, V);
    for (int64_t g = 0; g < s.G; ++g) {
      const int64_t h = hk * s.G + g;
      gather_rows(qs, b, h, s.H, s, scale, Q);
      logits(Q, KT, s, S);
      softmax_rows(S, s, ls + (b * s.H + h) * s.T, inv_l);
      over_row_tiles(s.T, [&](auto nr, int64_t i) {
        rows_by_dims<decltype(nr)::value>(S + i * s.Tp, s.Tp, 1, V, s.D, 0, i + nr, O, false);
        for (int r = 0; r < nr; ++r) {   // normalised here: D products per row, not i + 1
          float* dst = os + ((b * s.T + i + r) * s.H + h) * s.D;
          for (int64_t e = 0; e < s.D; ++e) dst[e] = O[r * s.D + e] * inv_l[i + r];
        }
      });
    }
  });
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k,
                    ffi::Buffer<ffi::F32> v, ffi::Buffer<ffi::F32> out, ffi::Buffer<ffi::F32> lse,
                    ffi::Buffer<ffi::F32> dout, ffi::ResultBuffer<ffi::F32> dq,
                    ffi::ResultBuffer<ffi::F32> dk, ffi::ResultBuffer<ffi::F32> dv, float scale,
                    int64_t threads) {
  Dims s;
  if (ffi::Error err = check(q, k, v, s); err.failure()) return err;
  const float *qs = q.typed_data(), *ks = k.typed_data(), *vs = v.typed_data(), *os = out.typed_data(),
              *ls = lse.typed_data(), *dos = dout.typed_data();
  float *dqs = dq->typed_data(), *dks = dk->typed_data(), *dvs = dv->typed_data();
  run_tasks(pool, threads, s.B * s.Hk, [=](int64_t task) {
    const int64_t b = task / s.Hk, hk = task % s.Hk;
    const int64_t TD = s.T * s.D, DT = s.D * s.Tp, TT = s.T * s.Tp;
    Scratch scratch(scratch_floats({TD, DT, TD, DT, TD, TD, TT, TT, s.T, TD, TD, R * s.D}));
    float *K = scratch.take(TD), *KT = scratch.take(DT), *V = scratch.take(TD), *VT = scratch.take(DT),
          *Q = scratch.take(TD), *dO = scratch.take(TD), *P = scratch.take(TT),
          *dS = scratch.take(TT), *delta = scratch.take(s.T), *dK = scratch.take(TD),
          *dV = scratch.take(TD), *dQ = scratch.take(R * s.D);
    std::fill(dK, dK + TD, 0.f);
    std::fill(dV, dV + TD, 0.f);
    gather_rows(ks, b, hk, s.Hk, s, 1.f, K);
    transpose_rows(K, s, KT);
    gather_rows(vs, b, hk, s.Hk, s, 1.f, V);
    transpose_rows(V, s, VT);
    for (int64_t g = 0; g < s.G; ++g) {
      const int64_t h = hk * s.G + g;
      const float* row_lse = ls + (b * s.H + h) * s.T;
      gather_rows(qs, b, h, s.H, s, scale, Q);
      gather_rows(dos, b, h, s.H, s, 1.f, dO);
      logits(Q, KT, s, P);
      probabilities(P, row_lse, s);
      logits(dO, VT, s, dS);          // dP = dO V^T, overwritten by dS
      for (int64_t i = 0; i < s.T; ++i) {   // rowsum(dO o O), O read in place (D a multiple of VW)
        const float* o = os + ((b * s.T + i) * s.H + h) * s.D;
        vec d = splat(0.f);
        for (int64_t e = 0; e < s.D; e += VW) d += load(dO + i * s.D + e) * load(o + e);
        delta[i] = hsum(d);
      }
      softmax_grad(P, delta, s, dS);
      // dQ rows: scale * dS K over the keys each row sees.
      over_row_tiles(s.T, [&](auto nr, int64_t i) {
        rows_by_dims<decltype(nr)::value>(dS + i * s.Tp, s.Tp, 1, K, s.D, 0, i + nr,
                                          dQ, false);
        for (int r = 0; r < nr; ++r) {
          float* dst = dqs + ((b * s.T + i + r) * s.H + h) * s.D;
          for (int64_t e = 0; e < s.D; ++e) dst[e] = scale * dQ[r * s.D + e];
        }
      });
      // dV += P^T dO and dK += dS^T (scale Q): key j gathers the rows i >= j, reading P and
      // dS down their columns (both are zero above the diagonal).
      over_row_tiles(s.T, [&](auto nr, int64_t j) {
        rows_by_dims<decltype(nr)::value>(P + j, 1, s.Tp, dO, s.D, j, s.T,
                                          dV + j * s.D, true);
        rows_by_dims<decltype(nr)::value>(dS + j, 1, s.Tp, Q, s.D, j, s.T,
                                          dK + j * s.D, true);
      });
    }
    for (int64_t t = 0; t < s.T; ++t) {
      std::memcpy(dks + ((b * s.T + t) * s.Hk + hk) * s.D, dK + t * s.D, s.D * sizeof(float));
      std::memcpy(dvs + ((b * s.T + t) * s.Hk + hk) * s.D, dV + t * s.D, s.D * sizeof(float));
    }
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(CausalAttentionFwd, Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // q   [B, T, H, D]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // k   [B, T, Hk, D]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // v   [B, T, Hk, D]
                                  .Ret<ffi::Buffer<ffi::F32>>()   // out [B, T, H, D]
                                  .Ret<ffi::Buffer<ffi::F32>>()   // lse [B, H, T]
                                  .Attr<float>("scale")
                                  .Attr<int64_t>("threads"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(CausalAttentionBwd, Backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // q
                                  .Arg<ffi::Buffer<ffi::F32>>()   // k
                                  .Arg<ffi::Buffer<ffi::F32>>()   // v
                                  .Arg<ffi::Buffer<ffi::F32>>()   // out
                                  .Arg<ffi::Buffer<ffi::F32>>()   // lse
                                  .Arg<ffi::Buffer<ffi::F32>>()   // dout
                                  .Ret<ffi::Buffer<ffi::F32>>()   // dq [B, T, H, D]
                                  .Ret<ffi::Buffer<ffi::F32>>()   // dk [B, T, Hk, D]
                                  .Ret<ffi::Buffer<ffi::F32>>()   // dv [B, T, Hk, D]
                                  .Attr<float>("scale")
                                  .Attr<int64_t>("threads"));

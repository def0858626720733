// Weight gradient of a dense layer y = x W, as an XLA FFI handler:
//
//   dw[k, n] = sum over m of x[m, k] * g[m, n]        (x [M, K], g [M, N] row-major: dw = x^T g)
//
// Why a kernel of our own: XLA:CPU runs this product, contracting both operands' rows, at
// 155-180 GFLOP/s on the 2-core Zen 4 where the same shapes as x W reach ~205 (a Transformer
// LM's [4096, 384] x [4096, 1536] weight gradients, benchmarks/results/README.md); the weight
// gradients are a third of a Transformer step's products.
//
// The loop is the 1x1 case of conv3x3_filter_grad.cc: a register tile of CB rows of dw (CB
// consecutive x values, broadcast) x OV vectors of g's columns accumulates over a block of
// kRows rows of x and g, then is added to dw. Rows of dw are split into chunks, one task each,
// so threads never write the same dw and the result does not depend on how many threads ran.
// Per ISA (jaxnets/kernels/native.py's -D macros): CB = JAXNETS_ACC / JAXNETS_OV, as there.
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "native_kernels.h"

namespace ffi = xla::ffi;

namespace {

using namespace jaxnets_native;

// Rows of x and g per register pass (the tile's sums are added to dw after each).
constexpr int64_t kRows = 256;
// A task's block of dw: kChunk rows x all columns. Each task reads its columns of x and all of
// g, so g should be the narrower operand: jaxnets/kernels/dense_weight_grad.py computes a dw
// wider than tall as (g^T x)^T (4096 x 384 x 1536: 157 GFLOP/s as x^T g, ~200 as g^T x).
constexpr int64_t kChunk = 64;   // a multiple of every CB

// dw[k0:k0+CB, n0:n0+VW OV] (+)= x[m0:m0+rows, k0:k0+CB]^T g[m0:m0+rows, n0:n0+VW OV].
template <int CB, int OV>
inline void Tile(const float* x, int64_t K, const float* g, int64_t N, int64_t rows, float* dw,
                 bool first) {
  vec acc[CB][OV] = {};
  for (int64_t m = 0; m < rows; ++m) {
    vec gv[OV];
    for (int j = 0; j < OV; ++j) gv[j] = load_kept(g + m * N + VW * j);
    const float* xm = x + m * K;
    for (int c = 0; c < CB; ++c)
      for (int j = 0; j < OV; ++j) acc[c][j] += xm[c] * gv[j];
  }
  for (int c = 0; c < CB; ++c)
    for (int j = 0; j < OV; ++j) {
      float* out = dw + c * N + VW * j;
      store(out, first ? acc[c][j] : load(out) + acc[c][j]);
    }
}

// dw[k0:k1, n0:n1] over all M rows: m blocks outermost (g's panel and x's rows stay in cache),
// then column blocks of VW OV, then tiles of CB rows (smaller ones for what is left of the block).
template <int OV>
void Block(const float* x, const float* g, float* dw, int64_t M, int64_t K, int64_t N, int64_t k0,
           int64_t k1, int64_t n0, int64_t n1) {
  constexpr int CB = std::min(16, JAXNETS_ACC / OV);
  for (int64_t m0 = 0; m0 < M; m0 += kRows) {
    const int64_t rows = std::min(kRows, M - m0);
    const bool first = m0 == 0;
    const float* xb = x + m0 * K;
    const float* gb = g + m0 * N;
    for (int64_t n = n0; n < n1; n += VW * OV) {
      int64_t k = k0;
      for (; k + CB <= k1; k += CB) Tile<CB, OV>(xb + k, K, gb + n, N, rows, dw + k * N + n, first);
      for (; k + 4 <= k1; k += 4) Tile<4, OV>(xb + k, K, gb + n, N, rows, dw + k * N + n, first);
      for (; k < k1; ++k) Tile<1, OV>(xb + k, K, gb + n, N, rows, dw + k * N + n, first);
    }
  }
}

// threads: the most threads of the intra-op pool to use (0: all of them).
ffi::Error DenseWeightGradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> g,
                               ffi::ResultBuffer<ffi::F32> dw, int64_t threads) {
  const auto xd = x.dimensions(), gd = g.dimensions(), wd = dw->dimensions();
  if (xd.size() != 2 || gd.size() != 2 || wd.size() != 2)
    return ffi::Error::InvalidArgument("dense_weight_grad: rank-2 operands expected");
  const int64_t M = xd[0], K = xd[1], N = gd[1];
  if (gd[0] != M || wd[0] != K || wd[1] != N)
    return ffi::Error::InvalidArgument("dense_weight_grad: shapes do not match");
  if (N % VW) return ffi::Error::InvalidArgument("dense_weight_grad: N must be a multiple of the vector width");
  float* out = dw->typed_data();
  if (M == 0) {
    std::fill(out, out + K * N, 0.f);
    return ffi::Error::Success();
  }
  const bool wide = JAXNETS_OV >= 2 && N % (2 * VW) == 0;
  const float *xs = x.typed_data(), *gs = g.typed_data();
  run_tasks(pool, threads, (K + kChunk - 1) / kChunk, [&](int64_t t) {
    const int64_t k0 = t * kChunk, k1 = std::min(K, k0 + kChunk);
    (wide ? Block<2> : Block<1>)(xs, gs, out, M, K, N, k0, k1, 0, N);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(DenseWeightGrad, DenseWeightGradImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // x  [M, K]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // g  [M, N]
                                  .Ret<ffi::Buffer<ffi::F32>>()   // dw [K, N]
                                  .Attr<int64_t>("threads"));

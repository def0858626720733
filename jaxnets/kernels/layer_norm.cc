// Layer normalisation over the last axis, forward and backward, as XLA FFI handlers:
//
//   forward:  mean_r = sum_c x[r, c] / D,  rstd_r = 1 / sqrt(sum_c (x[r, c] - mean_r)^2 / D + eps)
//             y[r, c] = (x[r, c] - mean_r) rstd_r scale[c] + bias[c];   stats[r] = (mean_r, rstd_r)
//   backward: xhat = (x - mean) rstd,  h = dy scale,
//             dx[r, c] = rstd_r (h[r, c] - mean_c' h[r, c'] - xhat[r, c] mean_c' h[r, c'] xhat[r, c'])
//             dparams[0, c] = sum_r dy[r, c] xhat[r, c] (dscale),  dparams[1, c] = sum_r dy[r, c] (dbias)
//
// Why a kernel: XLA:CPU spreads a Transformer's LayerNorm over several passes per direction (the
// mean and variance reductions, the normalisation, the scale broadcast to the activation's full
// shape and stored, and a backward fusion reading six full-size operands): ~52 ms of the 6 x 384
// LM's step on the Zen 4 machine (`python -m benchmarks.op_profile --work transformer --size
// large`). Here a row (a few KiB) stays in L1 across its passes: the forward reads x once from
// memory and writes y, the backward reads x and dy and writes dx.
//
// Work: rows in chunks of kChunkRows (tasks on XLA's pool where `threads` allows). The parameter
// gradients sum each chunk's rows in float32 in blocks of kBlockRows rows, added into double
// totals per chunk, the chunks' totals in order (`rows_with_column_sums`): every result is the
// same for any thread count. D must be a multiple of the vector width (`supported` asks for 16).
#include <cmath>
#include <cstdint>
#include <vector>

#include "native_kernels.h"

namespace ffi = xla::ffi;
using namespace jaxnets_native;

namespace {

constexpr int64_t kChunkRows = 256;   // rows per task
constexpr int64_t kBlockRows = 64;    // rows summed in float32 before a double total

// Sum of a row of D floats with four independent accumulators (the additions do not wait on
// each other).
template <typename F>
inline float row_sum(int64_t D, F&& term) {
  vec a0 = splat(0.f), a1 = a0, a2 = a0, a3 = a0;
  int64_t c = 0;
  for (; c + 4 * VW <= D; c += 4 * VW) {
    a0 += term(c);
    a1 += term(c + VW);
    a2 += term(c + 2 * VW);
    a3 += term(c + 3 * VW);
  }
  for (; c < D; c += VW) a0 += term(c);
  return hsum((a0 + a1) + (a2 + a3));
}

void forward_rows(const float* x, const float* scale, const float* bias, int64_t D, float eps,
                  int64_t r0, int64_t r1, float* y, float* stats) {
  const float inv_d = 1.f / static_cast<float>(D);
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = x + r * D;
    float* yr = y + r * D;
    const float mean = row_sum(D, [&](int64_t c) { return load(xr + c); }) * inv_d;
    const vec m = splat(mean);
    const float var = row_sum(D, [&](int64_t c) {
      const vec d = load(xr + c) - m;
      return d * d;
    }) * inv_d;
    const float rstd = 1.f / std::sqrt(var + eps);
    const vec s = splat(rstd);
    for (int64_t c = 0; c < D; c += VW)
      store(yr + c, (load(xr + c) - m) * s * load(scale + c) + load(bias + c));
    stats[2 * r] = mean;
    stats[2 * r + 1] = rstd;
  }
}

// Rows [r0, r1): dx, and the parameter gradients' terms added into dscale, dbias (D floats each).
void backward_rows(const float* x, const float* scale, const float* stats, const float* dy,
                   int64_t D, int64_t r0, int64_t r1, float* dx, float* dscale, float* dbias) {
  const float inv_d = 1.f / static_cast<float>(D);
  for (int64_t r = r0; r < r1; ++r) {
    const float *xr = x + r * D, *gr = dy + r * D;
    float* dr = dx + r * D;
    const vec m = splat(stats[2 * r]), s = splat(stats[2 * r + 1]);
    const float mean_h = row_sum(D, [&](int64_t c) { return load(gr + c) * load(scale + c); }) * inv_d;
    const float mean_hx = row_sum(D, [&](int64_t c) {
      return load(gr + c) * load(scale + c) * ((load(xr + c) - m) * s);
    }) * inv_d;
    const vec a = splat(mean_h), b = splat(mean_hx);
    for (int64_t c = 0; c < D; c += VW) {
      const vec g = load(gr + c), xhat = (load(xr + c) - m) * s;
      store(dr + c, s * (g * load(scale + c) - a - xhat * b));
      store(dscale + c, load(dscale + c) + g * xhat);
      store(dbias + c, load(dbias + c) + g);
    }
  }
}

// Rows [0, N) in chunks of `chunk_rows` (the tasks of run_tasks), each chunk's rows in blocks of
// at most `block_rows`: `block(r0, r1, acc)` handles rows [r0, r1) and adds its per-column terms
// (a parameter's gradient) into acc, `ncols` floats zeroed per block. Each block's float32 sums
// are added into the chunk's double totals, the chunks' totals in order into out (`ncols`
// floats): the same sums for any thread count.
template <typename F>
void rows_with_column_sums(xla::ffi::ThreadPool pool, int64_t threads, int64_t N,
                           int64_t chunk_rows, int64_t block_rows, int64_t ncols, float* out,
                           F block) {
  const int64_t chunks = std::max<int64_t>(1, (N + chunk_rows - 1) / chunk_rows);
  std::vector<double> totals(chunks * ncols, 0.0);
  double* tot = totals.data();
  run_tasks(pool, threads, chunks, [=](int64_t t) {
    Scratch scratch(scratch_floats({ncols}));
    float* acc = scratch.take(ncols);
    double* chunk = tot + t * ncols;
    const int64_t end = std::min(N, (t + 1) * chunk_rows);
    for (int64_t r0 = t * chunk_rows; r0 < end; r0 += block_rows) {
      std::fill(acc, acc + ncols, 0.f);
      block(r0, std::min(end, r0 + block_rows), acc);
      for (int64_t c = 0; c < ncols; ++c) chunk[c] += acc[c];
    }
  });
  for (int64_t c = 0; c < ncols; ++c) {
    double sum = 0.0;
    for (int64_t t = 0; t < chunks; ++t) sum += totals[t * ncols + c];
    out[c] = static_cast<float>(sum);
  }
}

// Rows and width of x [..., D], or an error.
ffi::Error rows_of(const ffi::Buffer<ffi::F32>& x, int64_t& N, int64_t& D) {
  const auto xd = x.dimensions();
  if (xd.size() < 1) return ffi::Error::InvalidArgument("layer_norm: x must be [..., D]");
  D = xd[xd.size() - 1];
  if (D == 0 || D % VW)
    return ffi::Error::InvalidArgument("layer_norm: the last axis must be a non-zero multiple of the vector width");
  N = x.element_count() / D;
  return ffi::Error::Success();
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> scale,
                   ffi::Buffer<ffi::F32> bias, ffi::ResultBuffer<ffi::F32> y,
                   ffi::ResultBuffer<ffi::F32> stats, float eps, int64_t threads) {
  int64_t N, D;
  if (ffi::Error err = rows_of(x, N, D); err.failure()) return err;
  if (scale.element_count() != D || bias.element_count() != D || y->element_count() != N * D ||
      stats->element_count() != 2 * N)
    return ffi::Error::InvalidArgument("layer_norm: scale, bias [D], y [..., D], stats [..., 2] expected");
  const float *xs = x.typed_data(), *ss = scale.typed_data(), *bs = bias.typed_data();
  float *ys = y->typed_data(), *st = stats->typed_data();
  const int64_t chunks = std::max<int64_t>(1, (N + kChunkRows - 1) / kChunkRows);
  run_tasks(pool, threads, chunks, [=](int64_t t) {
    forward_rows(xs, ss, bs, D, eps, t * kChunkRows, std::min(N, (t + 1) * kChunkRows), ys, st);
  });
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> scale,
                    ffi::Buffer<ffi::F32> stats, ffi::Buffer<ffi::F32> dy,
                    ffi::ResultBuffer<ffi::F32> dx, ffi::ResultBuffer<ffi::F32> dparams,
                    int64_t threads) {
  int64_t N, D;
  if (ffi::Error err = rows_of(x, N, D); err.failure()) return err;
  if (scale.element_count() != D || stats.element_count() != 2 * N || dy.element_count() != N * D ||
      dx->element_count() != N * D || dparams->element_count() != 2 * D)
    return ffi::Error::InvalidArgument("layer_norm: scale [D], stats [..., 2], dy, dx [..., D], dparams [2, D] expected");
  const float *xs = x.typed_data(), *ss = scale.typed_data(), *st = stats.typed_data(),
              *gs = dy.typed_data();
  float* dxs = dx->typed_data();
  // dparams [2, D]: dscale's terms in the first D columns of a block's sums, dbias's in the rest
  rows_with_column_sums(pool, threads, N, kChunkRows, kBlockRows, 2 * D, dparams->typed_data(),
                        [=](int64_t r0, int64_t r1, float* acc) {
                          backward_rows(xs, ss, st, gs, D, r0, r1, dxs, acc, acc + D);
                        });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(LayerNormFwd, Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // x      [..., D]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // scale  [D]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // bias   [D]
                                  .Ret<ffi::Buffer<ffi::F32>>()   // y      [..., D]
                                  .Ret<ffi::Buffer<ffi::F32>>()   // stats  [..., 2]: mean, rstd
                                  .Attr<float>("eps")
                                  .Attr<int64_t>("threads"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(LayerNormBwd, Backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // x       [..., D]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // scale   [D]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // stats   [..., 2]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // dy      [..., D]
                                  .Ret<ffi::Buffer<ffi::F32>>()   // dx      [..., D]
                                  .Ret<ffi::Buffer<ffi::F32>>()   // dparams [2, D]: dscale, dbias
                                  .Attr<int64_t>("threads"));

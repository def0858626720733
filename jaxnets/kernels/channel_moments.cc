// Per-channel sums of a batch norm, in one pass: for a, b [..., C] and shift [C],
//
//   out[0, c] = sum over rows of a[r, c]
//   out[1, c] = sum over rows of a[r, c] * (b[r, c] - shift[c])
//
// The forward statistics are (x, x, 0): sum x and sum x^2. The backward sums are (dy, x, mean):
// sum dy and sum dy (x - mean). Why a kernel: XLA:CPU reads the operands once per sum (two
// reductions, and for the backward each recomputes x - mean), on NHWC activations whose channel
// dimension is one or two vectors wide; the kernel reads each operand once (ResNet-20 step,
// docs/cpu_choices.md).
//
// Work: the rows are cut into chunks (tasks on XLA's pool where `threads` allows); a chunk sums
// blocks of channel vectors over its rows in float32 registers, several rows at a time so the
// additions do not wait on each other, and adds each block of at most kBlockRows rows into
// double totals. The chunks' totals are added in order, so the result does not depend on the
// number of threads. C must be a multiple of the vector width (`supported` asks for 16).
#include <cstdint>
#include <vector>

#include "native_kernels.h"

namespace ffi = xla::ffi;
using namespace jaxnets_native;

namespace {

constexpr int64_t kBlockRows = 512;     // rows summed in float32 before a double total
constexpr int64_t kChunkRows = 8192;    // rows per task

// NV channel vectors, U rows at a time (NV * U = 4: eight float32 accumulators).
template <int NV, int U>
void sum_block(const float* a, const float* b, const float* shift, int64_t C, int64_t c0,
               int64_t rows, double* s0, double* s1) {
  vec acc0[U][NV], acc1[U][NV], sh[NV];
  for (int v = 0; v < NV; ++v) sh[v] = load(shift + c0 + v * VW);
  for (int u = 0; u < U; ++u)
    for (int v = 0; v < NV; ++v) acc0[u][v] = acc1[u][v] = splat(0.f);
  int64_t r = 0;
  for (; r + U <= rows; r += U)
    for (int u = 0; u < U; ++u)
      for (int v = 0; v < NV; ++v) {
        const int64_t at = (r + u) * C + c0 + v * VW;
        const vec x = load(a + at);
        acc0[u][v] += x;
        acc1[u][v] += x * (load(b + at) - sh[v]);
      }
  for (; r < rows; ++r)
    for (int v = 0; v < NV; ++v) {
      const int64_t at = r * C + c0 + v * VW;
      const vec x = load(a + at);
      acc0[0][v] += x;
      acc1[0][v] += x * (load(b + at) - sh[v]);
    }
  for (int v = 0; v < NV; ++v) {
    vec t0 = acc0[0][v], t1 = acc1[0][v];
    for (int u = 1; u < U; ++u) t0 += acc0[u][v], t1 += acc1[u][v];
    for (int l = 0; l < VW; ++l) s0[c0 + v * VW + l] += t0[l], s1[c0 + v * VW + l] += t1[l];
  }
}

// Rows [r0, r1) into s0, s1 (C doubles each, added to).
void sum_rows(const float* a, const float* b, const float* shift, int64_t C, int64_t r0,
              int64_t r1, double* s0, double* s1) {
  for (int64_t start = r0; start < r1; start += kBlockRows) {
    const int64_t rows = std::min(kBlockRows, r1 - start);
    const float *ab = a + start * C, *bb = b + start * C;
    int64_t c = 0;
    for (; c + 4 * VW <= C; c += 4 * VW) sum_block<4, 1>(ab, bb, shift, C, c, rows, s0, s1);
    for (; c + 2 * VW <= C; c += 2 * VW) sum_block<2, 2>(ab, bb, shift, C, c, rows, s0, s1);
    for (; c < C; c += VW) sum_block<1, 4>(ab, bb, shift, C, c, rows, s0, s1);
  }
}

ffi::Error ChannelMomentsImpl(ffi::ThreadPool pool, ffi::AnyBuffer a, ffi::AnyBuffer b,
                              ffi::Buffer<ffi::F32> shift, ffi::ResultBuffer<ffi::F32> out,
                              int64_t threads) {
  if (a.element_type() != ffi::F32 || b.element_type() != ffi::F32)
    return ffi::Error::InvalidArgument("channel_moments: float32 operands expected");
  const auto ad = a.dimensions(), bd = b.dimensions();
  if (ad.size() < 1 || ad.size() != bd.size())
    return ffi::Error::InvalidArgument("channel_moments: a and b must have the same shape");
  for (size_t i = 0; i < ad.size(); ++i)
    if (ad[i] != bd[i]) return ffi::Error::InvalidArgument("channel_moments: a and b must have the same shape");
  const int64_t C = ad[ad.size() - 1];
  if (shift.element_count() != C || out->element_count() != 2 * C)
    return ffi::Error::InvalidArgument("channel_moments: shift [C] and out [2, C] expected");
  if (C % VW)
    return ffi::Error::InvalidArgument("channel_moments: channels must be a multiple of the vector width");
  const int64_t R = C ? a.element_count() / C : 0;
  const float *as = reinterpret_cast<const float*>(a.untyped_data()),
              *bs = reinterpret_cast<const float*>(b.untyped_data()), *sh = shift.typed_data();
  const int64_t chunks = std::max<int64_t>(1, (R + kChunkRows - 1) / kChunkRows);
  std::vector<double> totals(chunks * 2 * C, 0.0);
  run_tasks(pool, threads, chunks, [&](int64_t t) {
    const int64_t r0 = t * R / chunks, r1 = (t + 1) * R / chunks;
    double* s = totals.data() + t * 2 * C;
    sum_rows(as, bs, sh, C, r0, r1, s, s + C);
  });
  float* o = out->typed_data();
  for (int64_t j = 0; j < 2 * C; ++j) {
    double sum = 0.0;
    for (int64_t t = 0; t < chunks; ++t) sum += totals[t * 2 * C + j];
    o[j] = static_cast<float>(sum);
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(ChannelMoments, ChannelMomentsImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()          // a [..., C]
                                  .Arg<ffi::AnyBuffer>()          // b [..., C]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // shift [C]
                                  .Ret<ffi::Buffer<ffi::F32>>()   // out [2, C]
                                  .Attr<int64_t>("threads"));

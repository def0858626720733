// What the native recurrence kernels (lstm_recurrence.cc, gru_recurrence.cc) share: the gate
// activations, the packing of W_h for their register tiles, the backward product
// dh_{t-1} = d(h W_h) W_h^T, and the split of the batch into blocks of rows, one task each.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "native_kernels.h"

namespace jaxnets_native {

// Rows per register tile: FR rows x (one vector per gate) of accumulators, plus a weight vector
// per gate and a broadcast, within the register file (32 vector registers with AVX-512, 16 below).
constexpr int FR = VW == 16 ? 4 : 2;
// Backward tile: BR rows x BV vectors of hidden units (16 accumulators with AVX-512, 8 below).
constexpr int BR = FR, BV = 4;

inline vec sigmoid(vec x) {   // exp of -|x| only (never overflows): 1/(1+e) or e/(1+e)
  const vec zero = splat(0.f), one = splat(1.f);
  vec e = vexp(x > zero ? -x : x);
  vec r = one / (one + e);
  return x > zero ? r : e * r;
}

inline vec vtanh(vec x) {     // (1 - e) / (1 + e) with e = exp(-2|x|), sign restored
  const vec zero = splat(0.f), one = splat(1.f);
  vec ax = x > zero ? x : -x;
  vec e = vexp(splat(-2.f) * ax);
  vec t = (one - e) / (one + e);
  return x < zero ? -t : t;
}

struct Dims {
  int64_t T, B, H, G;   // G = gates * H, the width of W_h [H, G]
};

// W_h [H, G] -> [H / VW][H][G / H][VW]: for hidden block jb, row k holds every gate's VW columns.
inline void pack_gates(const float* w, const Dims& s, float* packed) {
  const int64_t gates = s.G / s.H;
  for (int64_t jb = 0; jb < s.H / VW; ++jb)
    for (int64_t k = 0; k < s.H; ++k)
      for (int64_t q = 0; q < gates; ++q)
        std::memcpy(packed + ((jb * s.H + k) * gates + q) * VW, w + k * s.G + q * s.H + jb * VW,
                    VW * sizeof(float));
}

// W_h^T [G, H] -> [H / VW][G][VW]: for hidden block jb, row g holds W_h[jb*VW.., g].
inline void pack_transposed(const float* w, const Dims& s, float* packed) {
  for (int64_t jb = 0; jb < s.H / VW; ++jb)
    for (int64_t g = 0; g < s.G; ++g)
      for (int c = 0; c < VW; ++c) packed[(jb * s.G + g) * VW + c] = w[(jb * VW + c) * s.G + g];
}

// Row tiles of TR rows, then the rest one row at a time, of a body templated on its row count.
template <int TR, typename F>
void over_rows(int64_t rows, F&& body) {
  int64_t r = 0;
  for (; r + TR <= rows; r += TR) body(std::integral_constant<int, TR>{}, r);
  for (; r < rows; ++r) body(std::integral_constant<int, 1>{}, r);
}

// dh_next[r, j..] = sum_g dhp[r, g] W_h^T[g, j..] (+ direct[r, j..] where given) for NV vectors of
// hidden units from j, rows [0, NR); rows whose step was padding keep their incoming dh instead.
template <int NR, int NV>
void backward_tile(const float* wtp, const float* dhp, const float* direct, const float* dh,
                   const float* keep, const Dims& s, int64_t j, float* dh_next) {
  vec acc[NR][NV] = {};
  for (int64_t g = 0; g < s.G; ++g) {
    vec w[NV];
    for (int v = 0; v < NV; ++v) w[v] = load_kept(wtp + (v * s.G + g) * VW);
    for (int r = 0; r < NR; ++r) {
      const vec a = splat(dhp[r * s.G + g]);
      for (int v = 0; v < NV; ++v) acc[r][v] += a * w[v];
    }
  }
  for (int r = 0; r < NR; ++r)
    for (int v = 0; v < NV; ++v) {
      const int64_t at = r * s.H + j + v * VW;
      const vec kept = direct ? acc[r][v] + load(direct + at) : acc[r][v];
      store(dh_next + at, keep[r] > 0.f ? kept : load(dh + at));
    }
}

template <int NR>
void backward_tiles(const float* wtp, const float* dhp, const float* direct, const float* dh,
                    const float* keep, const Dims& s, float* dh_next) {
  const int64_t blocks = s.H / VW;
  int64_t jb = 0;
  for (; jb + BV <= blocks; jb += BV)
    backward_tile<NR, BV>(wtp + jb * s.G * VW, dhp, direct, dh, keep, s, jb * VW, dh_next);
  for (; jb < blocks; ++jb)
    backward_tile<NR, 1>(wtp + jb * s.G * VW, dhp, direct, dh, keep, s, jb * VW, dh_next);
}

// Shapes of a call: per-step gate rows [T, B, G] and W_h [H, G], G = gates * H, H a multiple of
// the vector width.
inline xla::ffi::Error check_shapes(xla::ffi::Buffer<xla::ffi::F32>& rows,
                                    xla::ffi::Buffer<xla::ffi::F32>& w, int64_t gates, Dims& s) {
  const auto xd = rows.dimensions(), wd = w.dimensions();
  if (xd.size() != 3 || wd.size() != 2)
    return xla::ffi::Error::InvalidArgument("recurrence: gates must be [T, B, G], W_h [H, G]");
  s = Dims{xd[0], xd[1], wd[0], wd[1]};
  if (s.G != gates * s.H || xd[2] != s.G || s.H % VW != 0)
    return xla::ffi::Error::InvalidArgument("recurrence: incompatible shapes (or hidden size not "
                                            "a multiple of the vector width)");
  return xla::ffi::Error::Success();
}

// Blocks of batch rows, one per task: as many as threads may run (a multiple of the tile's
// rows each where the batch allows). Rows are independent, so tasks never wait on each other.
template <typename F>
void over_row_blocks(xla::ffi::ThreadPool& pool, int64_t threads, int64_t B, F&& work) {
  const int64_t tasks = std::max<int64_t>(1, std::min(usable_threads(pool, threads), (B + FR - 1) / FR));
  const int64_t per_task = round_up((B + tasks - 1) / tasks, FR);
  const int64_t n = (B + per_task - 1) / per_task;
  run_tasks(pool, threads, n, [=](int64_t task) {
    const int64_t r0 = task * per_task;
    work(r0, std::min(per_task, B - r0));
  });
}

}  // namespace jaxnets_native

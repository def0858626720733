// The GRU recurrence on CPU (the cuDNN/PyTorch variant, reset applied after the recurrent
// product), forward and backward, as XLA FFI handlers: the loop over time that
// `jaxnets.nn.recurrent_scan` otherwise runs as an XLA while loop.
//
// Forward, for t = 0..T-1 (T-1..0 with `reverse`), per batch row, gates in the order (r, z, n):
//   [hr, hz, hn] = h @ W_h                 W_h [H, 3H]; xp [T, B, 3H] the input projection
//   r = sigmoid(xr + b_r + hr); z = sigmoid(xz + b_z + hz)
//   n = tanh(xn + b_n + r (hn + b_hn));  h' = h + z (n - h)
// (z is 1 - z of PyTorch, as in `jaxnets.nn.recurrent.gru_pointwise`.) Where mask[t, b] == 0 the
// carry passes through and the output is 0. Saved for the backward: r, z, n and hn + b_hn
// [T, B, 4H], and h before each step [T, B, H]. The backward returns the gradients of the input
// projection (d xp) and of the recurrent product (d hp; they differ in the n block, where the
// reset gate sits between them), and of h0; dW_h = sum_t h_{t-1}^T d hp_t, d b and d b_hn are
// sums in XLA afterwards. Why a kernel and how it is tiled: lstm_recurrence.cc, the same design.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "recurrent_kernels.h"

namespace ffi = xla::ffi;

namespace {

using namespace jaxnets_native;

// One forward tile: rows [0, NR) of the task's block at step t, hidden units [j, j + VW); SAVE:
// write the backward's residuals (gates, hs) too.
template <int NR, bool SAVE>
void forward_tile(const float* wp, const float* h, float* h_next, const float* xp,
                  const float* xp_next, const float* bias, const float* b_hn, const float* keep,
                  const Dims& s, int64_t j, float* gates, float* ys, float* hs) {
  vec acc[NR][3];
  const vec br = load(bias + j), bz = load(bias + s.H + j), bn = load(b_hn + j);
  for (int r = 0; r < NR; ++r) {
    acc[r][0] = load(xp + r * s.G + j) + br;
    acc[r][1] = load(xp + r * s.G + s.H + j) + bz;
    acc[r][2] = bn;
    for (int q = 0; q < 3; ++q) __builtin_prefetch(xp_next + r * s.G + q * s.H + j);
  }
  for (int64_t k = 0; k < s.H; ++k) {
    vec w[3];
    for (int q = 0; q < 3; ++q) w[q] = load_kept(wp + (k * 3 + q) * VW);
    for (int r = 0; r < NR; ++r) {
      const vec a = splat(h[r * s.H + k]);
      for (int q = 0; q < 3; ++q) acc[r][q] += a * w[q];
    }
  }
  const vec b_n = load(bias + 2 * s.H + j);
  for (int r = 0; r < NR; ++r) {
    const vec rg = sigmoid(acc[r][0]), z = sigmoid(acc[r][1]), hn = acc[r][2];
    const vec n = vtanh(load(xp + r * s.G + 2 * s.H + j) + b_n + rg * hn);
    const vec h_old = load(h + r * s.H + j);
    if (SAVE) {
      float* g = gates + r * 4 * s.H + j;
      store(g, rg);
      store(g + s.H, z);
      store(g + 2 * s.H, n);
      store(g + 3 * s.H, hn);
      store(hs + r * s.H + j, h_old);
    }
    if (keep[r] > 0.f) {
      const vec h_new = h_old + z * (n - h_old);
      store(h_next + r * s.H + j, h_new);
      store(ys + r * s.H + j, h_new);
    } else {   // padding: the carry passes through, the output is 0
      store(h_next + r * s.H + j, h_old);
      store(ys + r * s.H + j, splat(0.f));
    }
  }
}

// Rows [r0, r0 + rows) of one task: the whole forward loop over time. Residuals are written
// where `gates` is given (a forward pass under differentiation), not for inference.
void forward_rows(const float* wp, const float* xp, const float* bias, const float* b_hn,
                  const float* h0, const float* mask, const Dims& s, bool reverse, int64_t r0,
                  int64_t rows, float* ys, float* h_final, float* gates, float* hs) {
  std::vector<float> buffers(2 * rows * s.H);
  float *h = buffers.data(), *h_next = h + rows * s.H;
  std::memcpy(h, h0 + r0 * s.H, rows * s.H * sizeof(float));
  for (int64_t n = 0; n < s.T; ++n) {
    const int64_t t = reverse ? s.T - 1 - n : n;
    const int64_t next = n + 1 < s.T ? (reverse ? t - 1 : t + 1) : t;
    const int64_t row = t * s.B + r0, next_row = next * s.B + r0;
    for (int64_t jb = 0; jb < s.H / VW; ++jb) {   // a hidden block's W_h slice, reused by all rows
      const float* w = wp + jb * s.H * 3 * VW;
      over_rows<FR>(rows, [&](auto nr, int64_t r) {
        constexpr int NR = decltype(nr)::value;
        const auto tile = gates ? forward_tile<NR, true> : forward_tile<NR, false>;
        tile(w, h + r * s.H, h_next + r * s.H, xp + (row + r) * s.G, xp + (next_row + r) * s.G,
             bias, b_hn, mask + row + r, s, jb * VW, gates ? gates + (row + r) * 4 * s.H : nullptr,
             ys + (row + r) * s.H, gates ? hs + (row + r) * s.H : nullptr);
      });
    }
    std::swap(h, h_next);
  }
  std::memcpy(h_final + r0 * s.H, h, rows * s.H * sizeof(float));
}

// Rows [r0, r0 + rows) of one task: the backward loop over time (the forward's order reversed).
void backward_rows(const float* wtp, const float* gates, const float* hs, const float* mask,
                   const float* dys, const float* dh_final, const Dims& s, bool reverse,
                   int64_t r0, int64_t rows, float* dxp, float* dhp_out, float* dh0) {
  std::vector<float> buffers(3 * rows * s.H + rows * s.G);
  float *dh = buffers.data(), *dh_next = dh + rows * s.H, *direct = dh_next + rows * s.H,
        *dhp = direct + rows * s.H;
  std::memcpy(dh, dh_final + r0 * s.H, rows * s.H * sizeof(float));
  const vec one = splat(1.f), zero = splat(0.f);
  for (int64_t n = 0; n < s.T; ++n) {
    const int64_t t = reverse ? n : s.T - 1 - n;
    const float* keep = mask + t * s.B + r0;
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t row = t * s.B + r0 + r;
      const float* g = gates + row * 4 * s.H;
      float *dx = dxp + row * s.G, *dp = dhp + r * s.G;
      for (int64_t j = 0; j < s.H; j += VW) {
        if (keep[r] > 0.f) {
          const vec rg = load(g + j), z = load(g + s.H + j), nn = load(g + 2 * s.H + j),
                    hn = load(g + 3 * s.H + j);
          const vec dh_total = load(dh + r * s.H + j) + load(dys + row * s.H + j);
          const vec dn_pre = dh_total * z * (one - nn * nn);
          const vec dr_pre = dn_pre * hn * rg * (one - rg);
          const vec dz_pre = dh_total * (nn - load(hs + row * s.H + j)) * z * (one - z);
          store(dx + j, dr_pre);
          store(dx + s.H + j, dz_pre);
          store(dx + 2 * s.H + j, dn_pre);
          store(dp + j, dr_pre);
          store(dp + s.H + j, dz_pre);
          store(dp + 2 * s.H + j, dn_pre * rg);
          store(direct + r * s.H + j, dh_total * (one - z));
        } else {   // padding: nothing flows into the gates; the carry's gradient passes through
          for (int q = 0; q < 3; ++q) {
            store(dx + q * s.H + j, zero);
            store(dp + q * s.H + j, zero);
          }
        }
      }
      std::memcpy(dhp_out + row * s.G, dp, s.G * sizeof(float));
    }
    over_rows<BR>(rows, [&](auto nr, int64_t r) {
      backward_tiles<decltype(nr)::value>(wtp, dhp + r * s.G, direct + r * s.H, dh + r * s.H,
                                          keep + r, s, dh_next + r * s.H);
    });
    std::swap(dh, dh_next);
  }
  std::memcpy(dh0 + r0 * s.H, dh, rows * s.H * sizeof(float));
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> xp, ffi::Buffer<ffi::F32> bias,
                   ffi::Buffer<ffi::F32> b_hn, ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::F32> h0,
                   ffi::Buffer<ffi::F32> mask, ffi::ResultBuffer<ffi::F32> ys,
                   ffi::ResultBuffer<ffi::F32> h_final, ffi::ResultBuffer<ffi::F32> gates,
                   ffi::ResultBuffer<ffi::F32> hs, bool reverse, int64_t threads) {
  Dims s;
  if (ffi::Error err = check_shapes(xp, w, 3, s); err.failure()) return err;
  std::vector<float> packed(s.H * s.G);   // shared, read-only, by every task
  pack_gates(w.typed_data(), s, packed.data());
  const float *wp = packed.data(), *xs = xp.typed_data(), *bs = bias.typed_data(),
              *bn = b_hn.typed_data(), *h0s = h0.typed_data(), *ms = mask.typed_data();
  float *y = ys->typed_data(), *hf = h_final->typed_data(),
        *g = gates->element_count() ? gates->typed_data() : nullptr,   // size 0: inference
        *h = hs->typed_data();
  over_row_blocks(pool, threads, s.B, [=](int64_t r0, int64_t rows) {
    forward_rows(wp, xs, bs, bn, h0s, ms, s, reverse, r0, rows, y, hf, g, h);
  });
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::F32> gates,
                    ffi::Buffer<ffi::F32> hs, ffi::Buffer<ffi::F32> mask, ffi::Buffer<ffi::F32> dys,
                    ffi::Buffer<ffi::F32> dh_final, ffi::ResultBuffer<ffi::F32> dxp,
                    ffi::ResultBuffer<ffi::F32> dhp, ffi::ResultBuffer<ffi::F32> dh0, bool reverse,
                    int64_t threads) {
  Dims s;
  if (ffi::Error err = check_shapes(*dxp, w, 3, s); err.failure()) return err;
  std::vector<float> packed(s.H * s.G);
  pack_transposed(w.typed_data(), s, packed.data());
  const float *wtp = packed.data(), *gs = gates.typed_data(), *h = hs.typed_data(),
              *ms = mask.typed_data(), *dy = dys.typed_data(), *dhf = dh_final.typed_data();
  float *dx = dxp->typed_data(), *dp = dhp->typed_data(), *dh = dh0->typed_data();
  over_row_blocks(pool, threads, s.B, [=](int64_t r0, int64_t rows) {
    backward_rows(wtp, gs, h, ms, dy, dhf, s, reverse, r0, rows, dx, dp, dh);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(GruForward, Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // xp [T, B, 3H]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // b [3H]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // b_hn [H]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // W_h [H, 3H]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // h0 [B, H]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // mask [T, B]
                                  .Ret<ffi::Buffer<ffi::F32>>()   // ys [T, B, H]
                                  .Ret<ffi::Buffer<ffi::F32>>()   // h final [B, H]
                                  .Ret<ffi::Buffer<ffi::F32>>()   // r, z, n, hn + b_hn [T, B, 4H] (or [0])
                                  .Ret<ffi::Buffer<ffi::F32>>()   // h before each step [T, B, H] (or [0])
                                  .Attr<bool>("reverse")
                                  .Attr<int64_t>("threads"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(GruBackward, Backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // W_h [H, 3H]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // gates [T, B, 4H]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // hs [T, B, H]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // mask [T, B]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // d ys [T, B, H]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // d h final [B, H]
                                  .Ret<ffi::Buffer<ffi::F32>>()   // d xp [T, B, 3H]
                                  .Ret<ffi::Buffer<ffi::F32>>()   // d hp [T, B, 3H]
                                  .Ret<ffi::Buffer<ffi::F32>>()   // d h0 [B, H]
                                  .Attr<bool>("reverse")
                                  .Attr<int64_t>("threads"));

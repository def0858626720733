// The LSTM recurrence on CPU, forward and backward, as XLA FFI handlers: the loop over time that
// `jaxnets.nn.recurrent_scan` otherwise runs as an XLA while loop.
//
// Forward, for t = 0..T-1 (T-1..0 with `reverse`), per batch row, gates in the order (i, f, g, o):
//   pre = xp[t] + b + h @ W_h          xp [T, B, 4H] (the hoisted input projection), W_h [H, 4H]
//   i, f, o = sigmoid(pre_i, pre_f, pre_o); g = tanh(pre_g)
//   c' = f c + i g;  h' = o tanh(c')
// Where mask[t, b] == 0 (padding) the carry (h, c) passes through and the output is 0.
// Saved for the backward: the activated gates [T, B, 4H], the cell state after each step (cs)
// and h before each step (hs, what dW_h multiplies), both [T, B, H]. The backward runs the loop
// the other way and returns d pre [T, B, 4H] (which is d xp and, summed, d b) and the initial
// carries' gradients; the weight gradient dW_h = sum_t h_{t-1}^T d pre_t is ONE large matmul in
// XLA afterwards.
//
// Why a kernel of our own: XLA:CPU runs each step of the scan as a handful of thunks (the
// recurrent matmul in its library, the gate fusion, slices and copies of the loop carry), and
// at the benchmark shapes (`python -m benchmarks.lstm`) that per-step overhead was about half
// of the step: 43 us a step at b16 h128 of which the matmul was 20 (benchmarks/results/
// op_profile_lstm_b16_t1024.json). Here a step is one pass over W_h: each register tile holds
// FR rows x (the 4 gates of VW hidden units), so the gate maths runs on the accumulators
// before they leave the registers. W_h is packed once per call so that each tile streams its
// slice of it in order. Batch rows are independent: tasks are blocks of rows, each running
// the whole loop over time, split over XLA's intra-op pool without any per-step sync.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "recurrent_kernels.h"

namespace ffi = xla::ffi;

namespace {

using namespace jaxnets_native;

// One forward tile: rows [0, NR) of the task's block at step t, hidden units [j, j + VW); SAVE:
// write the backward's residuals (gates, cs, hs) too.
template <int NR, bool SAVE>
void forward_tile(const float* wp, const float* h, float* h_next, float* c, const float* xp,
                  const float* xp_next, const float* bias, const float* keep, const Dims& s,
                  int64_t j, float* acts, float* ys, float* cs, float* hs) {
  vec acc[NR][4];
  for (int q = 0; q < 4; ++q) {
    const vec bq = load(bias + q * s.H + j);
    for (int r = 0; r < NR; ++r) {
      acc[r][q] = load(xp + r * s.G + q * s.H + j) + bq;
      // The next step's projection: a [T, B, 4H] stream too large for the caches, read a row
      // at a time; fetched here, it arrives while this step's products run.
      __builtin_prefetch(xp_next + r * s.G + q * s.H + j);
    }
  }
  for (int64_t k = 0; k < s.H; ++k) {
    vec w[4];
    for (int q = 0; q < 4; ++q) w[q] = load_kept(wp + (k * 4 + q) * VW);
    for (int r = 0; r < NR; ++r) {
      const vec a = splat(h[r * s.H + k]);
      for (int q = 0; q < 4; ++q) acc[r][q] += a * w[q];
    }
  }
  for (int r = 0; r < NR; ++r) {
    const vec i = sigmoid(acc[r][0]), f = sigmoid(acc[r][1]), g = vtanh(acc[r][2]),
              o = sigmoid(acc[r][3]);
    if (SAVE) {
      float* act = acts + r * s.G + j;
      store(act, i);
      store(act + s.H, f);
      store(act + 2 * s.H, g);
      store(act + 3 * s.H, o);
      store(hs + r * s.H + j, load(h + r * s.H + j));
    }
    float *cr = c + r * s.H + j, *hn = h_next + r * s.H + j;
    if (keep[r] > 0.f) {
      const vec c_new = f * load(cr) + i * g, h_new = o * vtanh(c_new);
      store(cr, c_new);
      store(hn, h_new);
      store(ys + r * s.H + j, h_new);
    } else {   // padding: the carry passes through, the output is 0
      store(hn, load(h + r * s.H + j));
      store(ys + r * s.H + j, splat(0.f));
    }
    if (SAVE) store(cs + r * s.H + j, load(cr));
  }
}

// Rows [r0, r0 + rows) of one task: the whole forward loop over time. Residuals are written
// where `acts` is given (a forward pass under differentiation), not for inference.
void forward_rows(const float* wp, const float* xp, const float* bias, const float* h0,
                  const float* c0, const float* mask, const Dims& s, bool reverse, int64_t r0,
                  int64_t rows, float* ys, float* h_final, float* c_final, float* acts, float* cs,
                  float* hs) {
  std::vector<float> buffers(3 * rows * s.H);
  float *h = buffers.data(), *h_next = h + rows * s.H, *c = h_next + rows * s.H;
  std::memcpy(h, h0 + r0 * s.H, rows * s.H * sizeof(float));
  std::memcpy(c, c0 + r0 * s.H, rows * s.H * sizeof(float));
  for (int64_t n = 0; n < s.T; ++n) {
    const int64_t t = reverse ? s.T - 1 - n : n;
    const int64_t gate_rows = (t * s.B + r0) * s.G, unit_rows = (t * s.B + r0) * s.H;
    const int64_t next = n + 1 < s.T ? (reverse ? t - 1 : t + 1) : t;
    const int64_t next_rows = (next * s.B + r0) * s.G;
    for (int64_t jb = 0; jb < s.H / VW; ++jb) {   // a hidden block's W_h slice, reused by all rows
      const float* w = wp + jb * s.H * 4 * VW;
      over_rows<FR>(rows, [&](auto nr, int64_t r) {
        const int64_t gr = gate_rows + r * s.G, ur = unit_rows + r * s.H;
        constexpr int NR = decltype(nr)::value;
        const auto tile = acts ? forward_tile<NR, true> : forward_tile<NR, false>;
        tile(w, h + r * s.H, h_next + r * s.H, c + r * s.H, xp + gr, xp + next_rows + r * s.G,
             bias, mask + t * s.B + r0 + r, s, jb * VW, acts ? acts + gr : nullptr, ys + ur,
             acts ? cs + ur : nullptr, acts ? hs + ur : nullptr);
      });
    }
    std::swap(h, h_next);
  }
  std::memcpy(h_final + r0 * s.H, h, rows * s.H * sizeof(float));
  std::memcpy(c_final + r0 * s.H, c, rows * s.H * sizeof(float));
}

// Rows [r0, r0 + rows) of one task: the backward loop over time (the forward's order reversed).
void backward_rows(const float* wtp, const float* acts, const float* cs, const float* c0,
                   const float* mask, const float* dys, const float* dh_final,
                   const float* dc_final, const Dims& s, bool reverse, int64_t r0, int64_t rows,
                   float* dpre_out, float* dh0, float* dc0) {
  std::vector<float> buffers(3 * rows * s.H + rows * s.G);
  float *dh = buffers.data(), *dh_next = dh + rows * s.H, *dc = dh_next + rows * s.H,
        *dpre = dc + rows * s.H;
  std::memcpy(dh, dh_final + r0 * s.H, rows * s.H * sizeof(float));
  std::memcpy(dc, dc_final + r0 * s.H, rows * s.H * sizeof(float));
  const vec one = splat(1.f), zero = splat(0.f);
  for (int64_t n = 0; n < s.T; ++n) {
    const int64_t t = reverse ? n : s.T - 1 - n;
    const int64_t tp = reverse ? t + 1 : t - 1;   // the step the carry came from
    const float* keep = mask + t * s.B + r0;
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t ur = (t * s.B + r0 + r) * s.H;
      const float* act = acts + (t * s.B + r0 + r) * s.G;
      const float* c_prev = (tp >= 0 && tp < s.T ? cs + (tp * s.B + r0 + r) * s.H : c0 + (r0 + r) * s.H);
      float* d = dpre + r * s.G;
      for (int64_t j = 0; j < s.H; j += VW) {
        if (keep[r] > 0.f) {
          const vec i = load(act + j), f = load(act + s.H + j), g = load(act + 2 * s.H + j),
                    o = load(act + 3 * s.H + j);
          const vec tc = vtanh(load(cs + ur + j));
          const vec dh_total = load(dh + r * s.H + j) + load(dys + ur + j);
          const vec dc_total = load(dc + r * s.H + j) + dh_total * o * (one - tc * tc);
          store(d + j, dc_total * g * i * (one - i));
          store(d + s.H + j, dc_total * load(c_prev + j) * f * (one - f));
          store(d + 2 * s.H + j, dc_total * i * (one - g * g));
          store(d + 3 * s.H + j, dh_total * tc * o * (one - o));
          store(dc + r * s.H + j, dc_total * f);
        } else {   // padding: nothing flows into the gates; the carry's gradients pass through
          for (int q = 0; q < 4; ++q) store(d + q * s.H + j, zero);
        }
      }
      std::memcpy(dpre_out + (t * s.B + r0 + r) * s.G, d, s.G * sizeof(float));
    }
    over_rows<BR>(rows, [&](auto nr, int64_t r) {
      backward_tiles<decltype(nr)::value>(wtp, dpre + r * s.G, nullptr, dh + r * s.H, keep + r, s,
                                          dh_next + r * s.H);
    });
    std::swap(dh, dh_next);
  }
  std::memcpy(dh0 + r0 * s.H, dh, rows * s.H * sizeof(float));
  std::memcpy(dc0 + r0 * s.H, dc, rows * s.H * sizeof(float));
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> xp, ffi::Buffer<ffi::F32> bias,
                   ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::F32> h0, ffi::Buffer<ffi::F32> c0,
                   ffi::Buffer<ffi::F32> mask, ffi::ResultBuffer<ffi::F32> ys,
                   ffi::ResultBuffer<ffi::F32> h_final, ffi::ResultBuffer<ffi::F32> c_final,
                   ffi::ResultBuffer<ffi::F32> acts, ffi::ResultBuffer<ffi::F32> cs,
                   ffi::ResultBuffer<ffi::F32> hs, bool reverse, int64_t threads) {
  Dims s;
  if (ffi::Error err = check_shapes(xp, w, 4, s); err.failure()) return err;
  std::vector<float> packed(s.H * s.G);   // shared, read-only, by every task
  pack_gates(w.typed_data(), s, packed.data());
  const float *wp = packed.data(), *xs = xp.typed_data(), *bs = bias.typed_data(),
              *h0s = h0.typed_data(), *c0s = c0.typed_data(), *ms = mask.typed_data();
  float *y = ys->typed_data(), *hf = h_final->typed_data(), *cf = c_final->typed_data(),
        *a = acts->element_count() ? acts->typed_data() : nullptr, *c = cs->typed_data(),
        *h = hs->typed_data();   // residuals of size 0: inference, nothing saved
  over_row_blocks(pool, threads, s.B, [=](int64_t r0, int64_t rows) {
    forward_rows(wp, xs, bs, h0s, c0s, ms, s, reverse, r0, rows, y, hf, cf, a, c, h);
  });
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::F32> acts,
                    ffi::Buffer<ffi::F32> cs, ffi::Buffer<ffi::F32> c0, ffi::Buffer<ffi::F32> mask,
                    ffi::Buffer<ffi::F32> dys, ffi::Buffer<ffi::F32> dh_final,
                    ffi::Buffer<ffi::F32> dc_final, ffi::ResultBuffer<ffi::F32> dpre,
                    ffi::ResultBuffer<ffi::F32> dh0, ffi::ResultBuffer<ffi::F32> dc0, bool reverse,
                    int64_t threads) {
  Dims s;
  if (ffi::Error err = check_shapes(acts, w, 4, s); err.failure()) return err;
  std::vector<float> packed(s.H * s.G);
  pack_transposed(w.typed_data(), s, packed.data());
  const float *wtp = packed.data(), *as = acts.typed_data(), *css = cs.typed_data(),
              *c0s = c0.typed_data(), *ms = mask.typed_data(), *dy = dys.typed_data(),
              *dhf = dh_final.typed_data(), *dcf = dc_final.typed_data();
  float *dp = dpre->typed_data(), *dh = dh0->typed_data(), *dc = dc0->typed_data();
  over_row_blocks(pool, threads, s.B, [=](int64_t r0, int64_t rows) {
    backward_rows(wtp, as, css, c0s, ms, dy, dhf, dcf, s, reverse, r0, rows, dp, dh, dc);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmForward, Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // xp [T, B, 4H]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // b [4H]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // W_h [H, 4H]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // h0 [B, H]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // c0 [B, H]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // mask [T, B]
                                  .Ret<ffi::Buffer<ffi::F32>>()   // ys [T, B, H]
                                  .Ret<ffi::Buffer<ffi::F32>>()   // h final [B, H]
                                  .Ret<ffi::Buffer<ffi::F32>>()   // c final [B, H]
                                  .Ret<ffi::Buffer<ffi::F32>>()   // gates [T, B, 4H] (or [0]: none)
                                  .Ret<ffi::Buffer<ffi::F32>>()   // c after each step [T, B, H] (or [0])
                                  .Ret<ffi::Buffer<ffi::F32>>()   // h before each step [T, B, H] (or [0])
                                  .Attr<bool>("reverse")
                                  .Attr<int64_t>("threads"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmBackward, Backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // W_h [H, 4H]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // gates [T, B, 4H]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // cs [T, B, H]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // c0 [B, H]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // mask [T, B]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // d ys [T, B, H]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // d h final [B, H]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // d c final [B, H]
                                  .Ret<ffi::Buffer<ffi::F32>>()   // d pre [T, B, 4H]
                                  .Ret<ffi::Buffer<ffi::F32>>()   // d h0 [B, H]
                                  .Ret<ffi::Buffer<ffi::F32>>()   // d c0 [B, H]
                                  .Attr<bool>("reverse")
                                  .Attr<int64_t>("threads"));

// A 3x3 NHWC convolution padded by one pixel on every side, stride S = 1 ('same') or 2, as an
// XLA FFI handler:
//
//   y[b, h, w, o] = sum over kh, kw, c of x[b, S h + kh - 1, S w + kw - 1, c] * k[kh, kw, c, o]
//
// (x is zero outside the image; y is [(H - 1) / S + 1, (W - 1) / S + 1] pixels). The input gradient of such a convolution is one too (of the
// output gradient, with the kernel flipped and its channel axes swapped), so jaxnets.nn.conv
// calls this for both. Why a kernel of our own: XLA:CPU runs the narrow layers (16 channels, the
// first stage of a CIFAR ResNet) at about half the FLOP rate it reaches with 32 or 64 channels;
// a direct convolution does not care how narrow the input is.
//
// The loop: per image, the input is copied once into a zero-bordered buffer (so every tap reads
// in bounds, and a row is padded to a whole number of tiles). A register tile holds R output
// pixels of one row x OV vectors of output channels; for each tap and input channel it loads OV
// weight vectors once and broadcasts R input values against them. Output-channel blocks are the
// outer loop, so one block's weights (9 C OV vectors) stay in cache over the whole image.
// Per ISA (jaxnets/kernels/native.py's -D macros), the tile fits the register file:
//
//   ISA        JAXNETS_VW  accumulators R x OV (at most)   registers R OV + OV + 1 of
//   avx512     16          16 x 1, 8 x 2, 4 x 4           32 zmm
//   avx2       8           10 x 1, 5 x 2, 2 x 4           16 ymm
//   portable   4           10 x 1, 5 x 2, 2 x 4           16 xmm (SSE2), 32 (NEON)
//
// (On AVX2, 12 accumulators allowed 3 x 4 tiles, 17 registers: they spilled and ran at half
// speed.)
#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <utility>

#include "native_kernels.h"

namespace ffi = xla::ffi;

namespace {

using namespace jaxnets_native;

#ifndef JAXNETS_CONV_ACC
#define JAXNETS_CONV_ACC (VW >= 16 ? 16 : 10)
#endif
constexpr int kAcc = JAXNETS_CONV_ACC;   // accumulator registers of a tile

// One tap's products for pixels R0 .. R1 - 1 of the tile (compile-time bounds: the accumulators
// stay in registers).
template <int R, int OV, int PS, int R0, int R1>
__attribute__((always_inline)) inline void Tap(vec (&acc)[R][OV], const float* xr, const float* kk,
                                               int64_t C, int64_t O, int64_t ps) {
  for (int64_t c = 0; c < C; ++c) {
    vec wv[OV];
    for (int j = 0; j < OV; ++j) wv[j] = load_kept(kk + c * O + VW * j);
    for (int r = R0; r < R1; ++r) {
      const float xv = xr[r * ps + c];
      for (int j = 0; j < OV; ++j) acc[r][j] += xv * wv[j];
    }
  }
}

// acc[R][OV] = the outputs of R pixels (one row) x OV vectors of channels, then stored to y.
// xp: the padded input at the tile's first tap (row S h - 1, column S w0 - 1); k: the weights at
// the block's first channel; S: the stride (pixels of a tile are S columns apart). PS: S C when
// known at compile time (0: not), so that the R broadcasts address one register plus constant
// offsets; with S C known only at run time the compiler keeps R addresses and, at R = 16, runs out
// of general registers (parked in vector registers: 32 x 32 x 16 -> 16 ran at 66% of peak).
// Taps reading the zero border are skipped, as oneDNN does: rows kh0 .. kh1 - 1 only (the first
// and last output rows lose a third of their products), and the left column's taps for the
// tile's first pixel where `left`, the right column's for its last where `right`. On an 8 x 8
// image the border is 2 x 1/12 of the products.
template <int R, int OV, int PS>
__attribute__((always_inline)) inline void Tile(const float* xp, int64_t x_row, int64_t C,
                                                const float* k, int64_t O, float* y, int64_t S,
                                                int kh0, int kh1, bool left, bool right) {
  const int64_t ps = PS ? PS : S * C;
  vec acc[R][OV] = {};
  for (int kh = kh0; kh < kh1; ++kh)
    for (int kw = 0; kw < 3; ++kw) {
      const float* xr = xp + kh * x_row + kw * C;
      const float* kk = k + (kh * 3 + kw) * C * O;
      if (kw == 0 && left)
        Tap<R, OV, PS, 1, R>(acc, xr, kk, C, O, ps);
      else if (kw == 2 && right)
        Tap<R, OV, PS, 0, R - 1>(acc, xr, kk, C, O, ps);
      else
        Tap<R, OV, PS, 0, R>(acc, xr, kk, C, O, ps);
    }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < OV; ++j) store(y + r * O + VW * j, acc[r][j]);
}

struct Dims {
  int64_t H, W, C, O, S, Ho, Wo;   // input, channels, stride, output
};

// Pixels of a padded input row: the left border, then enough for Wt output pixels (the right
// border and the columns of a last partial tile read zeros).
inline int64_t padded_width(const Dims& d, int64_t Wt) {
  return std::max((Wt - 1) * d.S + 3, d.W + 2);
}

// One image: x [H, W, C] -> y [Ho, Wo, O]. xp: scratch for the padded image, (H + 2) rows of
// padded_width pixels for Wt = Wo rounded up to whole tiles; row: scratch for one output row
// of Wt pixels when Wo is not a whole number of tiles.
template <int R, int OV, int PS>
void Image(const float* x, const float* k, float* y, const Dims& d, float* xp, float* row) {
  const int64_t Wt = round_up(d.Wo, R), x_row = padded_width(d, Wt) * d.C;
  std::memset(xp, 0, sizeof(float) * x_row);                       // row -1
  std::memset(xp + (d.H + 1) * x_row, 0, sizeof(float) * x_row);   // row H
  for (int64_t h = 0; h < d.H; ++h) {
    float* dst = xp + (h + 1) * x_row;
    std::memset(dst, 0, sizeof(float) * d.C);
    std::memcpy(dst + d.C, x + h * d.W * d.C, sizeof(float) * d.W * d.C);
    std::memset(dst + (d.W + 1) * d.C, 0, sizeof(float) * (x_row - (d.W + 1) * d.C));
  }
  const bool whole = Wt == d.Wo;
  for (int64_t o0 = 0; o0 < d.O; o0 += VW * OV)
    for (int64_t h = 0; h < d.Ho; ++h) {
      float* out = whole ? y + h * d.Wo * d.O + o0 : row + o0;
      // Input row S h + kh - 1 and column S w + kw - 1 inside the image only (see Tile).
      const int kh0 = h * d.S == 0 ? 1 : 0, kh1 = h * d.S + 1 >= d.H ? 2 : 3;
      for (int64_t w0 = 0; w0 < Wt; w0 += R) {
        const float* xt = xp + h * d.S * x_row + w0 * d.S * d.C;
        const bool left = w0 == 0, right = w0 + R == d.Wo && (d.Wo - 1) * d.S + 1 >= d.W;
        if (kh0 == 0 && kh1 == 3)   // inner rows: the tap loop with constant bounds, as before
          Tile<R, OV, PS>(xt, x_row, d.C, k + o0, d.O, out + w0 * d.O, d.S, 0, 3, left, right);
        else
          Tile<R, OV, PS>(xt, x_row, d.C, k + o0, d.O, out + w0 * d.O, d.S, kh0, kh1, left, right);
      }
      if (!whole)
        for (int64_t w = 0; w < d.Wo; ++w)
          std::memcpy(y + (h * d.Wo + w) * d.O + o0, row + w * d.O + o0, sizeof(float) * VW * OV);
    }
}

using ImageFn = void (*)(const float*, const float*, float*, const Dims&, float*, float*);

// Image<R, OV, PS> for R = 1 .. kAcc / OV, indexed by R - 1.
template <int OV, int PS, size_t... I>
constexpr auto image_table(std::index_sequence<I...>) {
  return std::array<ImageFn, sizeof...(I)>{Image<int(I) + 1, OV, PS>...};
}
template <int PS>
struct Images {
  static constexpr auto one = image_table<1, PS>(std::make_index_sequence<kAcc>());
  static constexpr auto two = image_table<2, PS>(std::make_index_sequence<kAcc / 2>());
  static constexpr auto four = image_table<4, PS>(std::make_index_sequence<kAcc / 4>());
};

struct Plan {
  ImageFn image = nullptr;
  int64_t pixels = 0;   // R, the pixels of a tile
};

// The tile for rows of W pixels and O output channels: OV vectors of channels (a divisor of
// O / VW) and R pixels, R as even as the row allows, chosen for the most accumulators doing
// useful work (R OV, less the padding of the last tile). On the Zen 4, batch 64, one core:
// 8 x 8 x 64 -> 64 channels ran at 84 GFLOP/s as R 8 x OV 1 and 106 as R 8 x OV 2.
template <int PS>
Plan plan(int64_t W, int64_t O) {
  Plan best;
  double best_score = -1;
  int64_t best_padding = 0;
  const std::pair<int, const ImageFn*> options[] = {
      {1, Images<PS>::one.data()}, {2, Images<PS>::two.data()}, {4, Images<PS>::four.data()}};
  for (auto [ov, table] : options) {
    const int64_t most = kAcc / ov;
    if (most < 1 || O % (ov * VW)) continue;
    const int64_t tiles = (W + most - 1) / most, r = (W + tiles - 1) / tiles, padding = tiles * r - W;
    const double score = double(r * ov) * W / (tiles * r);
    // Ties go to less padding, then to more channel vectors (fewer broadcasts per multiply-add).
    if (score > best_score || (score == best_score && padding <= best_padding))
      best_score = score, best_padding = padding, best = {table[r - 1], r};
  }
  return best;
}

// threads: the most threads of the intra-op pool to use (0: all of them); stride: 1 or 2.
ffi::Error Conv3x3ForwardImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> k,
                              ffi::ResultBuffer<ffi::F32> y, int64_t threads, int64_t stride) {
  const auto xd = x.dimensions(), kd = k.dimensions(), yd = y->dimensions();
  if (xd.size() != 4 || kd.size() != 4 || yd.size() != 4)
    return ffi::Error::InvalidArgument("conv3x3_forward: rank-4 NHWC / HWIO operands expected");
  const int64_t B = xd[0];
  if (stride != 1 && stride != 2) return ffi::Error::InvalidArgument("conv3x3_forward: stride 1 or 2");
  const Dims d{xd[1], xd[2], xd[3], kd[3], stride, (xd[1] - 1) / stride + 1, (xd[2] - 1) / stride + 1};
  if (kd[0] != 3 || kd[1] != 3 || kd[2] != d.C || yd[0] != B || yd[1] != d.Ho || yd[2] != d.Wo || yd[3] != d.O)
    return ffi::Error::InvalidArgument("conv3x3_forward: shapes do not match");
  // Pixel strides of CIFAR/ImageNet-style stages (16-64 channels, stride 1 or 2) get their own
  // instances (see Tile).
  const int64_t ps = d.S * d.C;
  const Plan p = ps == 16 ? plan<16>(d.Wo, d.O) : ps == 32 ? plan<32>(d.Wo, d.O)
               : ps == 64 ? plan<64>(d.Wo, d.O) : ps == 128 ? plan<128>(d.Wo, d.O)
               : plan<0>(d.Wo, d.O);
  if (!p.image)
    return ffi::Error::InvalidArgument("conv3x3_forward: output channels must be a multiple of the vector width");
  const int64_t Wt = round_up(d.Wo, p.pixels), x_floats = (d.H + 2) * padded_width(d, Wt) * d.C;
  const int64_t floats = scratch_floats({x_floats, Wt * d.O});
  const float *xs = x.typed_data(), *ks = k.typed_data();
  float* ys = y->typed_data();
  // One task per image, on the calling thread and up to `threads` - 1 of XLA's pool.
  run_tasks(pool, threads, B, [&](int64_t b) {
    Scratch scratch(floats);
    float* xp = scratch.take(x_floats);
    p.image(xs + b * d.H * d.W * d.C, ks, ys + b * d.Ho * d.Wo * d.O, d, xp, scratch.take(Wt * d.O));
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(Conv3x3Forward, Conv3x3ForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // x [B, H, W, C]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // k [3, 3, C, O]
                                  .Ret<ffi::Buffer<ffi::F32>>()   // y [B, Ho, Wo, O]
                                  .Attr<int64_t>("threads")
                                  .Attr<int64_t>("stride"));

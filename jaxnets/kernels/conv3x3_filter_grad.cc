// Filter gradient of a 3x3 NHWC convolution padded by one pixel, stride S = 1 ('same') or 2, as
// an XLA FFI handler:
//
//   dw[kh, kw, c, o] = sum over b, h, w of x[b, S h + kh - 1, S w + kw - 1, c] * g[b, h, w, o]
//
// (x is zero outside the image; g is [B, (H - 1) / S + 1, (W - 1) / S + 1, O]). Why a kernel of our own: XLA:CPU computes this as a convolution
// whose "kernel" is the whole gradient image, after transposing both operands, at 115-165
// GFLOP/s on one core of this project's machines, while the tiled loop below reaches ~200
// (PyTorch's oneDNN reaches ~230). It is the largest part of a ResNet train step left to XLA.
//
// The loop: for each tap (kh, kw), a block of CB input channels and a block of VW*OV output
// channels, CB x OV vector accumulators stay in registers while the loop runs over all pixels of
// a few rows (so the rows stay in L1); each step broadcasts CB input values against OV vectors
// of the gradient. The image is copied into a zero-bordered buffer a few rows at a time so that
// every tap reads in bounds. Written with GCC/Clang vector extensions; jaxnets/kernels/native.py
// builds one object per instruction set, each with its own vector width and register budget
// (the -D macros below), because a tile that fits AVX-512's 32 zmm registers spills on AVX2's
// 16 ymm (measured 4.3x slower than PyTorch on a Zen 3):
//
//   ISA        JAXNETS_VW (floats)  JAXNETS_ACC (accumulators)  JAXNETS_OV (vectors per tile)
//   avx512     16                   16                          2      tile  8 x 32 channels
//   avx2       8                    12                          2      tile  6 x 16 channels
//   portable   4                    12                          2      tile  6 x  8 (SSE2, NEON)
//
// ACC + OV + 1 (the broadcast) must fit the register file; CB = ACC / OV input channels, and
// the input channels left over by CB go through smaller tiles (4, 2, 1).
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "native_kernels.h"

namespace ffi = xla::ffi;

namespace {

using namespace jaxnets_native;

#ifndef JAXNETS_BLOCK_PIXELS
#define JAXNETS_BLOCK_PIXELS 1024
#endif
constexpr int64_t kBlockPixels = JAXNETS_BLOCK_PIXELS;  // pixels per register pass: rows that stay in L1

// acc[CB][OV] += x[p, c0:c0+CB]^T g[p, o0:o0+VW*OV] over the output pixels p of rows
// [h0, h1) and columns [w0, w1) of a block of `rows` rows (W pixels each) of `n` images; the
// input pixel of output pixel (h, w) is (S h, S w).
template <int CB, int OV>
inline void Tile(const float* x, int64_t x_row, int64_t x_img, int64_t C, const float* g,
                 int64_t n, int64_t rows, int64_t W, int64_t O, float* out, int64_t S,
                 int64_t h0, int64_t h1, int64_t w0, int64_t w1) {
  vec acc[CB][OV] = {};
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t h = h0; h < h1; ++h) {
      const float* xr = x + i * x_img + h * S * x_row;
      const float* gr = g + (i * rows + h) * W * O;
      for (int64_t w = w0; w < w1; ++w) {
        vec gv[OV];
        for (int j = 0; j < OV; ++j) gv[j] = load_kept(gr + w * O + VW * j);
        const float* xv = xr + w * S * C;
        for (int c = 0; c < CB; ++c)
          for (int j = 0; j < OV; ++j) acc[c][j] += xv[c] * gv[j];
      }
    }
  }
  for (int c = 0; c < CB; ++c)
    for (int j = 0; j < OV; ++j) *reinterpret_cast<vecu*>(out + c * O + VW * j) += acc[c][j];
}

// Input rows a block of `rows` output rows reads, borders included.
inline int64_t input_rows(int64_t rows, int64_t S) { return (rows - 1) * S + 3; }

// All taps and channel blocks for one block of output pixels (rows of W, input rows Wi wide);
// x is the zero-bordered copy. Products with the zero border are skipped, as oneDNN does (on
// an 8 x 8 image they are 1/6 of the work): a tap's left column (kw = 0) for the first pixel of
// every row, its right column for the last where that reads past the image, its top row for the
// block's first row where that is the image's first (`top`), its bottom row for the block's last
// where that reads past the image (`bottom`).
template <int CB, int OV>
void Block(const float* x, int64_t C, const float* g, int64_t n, int64_t rows, int64_t W,
           int64_t O, float* dw, int64_t Wi, int64_t S, bool top, bool bottom) {
  const int64_t x_row = (Wi + 2) * C, x_img = input_rows(rows, S) * x_row;
  const bool right = (W - 1) * S + 1 >= Wi;
  for (int kh = 0; kh < 3; ++kh)
    for (int kw = 0; kw < 3; ++kw) {
      const int64_t h0 = kh == 0 && top ? 1 : 0, h1 = kh == 2 && bottom ? rows - 1 : rows;
      const int64_t w0 = kw == 0 ? 1 : 0, w1 = kw == 2 && right ? W - 1 : W;
      for (int64_t o0 = 0; o0 < O; o0 += VW * OV) {
        const float* xt = x + kh * x_row + kw * C;
        float* out = dw + (kh * 3 + kw) * C * O + o0;
        int64_t c0 = 0;
        for (; c0 + CB <= C; c0 += CB)
          Tile<CB, OV>(xt + c0, x_row, x_img, C, g + o0, n, rows, W, O, out + c0 * O, S, h0, h1, w0, w1);
        // Channels left over: smaller tiles (C is a multiple of 8 in practice).
        if (CB > 4) for (; c0 + 4 <= C; c0 += 4)
          Tile<(CB > 4 ? 4 : 1), OV>(xt + c0, x_row, x_img, C, g + o0, n, rows, W, O, out + c0 * O, S,
                                     h0, h1, w0, w1);
        if (CB > 2) for (; c0 + 2 <= C; c0 += 2)
          Tile<(CB > 2 ? 2 : 1), OV>(xt + c0, x_row, x_img, C, g + o0, n, rows, W, O, out + c0 * O, S,
                                     h0, h1, w0, w1);
        for (; c0 < C; ++c0)
          Tile<1, OV>(xt + c0, x_row, x_img, C, g + o0, n, rows, W, O, out + c0 * O, S, h0, h1, w0, w1);
      }
    }
}

using BlockFn = void (*)(const float*, int64_t, const float*, int64_t, int64_t, int64_t, int64_t,
                         float*, int64_t, int64_t, bool, bool);

template <int OV>
constexpr int kCB = std::min(16, JAXNETS_ACC / OV);

// The widest output tile (OV vectors, halved until it divides O) with ACC / OV input channels.
BlockFn PickBlock(int64_t O) {
  if (O % VW) return nullptr;
  if (JAXNETS_OV >= 4 && O % (4 * VW) == 0) return Block<kCB<4>, 4>;
  if (JAXNETS_OV >= 2 && O % (2 * VW) == 0) return Block<kCB<2>, 2>;
  return Block<kCB<1>, 1>;
}

// dw (zeroed by the caller) += the filter gradient of images [b0, b1): x [H, W, C] per image,
// g [Ho, Wo, O] per image, stride S.
void FilterGrad(BlockFn block, const float* x, const float* g, float* dw, int64_t b0, int64_t b1,
                int64_t H, int64_t W, int64_t C, int64_t O, int64_t S) {
  const int64_t Ho = (H - 1) / S + 1, Wo = (W - 1) / S + 1;
  // Several whole images per block when images are small, else a few output rows of one image.
  const int64_t rows = std::max<int64_t>(1, std::min<int64_t>(Ho, kBlockPixels / Wo));
  const int64_t imgs = rows < Ho ? 1 : std::max<int64_t>(1, kBlockPixels / (Ho * Wo));
  const int64_t x_row = (W + 2) * C;
  std::vector<float> xp(imgs * input_rows(rows, S) * x_row, 0.f);
  for (int64_t b = b0; b < b1; b += imgs) {
    const int64_t n = std::min(imgs, b1 - b);
    for (int64_t h0 = 0; h0 < Ho; h0 += rows) {
      const int64_t r = std::min(rows, Ho - h0), in_rows = input_rows(r, S);
      // Copy input rows S h0 - 1 .. S (h0 + r - 1) + 1 of each image (zero beyond the image)
      // into the bordered buffer.
      for (int64_t i = 0; i < n; ++i) {
        float* dst = xp.data() + i * in_rows * x_row;
        for (int64_t h = 0; h < in_rows; ++h) {
          float* d = dst + h * x_row + C;
          const int64_t src_h = S * h0 - 1 + h;
          if (src_h < 0 || src_h >= H)
            std::memset(d, 0, sizeof(float) * W * C);
          else
            std::memcpy(d, x + ((b + i) * H + src_h) * W * C, sizeof(float) * W * C);
        }
      }
      block(xp.data(), C, g + (b * Ho + h0) * Wo * O, n, r, Wo, O, dw, W, S, h0 == 0,
            h0 + r == Ho && S * (Ho - 1) + 1 >= H);
    }
  }
}

// threads: the most threads of the intra-op pool to use (0: all of them).
ffi::Error Conv3x3FilterGradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                                 ffi::Buffer<ffi::F32> g, ffi::ResultBuffer<ffi::F32> dw,
                                 int64_t threads, int64_t stride) {
  const auto xd = x.dimensions(), gd = g.dimensions(), wd = dw->dimensions();
  if (xd.size() != 4 || gd.size() != 4 || wd.size() != 4)
    return ffi::Error::InvalidArgument("conv3x3_filter_grad: rank-4 NHWC operands expected");
  const int64_t B = xd[0], H = xd[1], W = xd[2], C = xd[3], O = gd[3], S = stride;
  if (S != 1 && S != 2) return ffi::Error::InvalidArgument("conv3x3_filter_grad: stride 1 or 2");
  if (gd[0] != B || gd[1] != (H - 1) / S + 1 || gd[2] != (W - 1) / S + 1 || wd[0] != 3 || wd[1] != 3 ||
      wd[2] != C || wd[3] != O)
    return ffi::Error::InvalidArgument("conv3x3_filter_grad: shapes do not match");
  BlockFn block = PickBlock(O);
  if (!block)
    return ffi::Error::InvalidArgument("conv3x3_filter_grad: output channels must be a multiple of the vector width");
  float* out = dw->typed_data();
  const int64_t size = 9 * C * O;
  std::fill(out, out + size, 0.f);
  const int64_t parts = std::max<int64_t>(1, std::min(usable_threads(pool, threads), B));
  if (parts == 1) {
    FilterGrad(block, x.typed_data(), g.typed_data(), out, 0, B, H, W, C, O, S);
    return ffi::Error::Success();
  }
  // Batch split over the intra-op threads (run_tasks), one partial gradient per part.
  std::vector<std::vector<float>> partial(parts, std::vector<float>(size, 0.f));
  const float* xs = x.typed_data();
  const float* gs = g.typed_data();
  run_tasks(pool, threads, parts, [&](int64_t p) {
    FilterGrad(block, xs, gs, partial[p].data(), B * p / parts, B * (p + 1) / parts, H, W, C, O, S);
  });
  for (const auto& part : partial)
    for (int64_t i = 0; i < size; ++i) out[i] += part[i];
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(Conv3x3FilterGrad, Conv3x3FilterGradImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // x  [B, H, W, C]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // g  [B, Ho, Wo, O]
                                  .Ret<ffi::Buffer<ffi::F32>>()   // dw [3, 3, C, O]
                                  .Attr<int64_t>("threads")
                                  .Attr<int64_t>("stride"));

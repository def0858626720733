// Filter gradient of a 3x3, stride-1, 'same'-padded NHWC convolution, as an XLA FFI handler:
//
//   dw[kh, kw, c, o] = sum over b, h, w of x[b, h + kh - 1, w + kw - 1, c] * g[b, h, w, o]
//
// (x is zero outside the image). Why a kernel of our own: XLA:CPU computes this as a convolution
// whose "kernel" is the whole gradient image, after transposing both operands, at 115-165
// GFLOP/s on one core of this project's machines, while the tiled loop below reaches ~200
// (PyTorch's oneDNN reaches ~230). It is the largest part of a ResNet train step left to XLA.
//
// The loop: for each tap (kh, kw), a block of CB input channels and a block of 16*OV output
// channels, CB x OV vector accumulators stay in registers while the loop runs over all pixels of
// a few rows (so the rows stay in L1); each step broadcasts CB input values against OV vectors
// of the gradient. The image is copied into a zero-bordered buffer a few rows at a time so that
// every tap reads in bounds. Written with GCC/Clang vector extensions: one source for AVX-512,
// AVX2 (two halves per vector) and NEON; built with -march=native by jaxnets/kernels/native.py.
#include <algorithm>
#include <atomic>
#include <thread>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4)));  // unaligned loads/stores

constexpr int64_t kBlockPixels = 1024;  // pixels per register pass: rows that stay in L1

// acc[CB][OV] += x[p, c0:c0+CB]^T g[p, o0:o0+16*OV] over the pixels p of `rows` rows of `n` images.
template <int CB, int OV>
inline void Tile(const float* x, int64_t x_row, int64_t x_img, int64_t C, const float* g,
                 int64_t n, int64_t rows, int64_t W, int64_t O, float* out) {
  v16 acc[CB][OV] = {};
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t h = 0; h < rows; ++h) {
      const float* xr = x + i * x_img + h * x_row;
      const float* gr = g + (i * rows + h) * W * O;
      for (int64_t w = 0; w < W; ++w) {
        v16 gv[OV];
        for (int j = 0; j < OV; ++j) gv[j] = *reinterpret_cast<const v16u*>(gr + w * O + 16 * j);
        const float* xv = xr + w * C;
        for (int c = 0; c < CB; ++c)
          for (int j = 0; j < OV; ++j) acc[c][j] += xv[c] * gv[j];
      }
    }
  }
  for (int c = 0; c < CB; ++c)
    for (int j = 0; j < OV; ++j) *reinterpret_cast<v16u*>(out + c * O + 16 * j) += acc[c][j];
}

// All taps and channel blocks for one block of pixels; x is the zero-bordered copy.
template <int CB, int OV>
void Block(const float* x, int64_t C, const float* g, int64_t n, int64_t rows, int64_t W,
           int64_t O, float* dw) {
  const int64_t x_row = (W + 2) * C, x_img = (rows + 2) * x_row;
  for (int kh = 0; kh < 3; ++kh)
    for (int kw = 0; kw < 3; ++kw)
      for (int64_t o0 = 0; o0 < O; o0 += 16 * OV)
        for (int64_t c0 = 0; c0 < C; c0 += CB)
          Tile<CB, OV>(x + kh * x_row + kw * C + c0, x_row, x_img, C, g + o0, n, rows, W, O,
                       dw + ((kh * 3 + kw) * C + c0) * O + o0);
}

using BlockFn = void (*)(const float*, int64_t, const float*, int64_t, int64_t, int64_t, int64_t,
                         float*);

// Register tiles: at most 16 accumulators (more spill on AVX2 and gained nothing on AVX-512).
BlockFn PickBlock(int64_t C, int64_t O) {
  if (O % 16) return nullptr;
  const int ov = (O / 16) % 2 == 0 ? 2 : 1;
  for (int cb : {16, 8, 4, 2, 1}) {
    if (C % cb || cb * ov > 16) continue;
    switch (cb * 4 + ov) {
      case 16 * 4 + 1: return Block<16, 1>;
      case 8 * 4 + 1: return Block<8, 1>;
      case 8 * 4 + 2: return Block<8, 2>;
      case 4 * 4 + 1: return Block<4, 1>;
      case 4 * 4 + 2: return Block<4, 2>;
      case 2 * 4 + 1: return Block<2, 1>;
      case 2 * 4 + 2: return Block<2, 2>;
      case 1 * 4 + 1: return Block<1, 1>;
      case 1 * 4 + 2: return Block<1, 2>;
    }
  }
  return nullptr;
}

// dw (zeroed by the caller) += the filter gradient of images [b0, b1).
void FilterGrad(BlockFn block, const float* x, const float* g, float* dw, int64_t b0, int64_t b1,
                int64_t H, int64_t W, int64_t C, int64_t O) {
  // Several whole images per block when images are small, else a few rows of one image.
  const int64_t rows = std::max<int64_t>(1, std::min<int64_t>(H, kBlockPixels / W));
  const int64_t imgs = rows < H ? 1 : std::max<int64_t>(1, kBlockPixels / (H * W));
  const int64_t x_row = (W + 2) * C;
  std::vector<float> xp(imgs * (rows + 2) * x_row, 0.f);
  for (int64_t b = b0; b < b1; b += imgs) {
    const int64_t n = std::min(imgs, b1 - b);
    for (int64_t h0 = 0; h0 < H; h0 += rows) {
      const int64_t r = std::min(rows, H - h0);
      // Copy rows h0-1 .. h0+r of each image (zero beyond the image) into the bordered buffer.
      for (int64_t i = 0; i < n; ++i) {
        float* dst = xp.data() + i * (r + 2) * x_row;
        for (int64_t h = -1; h <= r; ++h) {
          float* d = dst + (h + 1) * x_row + C;
          const int64_t src_h = h0 + h;
          if (src_h < 0 || src_h >= H)
            std::memset(d, 0, sizeof(float) * W * C);
          else
            std::memcpy(d, x + ((b + i) * H + src_h) * W * C, sizeof(float) * W * C);
        }
      }
      block(xp.data(), C, g + (b * H + h0) * W * O, n, r, W, O, dw);
    }
  }
}

// threads: the most threads of the intra-op pool to use (0: all of them).
ffi::Error Conv3x3FilterGradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                                 ffi::Buffer<ffi::F32> g, ffi::ResultBuffer<ffi::F32> dw,
                                 int64_t threads) {
  const auto xd = x.dimensions(), gd = g.dimensions(), wd = dw->dimensions();
  if (xd.size() != 4 || gd.size() != 4 || wd.size() != 4)
    return ffi::Error::InvalidArgument("conv3x3_filter_grad: rank-4 NHWC operands expected");
  const int64_t B = xd[0], H = xd[1], W = xd[2], C = xd[3], O = gd[3];
  if (gd[0] != B || gd[1] != H || gd[2] != W || wd[0] != 3 || wd[1] != 3 || wd[2] != C || wd[3] != O)
    return ffi::Error::InvalidArgument("conv3x3_filter_grad: shapes do not match");
  BlockFn block = PickBlock(C, O);
  if (!block)
    return ffi::Error::InvalidArgument("conv3x3_filter_grad: output channels must be a multiple of 16");
  float* out = dw->typed_data();
  const int64_t size = 9 * C * O;
  std::fill(out, out + size, 0.f);
  const int64_t pool_threads = pool.num_threads();
  const int64_t usable = threads > 0 ? std::min(threads, pool_threads) : pool_threads;
  const int64_t parts = std::max<int64_t>(1, std::min(usable, B));
  if (parts == 1) {
    FilterGrad(block, x.typed_data(), g.typed_data(), out, 0, B, H, W, C, O);
    return ffi::Error::Success();
  }
  // Batch split over the intra-op threads, one partial gradient per part. Parts are claimed
  // from a counter by the caller and by pool tasks alike, and the caller waits only for parts
  // that a running task has claimed: it never waits on a task still queued behind work that
  // may itself be waiting (several CPU devices share one pool; a plain fork-join livelocked).
  // A task that starts after the call returned finds nothing left and only drops its reference.
  struct Shared {
    std::atomic<int64_t> next{0}, done{0};
    std::vector<std::vector<float>> partial;
  };
  auto shared = std::make_shared<Shared>();
  shared->partial.assign(parts, std::vector<float>(size, 0.f));
  const float* xs = x.typed_data();
  const float* gs = g.typed_data();
  auto work = [=] {
    for (int64_t p; (p = shared->next.fetch_add(1)) < parts;) {
      FilterGrad(block, xs, gs, shared->partial[p].data(), B * p / parts, B * (p + 1) / parts,
                 H, W, C, O);
      shared->done.fetch_add(1, std::memory_order_release);
    }
  };
  for (int64_t p = 1; p < parts; ++p) pool.Schedule([work] { work(); });
  work();
  while (shared->done.load(std::memory_order_acquire) < parts) std::this_thread::yield();
  for (const auto& part : shared->partial)
    for (int64_t i = 0; i < size; ++i) out[i] += part[i];
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(Conv3x3FilterGrad, Conv3x3FilterGradImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // x  [B, H, W, C]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // g  [B, H, W, O]
                                  .Ret<ffi::Buffer<ffi::F32>>()   // dw [3, 3, C, O]
                                  .Attr<int64_t>("threads"));

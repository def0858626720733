// What the native CPU kernels beside this file share: the vector types sized by the per-ISA
// macros of jaxnets/kernels/native.py, and the split of a kernel's work over XLA's intra-op pool.
// native.py's build key hashes this header with each kernel's source.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

#ifndef JAXNETS_VW
#define JAXNETS_VW 16
#endif
#ifndef JAXNETS_ACC
#define JAXNETS_ACC 16
#endif
#ifndef JAXNETS_OV
#define JAXNETS_OV 2
#endif

namespace jaxnets_native {

constexpr int VW = JAXNETS_VW;   // floats per vector register
typedef float vec __attribute__((vector_size(4 * VW)));
typedef float vecu __attribute__((vector_size(4 * VW), aligned(4)));  // unaligned loads/stores
typedef int32_t ivec __attribute__((vector_size(4 * VW)));

inline vec load(const float* p) { return *reinterpret_cast<const vecu*>(p); }
inline void store(float* p, vec v) { *reinterpret_cast<vecu*>(p) = v; }
// A load kept in a register: GCC otherwise folds a vector loaded once and used by several FMAs
// into each of them as a memory operand (a load per use), and on the Zen 4 (AVX-512 as two
// 256-bit halves) a register tile of such FMAs ran at half the FMA rate (lstm_recurrence.cc).
inline vec load_kept(const float* p) {
  vec v = *reinterpret_cast<const vecu*>(p);
#if defined(__x86_64__)
  asm("" : "+v"(v));
#endif
  return v;
}
inline vec splat(float x) {   // a broadcast (vec{} + x adds +0.0: -0.0 + 0.0 is +0.0)
  vec v = {x};
  return __builtin_shuffle(v, ivec{});
}
inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }
// The sum of a vector's lanes, in lane order.
inline float hsum(vec v) {
  float t = 0.f;
  for (int l = 0; l < VW; ++l) t += v[l];
  return t;
}

// exp(x), vectorised: 2^n * p(r) with x = n ln2 + r, |r| <= ln2/2, p a degree-6 polynomial
// (Cephes expf's coefficients): relative error ~1e-7. Below -87.3 (where float32 exp underflows)
// the result is 0; above 88.3 it is clamped there (~2.2e38, never infinite). n = round(x / ln2)
// by adding and subtracting 1.5 * 2^23 (a float that large has no fraction bits), whose bit
// pattern then holds n itself: two operations where a floor by conversions took five.
inline vec vexp(vec x) {
  const vec lo = splat(-87.3f), hi = splat(88.3f), magic = splat(12582912.f);   // 1.5 * 2^23
  vec clamped = x < lo ? lo : (x > hi ? hi : x);
  vec k = clamped * splat(1.44269504f) + magic;
  vec n = k - magic;
  vec r = clamped - n * splat(0.693359375f) + n * splat(2.12194440e-4f);
  vec p = splat(1.9875691500e-4f);
  p = p * r + splat(1.3981999507e-3f);
  p = p * r + splat(8.3334519073e-3f);
  p = p * r + splat(4.1665795894e-2f);
  p = p * r + splat(1.6666665459e-1f);
  p = p * r + splat(5.0000001201e-1f);
  p = p * r * r + r + splat(1.0f);
  ivec bits;
  std::memcpy(&bits, &k, sizeof(vec));
  bits = (bits - 0x4B400000 + 127) << 23;   // (n + 127) << 23: 2^n
  vec scale2;
  std::memcpy(&scale2, &bits, sizeof(vec));
  vec result = p * scale2;
  return x < lo ? splat(0.f) : result;
}

// Scratch memory of the thread running a task, kept from task to task and call to call and not
// zeroed: a kernel writes every buffer before it reads it. Zero-filling fresh vectors per task
// took about a tenth of an attention forward pass (causal_attention.cc).
class Scratch {
 public:
  explicit Scratch(int64_t floats) {
    static thread_local std::vector<float> arena;
    if (static_cast<int64_t>(arena.size()) < floats) arena.resize(floats);
    next_ = arena.data();
  }
  float* take(int64_t n) {
    float* p = next_;
    next_ += round_up(n, 16);   // 64-byte steps
    return p;
  }

 private:
  float* next_;
};

// Floats `Scratch` hands out for buffers of these sizes.
inline int64_t scratch_floats(std::initializer_list<int64_t> sizes) {
  int64_t total = 0;
  for (int64_t n : sizes) total += round_up(n, 16);
  return total;
}

// Tasks 0..tasks-1 of `work(task)`, claimed from a counter by the caller and by up to
// `threads` - 1 tasks of XLA's intra-op pool (threads 0: the whole pool). The caller waits only
// for tasks a running thread has claimed, never for a pool task still queued behind work that may
// itself be waiting (several CPU devices share one pool; a plain fork-join livelocked). A pool
// task that starts after the call returned finds nothing left and only drops its reference, so
// `work` is never called then.
// Threads a kernel may use: `threads` of the pool (0: all of them), the calling thread included.
inline int64_t usable_threads(xla::ffi::ThreadPool& pool, int64_t threads) {
  const int64_t n = pool.num_threads();
  return threads > 0 ? std::min<int64_t>(threads, n) : n;
}

template <typename F>
void run_tasks(xla::ffi::ThreadPool pool, int64_t threads, int64_t tasks, F work) {
  const int64_t helpers = std::max<int64_t>(0, std::min(usable_threads(pool, threads), tasks) - 1);
  struct Shared {
    std::atomic<int64_t> next{0}, done{0};
  };
  auto shared = std::make_shared<Shared>();
  auto loop = [shared, tasks, work] {
    for (int64_t t; (t = shared->next.fetch_add(1)) < tasks;) {
      work(t);
      shared->done.fetch_add(1, std::memory_order_release);
    }
  };
  for (int64_t p = 0; p < helpers; ++p) pool.Schedule([loop] { loop(); });
  loop();
  while (shared->done.load(std::memory_order_acquire) < tasks) std::this_thread::yield();
}

}  // namespace jaxnets_native

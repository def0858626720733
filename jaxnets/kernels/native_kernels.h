// What the native CPU kernels beside this file share: the vector types sized by the per-ISA
// macros of jaxnets/kernels/native.py, and the split of a kernel's work over XLA's intra-op pool.
// native.py's build key hashes this header with each kernel's source.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

#ifndef JAXNETS_VW
#define JAXNETS_VW 16
#endif
#ifndef JAXNETS_ACC
#define JAXNETS_ACC 16
#endif

namespace jaxnets_native {

constexpr int VW = JAXNETS_VW;   // floats per vector register
typedef float vec __attribute__((vector_size(4 * VW)));
typedef float vecu __attribute__((vector_size(4 * VW), aligned(4)));  // unaligned loads/stores
typedef int32_t ivec __attribute__((vector_size(4 * VW)));

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

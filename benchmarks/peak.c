// The machine's float32 peak, measured: `peak THREADS SECONDS` prints one line
//   "<isa> <lanes> <flops_per_s_all_threads> <cycles_per_s_one_thread>"
// FMA throughput: 12 independent accumulators per thread (enough to cover FMA latency 4 on
// 2-3 pipes), the widest vector ISA the CPU has; the clock: a chain of dependent integer adds
// (one per cycle on every x86 core since the P6). flops/cycle/core = 2 * lanes * FMA pipes,
// so the pipe count comes out of the two measurements rather than from a microarchitecture table.
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <immintrin.h>

// Thread CPU time, not wall time: on a shared machine the time slices given to other processes
// do not count, so the rate is the core's own, whatever the load.
static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

#define FMA12(OP, a, b, c) \
  a##0 = OP(a##0, b, c); a##1 = OP(a##1, b, c); a##2 = OP(a##2, b, c); a##3 = OP(a##3, b, c); \
  a##4 = OP(a##4, b, c); a##5 = OP(a##5, b, c); a##6 = OP(a##6, b, c); a##7 = OP(a##7, b, c); \
  a##8 = OP(a##8, b, c); a##9 = OP(a##9, b, c); a##10 = OP(a##10, b, c); a##11 = OP(a##11, b, c);

__attribute__((target("avx512f"))) static float fma512(long iters) {
  __m512 b = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-6f);
  // Distinct starting values: identical accumulators would be merged into one chain by the compiler.
  __m512 a0 = _mm512_set1_ps(1.0f); __m512 a1 = _mm512_set1_ps(2.0f); __m512 a2 = _mm512_set1_ps(3.0f); __m512 a3 = _mm512_set1_ps(4.0f); __m512 a4 = _mm512_set1_ps(5.0f); __m512 a5 = _mm512_set1_ps(6.0f); __m512 a6 = _mm512_set1_ps(7.0f); __m512 a7 = _mm512_set1_ps(8.0f); __m512 a8 = _mm512_set1_ps(9.0f); __m512 a9 = _mm512_set1_ps(10.0f); __m512 a10 = _mm512_set1_ps(11.0f); __m512 a11 = _mm512_set1_ps(12.0f);
  for (long n = 0; n < iters; n++) { FMA12(_mm512_fmadd_ps, a, b, c) }
  __m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
                           _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7)));
  s = _mm512_add_ps(s, _mm512_add_ps(_mm512_add_ps(a8, a9), _mm512_add_ps(a10, a11)));
  return _mm512_reduce_add_ps(s);
}

__attribute__((target("avx2,fma"))) static float fma256(long iters) {
  __m256 b = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-6f);
  __m256 a0 = _mm256_set1_ps(1.0f); __m256 a1 = _mm256_set1_ps(2.0f); __m256 a2 = _mm256_set1_ps(3.0f); __m256 a3 = _mm256_set1_ps(4.0f); __m256 a4 = _mm256_set1_ps(5.0f); __m256 a5 = _mm256_set1_ps(6.0f); __m256 a6 = _mm256_set1_ps(7.0f); __m256 a7 = _mm256_set1_ps(8.0f); __m256 a8 = _mm256_set1_ps(9.0f); __m256 a9 = _mm256_set1_ps(10.0f); __m256 a10 = _mm256_set1_ps(11.0f); __m256 a11 = _mm256_set1_ps(12.0f);
  for (long n = 0; n < iters; n++) { FMA12(_mm256_fmadd_ps, a, b, c) }
  __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                           _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
  s = _mm256_add_ps(s, _mm256_add_ps(_mm256_add_ps(a8, a9), _mm256_add_ps(a10, a11)));
  float out[8];
  _mm256_storeu_ps(out, s);
  return out[0] + out[7];
}

static int lanes;
static long iters;
static volatile float sink;

static double rate[256];   // flops per CPU-second of each thread

static void *worker(void *arg) {
  double t0 = now();
  sink = lanes == 16 ? fma512(iters) : fma256(iters);
  rate[(long)arg] = 2.0 * 12 * lanes * (double)iters / (now() - t0);
  return NULL;
}

static double cycles_per_s(double seconds) {
  long n = 0;
  unsigned long x = 0;
  double t0 = now(), t = t0;
  do {   // 100 dependent adds per pass: the loop's own branch overlaps with them
    __asm__ volatile(
        ".rept 100\n\taddq $1, %0\n\t.endr" : "+r"(x));
    n++;
  } while (((n & 0xffff) != 0) || (t = now()) - t0 < seconds);
  return 100.0 * n / (t - t0);
}

int main(int argc, char **argv) {
  int threads = argc > 1 ? atoi(argv[1]) : 1;
  double seconds = argc > 2 ? atof(argv[2]) : 0.2;
  __builtin_cpu_init();
  lanes = __builtin_cpu_supports("avx512f") ? 16 : (__builtin_cpu_supports("fma") ? 8 : 0);
  if (!lanes) { printf("none 0 0 0\n"); return 0; }
  // Calibrate the iteration count on one thread, then run all threads at once.
  iters = 1000000;
  worker((void *)0);
  iters = (long)(iters * seconds * rate[0] / (2.0 * 12 * lanes * iters));
  pthread_t tid[256];
  if (threads > 256) threads = 256;
  for (long i = 0; i < threads; i++) pthread_create(&tid[i], NULL, worker, (void *)i);
  double flops = 0;
  for (int i = 0; i < threads; i++) {
    pthread_join(tid[i], NULL);
    flops += rate[i];
  }
  printf("%s %d %.6g %.6g\n", lanes == 16 ? "avx512f" : "avx2+fma", lanes, flops, cycles_per_s(seconds));
  return 0;
}

// How many OpenMP threads a CPU kernel call should use.
//
// Opening a parallel region costs a wake-up and a barrier per thread: a few microseconds on an
// idle machine, but a whole scheduler time slice (milliseconds) when the cores are busy with
// other work, since the region cannot end before every thread of the team has run. Torch's own
// element-wise ops stay on the calling thread below ~32k elements for the same reason. A kernel
// call therefore takes one thread per ~100 us of estimated work, and one alone for small calls.
#pragma once
#include <algorithm>
#include <cstdint>

namespace gmk {

// Threads for `items` independent work items costing about `work_ns` nanoseconds in all (one
// thread's time), at most `max_threads`, at least 1: one per `ns_per_thread` of work.
inline int team_size(int max_threads, int64_t items, double work_ns,
                     double ns_per_thread = 1.0e5) {
  const int64_t by_work = std::max<int64_t>(1, static_cast<int64_t>(work_ns / ns_per_thread));
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({max_threads, items, by_work})));
}

// The same for a kernel that runs right after a BLAS product on the calling thread (the tiled
// log-likelihood's epilogues and sparse products): the product's OpenMP team (MKL and these
// kernels share one) is still spinning, so opening a region wakes no thread, and one thread per
// ~25 us of work pays. Measured at 2 threads against team_size's rule (interleaved medians of 80;
// 1e5-element tiles, on one thread under that rule): B = C = 316, forward d = 128 0.296 -> 0.265
// ms, forward + backward (x, means) d = 128 0.929 -> 0.863 ms and d = 64 0.741 -> 0.710 ms; a
// gradient penalty at B = C = 256, d = 16 0.754 -> 0.725 ms; B = C = 1000 unchanged (two threads
// either way).
inline int team_size_after_product(int max_threads, int64_t items, double work_ns) {
  return team_size(max_threads, items, work_ns, 2.5e4);
}

}  // namespace gmk

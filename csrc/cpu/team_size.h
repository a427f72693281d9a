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
// thread's time), at most `max_threads`, at least 1.
inline int team_size(int max_threads, int64_t items, double work_ns) {
  const int64_t by_work = std::max<int64_t>(1, static_cast<int64_t>(work_ns / 1.0e5));
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({max_threads, items, by_work})));
}

}  // namespace gmk

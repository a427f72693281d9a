// Memory for the ops' large CPU outputs. See output_memory.cpp.
#pragma once

#include <ATen/ATen.h>

namespace gmk {

// An uninitialized contiguous tensor like at::empty(sizes, options); a CPU one of 8 MiB or more is
// carved from the kept blocks of freed outputs where one fits (and, fresh, with
// GMKERNELS_HUGE_PAGES=1, asks the kernel for transparent huge pages). Throws ValueError on a bad
// GMKERNELS_OUTPUT_CACHE_BYTES.
at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options);
// The most bytes of freed large outputs kept for reuse (GMKERNELS_OUTPUT_CACHE_BYTES, read on every
// call, else kOutputCacheBytes); 0 keeps none. Throws ValueError unless a non-negative integer.
constexpr int64_t kOutputCacheBytes = int64_t(256) << 20;
int64_t output_cache_limit();
// The bytes kept now, and a release of all of them.
int64_t output_cache_kept_bytes();
void release_output_cache();
// empty_output of like's sizes and options (contiguous).
at::Tensor empty_output_like(const at::Tensor& like);

}  // namespace gmk

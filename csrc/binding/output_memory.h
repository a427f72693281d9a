// Memory for the ops' large CPU outputs. See output_memory.cpp.
#pragma once

#include <ATen/ATen.h>

namespace gmk {

// at::empty(sizes, options); with GMKERNELS_HUGE_PAGES=1, a CPU tensor of 8 MiB or more also asks
// the kernel for transparent huge pages over it.
at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options);
// empty_output of like's sizes and options (contiguous).
at::Tensor empty_output_like(const at::Tensor& like);

}  // namespace gmk

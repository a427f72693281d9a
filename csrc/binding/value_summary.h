// value_summary: one pass over a CPU tensor for the Python wrappers' value checks.
#pragma once
#include <torch/extension.h>

namespace gmk {

// (smallest, largest, total, smallest row total, largest row total) of a non-empty float32,
// float64 or int64 CPU tensor; the row totals (over the last dimension of a 2-D tensor) only with
// `row_sums`, else None. Totals are summed in double. For floats, a NaN anywhere makes all five
// NaN; int64 extremes come back as Python ints.
pybind11::tuple value_summary(const at::Tensor& values, bool row_sums);

}  // namespace gmk

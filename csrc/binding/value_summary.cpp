// value_summary: what the Python wrappers' value checks read of a CPU tensor (signs, finiteness,
// ranges, row sums; gmkernels/ops/_checks.py) in one call: each chunk of the tensor is read once,
// and a second time while still in cache when row totals are asked for. Each torch reduction
// costs a dispatch, an output tensor and a wake-up of the thread pool: the five that checked
// class_pairwise_kl's probabilities took most of its call at N = 1000, C = 10.
#include "value_summary.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

namespace gmk {
namespace {

// Elements one thread takes at least: below this the pass is a few microseconds.
constexpr int64_t kGrainElements = int64_t(1) << 16;
// Rows shorter than this are summed by a scalar loop: a vector reduction's set-up and final
// horizontal sum cost more than such a row (10 us against 3 for 1000 rows of 10).
constexpr int64_t kShortRow = 16;

template <typename T>
struct Partial {
  // +-inf for floats, so that a tensor of infinities reports them.
  T low = std::numeric_limits<T>::has_infinity ? std::numeric_limits<T>::infinity()
                                               : std::numeric_limits<T>::max();
  T high = std::numeric_limits<T>::has_infinity ? -std::numeric_limits<T>::infinity()
                                                : std::numeric_limits<T>::lowest();
  double total = 0;
  // v - v summed: NaN when some element is NaN or infinite (then a second look tells which).
  T probe = 0;
  double row_low = std::numeric_limits<double>::infinity();
  double row_high = -std::numeric_limits<double>::infinity();
};

// Elements [begin, end): extremes, total and the non-finite probe, one vector loop.
template <typename T>
void summarize_elements(const T* data, int64_t begin, int64_t end, Partial<T>& out) {
  T low = out.low, high = out.high, probe = out.probe;
  double total = out.total;
#pragma omp simd reduction(min : low) reduction(max : high) reduction(+ : total, probe)
  for (int64_t i = begin; i < end; ++i) {
    const T v = data[i];
    low = v < low ? v : low;
    high = v > high ? v : high;
    total += static_cast<double>(v);
    if constexpr (std::is_floating_point_v<T>) probe += v - v;
  }
  out.low = low;
  out.high = high;
  out.total = total;
  out.probe = probe;
}

// Rows [begin, end) of a row-major (rows, cols) tensor: the extremes of their totals. Totals
// of a block of rows first, then their extremes: no row waits for the previous row's min/max.
template <typename T>
void summarize_row_totals(const T* data, int64_t begin, int64_t end, int64_t cols,
                          Partial<T>& out) {
  constexpr int64_t kBlockRows = 256;
  double totals[kBlockRows];
  for (int64_t block = begin; block < end; block += kBlockRows) {
    const int64_t count = std::min(kBlockRows, end - block);
    for (int64_t r = 0; r < count; ++r) {
      const T* row = data + (block + r) * cols;
      double row_total = 0;
      if (cols < kShortRow) {
        for (int64_t c = 0; c < cols; ++c) row_total += static_cast<double>(row[c]);
      } else {
#pragma omp simd reduction(+ : row_total)
        for (int64_t c = 0; c < cols; ++c) row_total += static_cast<double>(row[c]);
      }
      totals[r] = row_total;
    }
    double row_low = out.row_low, row_high = out.row_high;
#pragma omp simd reduction(min : row_low) reduction(max : row_high)
    for (int64_t r = 0; r < count; ++r) {
      row_low = totals[r] < row_low ? totals[r] : row_low;
      row_high = totals[r] > row_high ? totals[r] : row_high;
    }
    out.row_low = row_low;
    out.row_high = row_high;
  }
}

template <typename T>
pybind11::tuple summarize(const at::Tensor& contiguous, bool row_sums) {
  const int64_t size = contiguous.numel();
  const int64_t cols = row_sums ? contiguous.size(1) : 1, rows = size / cols;
  const T* data = contiguous.data_ptr<T>();
  // One partial per chunk of whole rows, combined in chunk order.
  const int64_t grain_rows = std::max<int64_t>(1, kGrainElements / cols);
  const int64_t chunks = (rows + grain_rows - 1) / grain_rows;
  std::vector<Partial<T>> partials(chunks);
  at::parallel_for(0, chunks, 1, [&](int64_t first, int64_t last) {
    for (int64_t chunk = first; chunk < last; ++chunk) {
      const int64_t begin = chunk * grain_rows, end = std::min(rows, begin + grain_rows);
      summarize_elements(data, begin * cols, end * cols, partials[chunk]);
      if (row_sums) summarize_row_totals(data, begin, end, cols, partials[chunk]);
    }
  });
  Partial<T> all;
  for (const Partial<T>& part : partials) {
    all.low = std::min(all.low, part.low);
    all.high = std::max(all.high, part.high);
    all.total += part.total;
    all.probe += part.probe;
    all.row_low = std::min(all.row_low, part.row_low);
    all.row_high = std::max(all.row_high, part.row_high);
  }
  namespace py = pybind11;
  const py::object none = py::none();
  if constexpr (std::is_floating_point_v<T>) {
    // A NaN anywhere makes every statistic NaN, so that any comparison a check makes fails.
    bool has_nan = false;
    if (all.probe != all.probe) {  // some element is NaN or infinite
      for (int64_t i = 0; i < size && !has_nan; ++i) has_nan = data[i] != data[i];
    }
    const double nan = std::numeric_limits<double>::quiet_NaN();
    if (has_nan) return py::make_tuple(nan, nan, nan, row_sums ? py::object(py::float_(nan)) : none,
                                       row_sums ? py::object(py::float_(nan)) : none);
    const double low = all.low, high = all.high;
    if (!row_sums) return py::make_tuple(low, high, all.total, none, none);
    return py::make_tuple(low, high, all.total, all.row_low, all.row_high);
  } else {
    return py::make_tuple(py::int_(all.low), py::int_(all.high), all.total, none, none);
  }
}

}  // namespace

pybind11::tuple value_summary(const at::Tensor& values, bool row_sums) {
  TORCH_CHECK(values.device().is_cpu(), "value_summary takes CPU tensors, got one on ",
              values.device());
  TORCH_CHECK(values.numel() > 0, "value_summary needs at least one element");
  TORCH_CHECK(!row_sums || values.dim() == 2, "value_summary's row sums need a 2-D tensor, got ",
              values.dim(), " dimensions");
  const at::Tensor contiguous = values.detach().contiguous();
  switch (contiguous.scalar_type()) {
    case at::kFloat: return summarize<float>(contiguous, row_sums);
    case at::kDouble: return summarize<double>(contiguous, row_sums);
    case at::kLong: return summarize<int64_t>(contiguous, row_sums);
    default:
      TORCH_CHECK(false, "value_summary takes float32, float64 or int64, got ",
                  contiguous.scalar_type());
  }
}

}  // namespace gmk

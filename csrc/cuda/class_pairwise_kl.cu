// CUDA kernels of class_pairwise_kl (math in csrc/kernels/class_pairwise_kl.h).
// The per-class sums are a deterministic segmented reduction without float atomics:
//   1. rows are grouped by class with a stable radix sort of the labels (cub), so each class's
//      rows sit in ascending order at [class_begin[k], class_begin[k + 1]);
//   2. each class is cut into chunks of kChunkRows rows; one block sums one chunk for a tile of
//      columns (fixed-order tree in shared memory) into a float64 partial row;
//   3. one block per (class, column tile) adds the class's chunk partials (same fixed tree).
// Forward: sums of l = log max(p, eps) give Lbar, then one row pass computes
// kl_i = sum_c p_ic (l_ic - Lbar_{k_i c}). Backward: sums of g_i p_i give W, then one elementwise
// pass writes the gradient. Sums, tables and the terms that cancel are float64 whatever the
// input dtype. Labels outside [0, num_classes) are sorted past every class and never read as a
// class: their rows get NaN (the binding leaves range checks to the Python wrapper, which would
// otherwise need a device sync).
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "../kernels/class_pairwise_kl.h"
#include "cuda_status.cuh"

namespace gmk {
namespace {

constexpr int kChunkRows = 64;       // rows of one class summed by one block
constexpr int kBlockThreads = 256;   // every kernel's block size
constexpr int kMaxColumnTile = 128;  // columns per block in the segmented sums

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The smallest power of two >= C, capped: lanes per row or columns per tile, so that narrow
// rows (C = 10) do not leave most lanes idle.
int lanes_for(int64_t num_categories, int cap) {
  int lanes = 1;
  while (lanes < cap && lanes < num_categories) lanes *= 2;
  return lanes;
}

__device__ __forceinline__ float device_log(float x) { return logf(x); }
__device__ __forceinline__ double device_log(double x) { return log(x); }

int end_bit_for(int64_t num_classes) {  // bits of the largest key, the sentinel num_classes
  int bits = 1;
  while ((int64_t(1) << bits) <= num_classes) ++bits;
  return bits;
}

template <typename T>
T* carve(char*& cursor, int64_t count) {
  const uintptr_t aligned = (reinterpret_cast<uintptr_t>(cursor) + 255) & ~uintptr_t(255);
  T* out = reinterpret_cast<T*>(aligned);
  cursor = reinterpret_cast<char*>(aligned + sizeof(T) * static_cast<uintptr_t>(count));
  return out;
}

// The caller's scratch memory, cut into the buffers below (a null base only measures it).
struct Workspace {
  uint32_t* keys_in;       // (N,) labels, out-of-range ones replaced by the sentinel K
  uint32_t* keys_out;      // (N,) sorted
  int32_t* rows_in;        // (N,) 0 .. N-1
  int32_t* rows_out;       // (N,) rows in class order
  int32_t* class_begin;    // (K + 1,) first sorted position of each class; [K] = valid rows
  int32_t* chunk_count;    // (K + 1,) chunks per class, [K] = 0
  int32_t* chunk_begin;    // (K + 1,) exclusive scan of chunk_count; [K] = chunks in all
  double* partial;         // (max_chunks, C) chunk sums
  double* table;           // (K, C) Lbar or W
  void* cub_temp;
  size_t cub_bytes;
  int64_t max_chunks;
  size_t total_bytes;
  CudaStatus status;       // of cub's size queries

  Workspace(void* base, int64_t n, int64_t c, int64_t k) {
    // Chunks never straddle classes: at most ceil(N / chunk) + (non-empty classes) of them.
    max_chunks = ceil_div(n, kChunkRows) + (k < n ? k : n);
    char* cursor = static_cast<char*>(base);
    keys_in = carve<uint32_t>(cursor, n);
    keys_out = carve<uint32_t>(cursor, n);
    rows_in = carve<int32_t>(cursor, n);
    rows_out = carve<int32_t>(cursor, n);
    class_begin = carve<int32_t>(cursor, k + 1);
    chunk_count = carve<int32_t>(cursor, k + 1);
    chunk_begin = carve<int32_t>(cursor, k + 1);
    partial = carve<double>(cursor, max_chunks * c);
    table = carve<double>(cursor, k * c);
    size_t sort_bytes = 0, scan_bytes = 0;
    status = cuda_status(cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, keys_in, keys_out,
                                                         rows_in, rows_out, static_cast<int>(n),
                                                         0, end_bit_for(k)),
                         "cub::DeviceRadixSort::SortPairs (size query)");
    if (status.ok())
      status = cuda_status(cub::DeviceScan::ExclusiveSum(nullptr, scan_bytes, chunk_count,
                                                         chunk_begin, static_cast<int>(k + 1)),
                           "cub::DeviceScan::ExclusiveSum (size query)");
    cub_bytes = sort_bytes > scan_bytes ? sort_bytes : scan_bytes;
    cub_temp = carve<char>(cursor, static_cast<int64_t>(cub_bytes));
    total_bytes = static_cast<size_t>(cursor - static_cast<char*>(base)) + 256;
  }
};

__global__ void prepare_keys_kernel(const int64_t* labels, int64_t num_samples,
                                    int64_t num_classes, uint32_t* keys, int32_t* rows) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= num_samples) return;
  const int64_t label = labels[i];
  keys[i] = static_cast<uint32_t>(label >= 0 && label < num_classes ? label : num_classes);
  rows[i] = static_cast<int32_t>(i);
}

__device__ int32_t lower_bound(const uint32_t* sorted, int32_t size, uint32_t key) {
  int32_t low = 0, high = size;
  while (low < high) {
    const int32_t mid = low + (high - low) / 2;
    if (sorted[mid] < key) low = mid + 1;
    else high = mid;
  }
  return low;
}

// class_begin[k] and chunk_count[k] for k <= K (thread K writes the end of the valid rows).
__global__ void class_bounds_kernel(const uint32_t* sorted_keys, int32_t num_samples,
                                    int64_t num_classes, int32_t* class_begin,
                                    int32_t* chunk_count) {
  const int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (k > num_classes) return;
  const int32_t begin = lower_bound(sorted_keys, num_samples, static_cast<uint32_t>(k));
  class_begin[k] = begin;
  if (k == num_classes) {
    chunk_count[k] = 0;
    return;
  }
  const int32_t end = lower_bound(sorted_keys, num_samples, static_cast<uint32_t>(k + 1));
  chunk_count[k] = (end - begin + kChunkRows - 1) / kChunkRows;
}

// The class owning chunk g: the last k with chunk_begin[k] <= g (empty classes share their
// successor's chunk_begin and are skipped).
__device__ int64_t chunk_class(const int32_t* chunk_begin, int64_t num_classes, int32_t chunk) {
  int64_t low = 0, high = num_classes + 1;  // first index with chunk_begin > chunk
  while (low < high) {
    const int64_t mid = low + (high - low) / 2;
    if (chunk_begin[mid] <= chunk) low = mid + 1;
    else high = mid;
  }
  return low - 1;
}

// partial[g, c] = sum over the rows of chunk g of log max(p_ic, eps) (row_weight null) or
// w_i p_ic. Block: `tile` columns x (kBlockThreads / tile) row slices (a warp reads consecutive
// columns of a row); slices are added by a fixed-order tree in shared memory.
template <typename scalar_t>
__global__ void chunk_sums_kernel(const scalar_t* probs, const scalar_t* row_weight,
                                  const int32_t* sorted_rows, const int32_t* class_begin,
                                  const int32_t* chunk_begin, int64_t num_classes,
                                  int64_t num_categories, scalar_t eps, int tile,
                                  double* partial) {
  __shared__ double slice_sums[kBlockThreads];
  const int32_t chunk = static_cast<int32_t>(blockIdx.x);
  if (chunk >= chunk_begin[num_classes]) return;  // uniform across the block
  const int64_t k = chunk_class(chunk_begin, num_classes, chunk);
  const int32_t start = class_begin[k] + (chunk - chunk_begin[k]) * kChunkRows;
  const int32_t stop = min(start + kChunkRows, class_begin[k + 1]);
  const int slices = kBlockThreads / tile;
  const int lane = threadIdx.x % tile, slice = threadIdx.x / tile;
  const int64_t col = int64_t(blockIdx.y) * tile + lane;
  double total = 0;
  if (col < num_categories) {
    for (int32_t position = start + slice; position < stop; position += slices) {
      const int64_t row = sorted_rows[position];
      const scalar_t prob = probs[row * num_categories + col];
      total += row_weight == nullptr
                   ? static_cast<double>(device_log(prob > eps ? prob : eps))
                   : static_cast<double>(row_weight[row]) * static_cast<double>(prob);
    }
  }
  slice_sums[threadIdx.x] = total;
  __syncthreads();
  for (int half = slices / 2; half > 0; half /= 2) {
    if (slice < half) slice_sums[threadIdx.x] += slice_sums[threadIdx.x + half * tile];
    __syncthreads();
  }
  if (slice == 0 && col < num_categories)
    partial[int64_t(chunk) * num_categories + col] = slice_sums[threadIdx.x];
}

// table[k, c] = (sum of class k's chunk sums) / n_k, 0 for empty classes; also rounded into
// `rounded` (the op's class_mean_log output) when given. Block layout and fixed-order tree as in
// chunk_sums_kernel, over the class's chunks instead of rows: one large class still spreads over
// a block.
template <typename scalar_t>
__global__ void class_table_kernel(const double* partial, const int32_t* class_begin,
                                   const int32_t* chunk_begin, int64_t num_categories, int tile,
                                   double* table, scalar_t* rounded) {
  __shared__ double slice_sums[kBlockThreads];
  const int64_t k = blockIdx.x;
  const int slices = kBlockThreads / tile;
  const int lane = threadIdx.x % tile, slice = threadIdx.x / tile;
  const int64_t col = int64_t(blockIdx.y) * tile + lane;
  double total = 0;
  if (col < num_categories)
    for (int32_t chunk = chunk_begin[k] + slice; chunk < chunk_begin[k + 1]; chunk += slices)
      total += partial[int64_t(chunk) * num_categories + col];
  slice_sums[threadIdx.x] = total;
  __syncthreads();
  for (int half = slices / 2; half > 0; half /= 2) {
    if (slice < half) slice_sums[threadIdx.x] += slice_sums[threadIdx.x + half * tile];
    __syncthreads();
  }
  if (slice == 0 && col < num_categories) {
    const int32_t count = class_begin[k + 1] - class_begin[k];
    const double mean = count > 0 ? slice_sums[threadIdx.x] / count : 0.0;
    table[k * num_categories + col] = mean;
    if (rounded != nullptr) rounded[k * num_categories + col] = static_cast<scalar_t>(mean);
  }
}

// Rows are handled by `group` lanes each (a power of two <= 32): a warp covers 32 / group
// consecutive rows, and the grid strides over warps so that every lane of a warp runs the same
// iterations (the shuffles below need the whole warp).
struct RowLanes {
  int group;
  int lane;      // within the row's group
  int64_t row;   // this iteration's row
  int64_t step;  // rows between iterations

  __device__ explicit RowLanes(int group_size) : group(group_size) {
    const int64_t thread = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
    const int rows_per_warp = 32 / group;
    lane = threadIdx.x % group;
    row = (thread / 32) * rows_per_warp + (threadIdx.x % 32) / group;
    step = (int64_t(gridDim.x) * blockDim.x / 32) * rows_per_warp;
  }
  __device__ int64_t warp_first_row() const { return row - (threadIdx.x % 32) / group; }
};

// kl_i = sum_c p_ic (l_ic - Lbar_{k_i c}); a row's lanes are added by a fixed xor-shuffle tree.
template <typename scalar_t>
__global__ void forward_rows_kernel(const scalar_t* probs, const int64_t* labels,
                                    const double* mean_log, int64_t num_samples,
                                    int64_t num_categories, int64_t num_classes, scalar_t eps,
                                    int group, scalar_t* kl) {
  for (RowLanes at(group); at.warp_first_row() < num_samples; at.row += at.step) {
    const bool in_range = at.row < num_samples;
    const int64_t label = in_range ? labels[at.row] : 0;
    const bool valid = label >= 0 && label < num_classes;
    double total = 0;
    if (in_range && valid) {
      const scalar_t* prob_row = probs + at.row * num_categories;
      const double* class_mean = mean_log + label * num_categories;
      for (int64_t col = at.lane; col < num_categories; col += group) {
        const scalar_t prob = prob_row[col];
        total += static_cast<double>(prob) *
                 (static_cast<double>(device_log(prob > eps ? prob : eps)) - class_mean[col]);
      }
    }
    for (int offset = group / 2; offset > 0; offset /= 2)
      total += __shfl_xor_sync(0xffffffffu, total, offset, group);
    if (in_range && at.lane == 0)
      kl[at.row] = valid ? static_cast<scalar_t>(total) : static_cast<scalar_t>(NAN);
  }
}

// grad_jc = g_j (l_jc + m_jc - Lbar_{k_j c}) - m_jc W_{k_j c} / p_jc, m = [p >= eps].
template <typename scalar_t>
__global__ void backward_kernel(const scalar_t* grad_kl, const scalar_t* probs,
                                const int64_t* labels, const scalar_t* class_mean_log,
                                const double* weighted, int64_t num_samples,
                                int64_t num_categories, int64_t num_classes, scalar_t eps,
                                int group, scalar_t* grad_probs) {
  for (RowLanes at(group); at.warp_first_row() < num_samples; at.row += at.step) {
    if (at.row >= num_samples) continue;
    const int64_t label = labels[at.row];
    const bool valid = label >= 0 && label < num_classes;
    const double grad = static_cast<double>(grad_kl[at.row]);
    const scalar_t* prob_row = probs + at.row * num_categories;
    scalar_t* out = grad_probs + at.row * num_categories;
    const scalar_t* class_mean = class_mean_log + (valid ? label : 0) * num_categories;
    const double* class_weighted = weighted + (valid ? label : 0) * num_categories;
    for (int64_t col = at.lane; col < num_categories; col += group) {
      if (!valid) {
        out[col] = static_cast<scalar_t>(NAN);
        continue;
      }
      const scalar_t prob = prob_row[col];
      const scalar_t clamped = prob > eps ? prob : eps;
      const double mask = prob >= eps ? 1.0 : 0.0;  // torch.clamp passes the gradient at p = eps
      out[col] = static_cast<scalar_t>(
          grad * (static_cast<double>(device_log(clamped)) + mask -
                  static_cast<double>(class_mean[col])) -
          mask * class_weighted[col] / static_cast<double>(clamped));
    }
  }
}

// Blocks for `work` threads, capped: the row kernels loop over the grid beyond that.
int grid_for(int64_t work) {
  const int64_t blocks = ceil_div(work, kBlockThreads);
  return static_cast<int>(blocks < (int64_t(1) << 20) ? (blocks > 0 ? blocks : 1) : (1 << 20));
}

// Sort the rows by class and fill `table` with the per-class means of log max(p, eps)
// (row_weight null) or of w_i p_i.
template <typename scalar_t>
CudaStatus class_means(const Workspace& ws, const scalar_t* probs, const scalar_t* row_weight,
                       const int64_t* labels, int64_t num_samples, int64_t num_categories,
                       int64_t num_classes, scalar_t eps, scalar_t* rounded,
                       cudaStream_t stream) {
  const int n = static_cast<int>(num_samples);
  prepare_keys_kernel<<<grid_for(num_samples), kBlockThreads, 0, stream>>>(
      labels, num_samples, num_classes, ws.keys_in, ws.rows_in);
  CudaStatus status = launch_status("prepare_keys_kernel");
  if (!status.ok()) return status;
  size_t cub_bytes = ws.cub_bytes;
  status = cuda_status(cub::DeviceRadixSort::SortPairs(ws.cub_temp, cub_bytes, ws.keys_in,
                                                       ws.keys_out, ws.rows_in, ws.rows_out, n, 0,
                                                       end_bit_for(num_classes), stream),
                       "cub::DeviceRadixSort::SortPairs");
  if (!status.ok()) return status;
  class_bounds_kernel<<<grid_for(num_classes + 1), kBlockThreads, 0, stream>>>(
      ws.keys_out, n, num_classes, ws.class_begin, ws.chunk_count);
  status = launch_status("class_bounds_kernel");
  if (!status.ok()) return status;
  cub_bytes = ws.cub_bytes;
  status = cuda_status(cub::DeviceScan::ExclusiveSum(ws.cub_temp, cub_bytes, ws.chunk_count,
                                                     ws.chunk_begin,
                                                     static_cast<int>(num_classes + 1), stream),
                       "cub::DeviceScan::ExclusiveSum");
  if (!status.ok()) return status;
  const int tile = lanes_for(num_categories, kMaxColumnTile);
  const unsigned column_tiles = static_cast<unsigned>(ceil_div(num_categories, tile));
  chunk_sums_kernel<scalar_t><<<dim3(static_cast<unsigned>(ws.max_chunks), column_tiles),
                                kBlockThreads, 0, stream>>>(
      probs, row_weight, ws.rows_out, ws.class_begin, ws.chunk_begin, num_classes,
      num_categories, eps, tile, ws.partial);
  status = launch_status("chunk_sums_kernel");
  if (!status.ok()) return status;
  class_table_kernel<scalar_t><<<dim3(static_cast<unsigned>(num_classes), column_tiles),
                                 kBlockThreads, 0, stream>>>(ws.partial, ws.class_begin,
                                                             ws.chunk_begin, num_categories, tile,
                                                             ws.table, rounded);
  return launch_status("class_table_kernel");
}

}  // namespace

std::size_t class_pairwise_kl_cuda_workspace_bytes(int64_t num_samples, int64_t num_categories,
                                                   int64_t num_classes, std::size_t) {
  return Workspace(nullptr, num_samples, num_categories, num_classes).total_bytes;
}

template <typename scalar_t>
CudaStatus class_pairwise_kl_forward_cuda(const ClassPairwiseKlParams<scalar_t>& p,
                                          void* stream_ptr) {
  if (p.num_samples == 0) return {};
  const cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  const Workspace ws(p.workspace, p.num_samples, p.num_categories, p.num_classes);
  if (!ws.status.ok()) return ws.status;
  const scalar_t eps = static_cast<scalar_t>(p.eps);
  const CudaStatus means = class_means<scalar_t>(ws, p.probs, nullptr, p.labels, p.num_samples,
                                                 p.num_categories, p.num_classes, eps,
                                                 p.class_mean_log, stream);
  if (!means.ok()) return means;
  const int group = lanes_for(p.num_categories, 32);
  forward_rows_kernel<scalar_t><<<grid_for(p.num_samples * group), kBlockThreads, 0, stream>>>(
      p.probs, p.labels, ws.table, p.num_samples, p.num_categories, p.num_classes, eps, group,
      p.kl);
  return launch_status("forward_rows_kernel");
}

template <typename scalar_t>
CudaStatus class_pairwise_kl_backward_cuda(const ClassPairwiseKlBackwardParams<scalar_t>& p,
                                           void* stream_ptr) {
  if (p.num_samples == 0) return {};
  const cudaStream_t stream = static_cast<cudaStream_t>(stream_ptr);
  const Workspace ws(p.workspace, p.num_samples, p.num_categories, p.num_classes);
  if (!ws.status.ok()) return ws.status;
  const scalar_t eps = static_cast<scalar_t>(p.eps);
  const CudaStatus means = class_means<scalar_t>(ws, p.probs, p.grad_kl, p.labels,
                                                 p.num_samples, p.num_categories, p.num_classes,
                                                 eps, static_cast<scalar_t*>(nullptr), stream);
  if (!means.ok()) return means;
  const int group = lanes_for(p.num_categories, 32);
  backward_kernel<scalar_t><<<grid_for(p.num_samples * group), kBlockThreads, 0, stream>>>(
      p.grad_kl, p.probs, p.labels, p.class_mean_log, ws.table, p.num_samples, p.num_categories,
      p.num_classes, eps, group, p.grad_probs);
  return launch_status("backward_kernel");
}

template CudaStatus class_pairwise_kl_forward_cuda<float>(const ClassPairwiseKlParams<float>&,
                                                          void*);
template CudaStatus class_pairwise_kl_forward_cuda<double>(const ClassPairwiseKlParams<double>&,
                                                           void*);
template CudaStatus class_pairwise_kl_backward_cuda<float>(
    const ClassPairwiseKlBackwardParams<float>&, void*);
template CudaStatus class_pairwise_kl_backward_cuda<double>(
    const ClassPairwiseKlBackwardParams<double>&, void*);

}  // namespace gmk

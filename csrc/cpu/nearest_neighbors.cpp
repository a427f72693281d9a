// CPU kernel of nearest_neighbors (math and the tie rule in csrc/kernels/nearest_neighbors.h).
//
// Threads own tiles of kQueryTile query rows and sweep all points in tiles of kPointTile rows.
// A tile's dot products are computed in chunks of kChunk coordinates by a register-blocked
// micro kernel (kRows query rows x kCols point rows, kDotLanes lanes each), whose lane
// accumulators wait in a per-thread buffer between chunks; when the tile is complete each pair's
// lanes are reduced, its squared distance formed, and the query row's running top-k and ball
// count updated. Memory is O((Q + M) D) plus per-thread buffers, never Q x M.
// Every dot product, squared norms included, is evaluated by the same micro kernel in the same
// order (lane partial sums by fused multiply-adds, then one fixed tree), whatever the tile or
// pass: that is what makes ties exact. Rows past the end of a tile repeat its last row (their
// results are discarded), so no pair is ever computed by other code.
// Each output row is written by one thread in a fixed order: results do not depend on the
// thread count.
#include "../kernels/nearest_neighbors.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace gmk {
namespace {

// a * b + c with one rounding where the target has FMA; the build turns implicit contraction
// off, so every dot product is this exact sequence of operations.
template <typename T>
inline T multiply_add(T a, T b, T c) {
#ifdef __FMA__
  return std::fma(a, b, c);
#else
  return a * b + c;
#endif
}

constexpr int kRows = 3;                 // query rows per micro block
constexpr int kCols = 4;                 // point rows per micro block: 12 vector accumulators
constexpr int64_t kQueryTile = 48;       // query rows per work item (a multiple of kRows)
constexpr int64_t kPointTile = 64;       // point rows per tile (a multiple of kCols)
constexpr int64_t kChunkBytes = 1024;    // coordinates per chunk: a micro block's rows stay in L1
static_assert(kQueryTile % kRows == 0 && kPointTile % kCols == 0, "tiles hold whole blocks");
// Below about this many multiply-adds (Q M D) one thread does it all: waking a team costs more.
constexpr int64_t kMinParallelWork = int64_t(1) << 22;

template <typename T>
constexpr int64_t chunk_length() {
  return kChunkBytes / static_cast<int64_t>(sizeof(T));
}
static_assert(kChunkBytes % 32 == 0, "a chunk holds whole lane groups");

// Rows with their coordinates padded by zeros to a multiple of the lanes (adding 0 * 0 leaves
// a lane sum unchanged, so padding never changes a result).
template <typename T>
struct PaddedRows {
  const T* data = nullptr;
  int64_t count = 0, stride = 0;
  std::vector<T> storage;

  PaddedRows(const T* rows, int64_t num_rows, int64_t dim) : count(num_rows) {
    constexpr int64_t L = kDotLanes<T>;
    stride = (dim + L - 1) / L * L;
    if (stride == dim) {
      data = rows;
      return;
    }
    storage.assign(static_cast<size_t>(num_rows * stride), T(0));
    for (int64_t r = 0; r < num_rows; ++r)
      std::copy(rows + r * dim, rows + (r + 1) * dim, storage.begin() + r * stride);
    data = storage.data();
  }

  const T* row(int64_t r) const { return data + std::min(r, count - 1) * stride; }
};

// The fixed tree over the lanes of one accumulator.
template <typename T>
inline T reduce_lanes(const T* lanes) {
  constexpr int L = kDotLanes<T>;
  T t[L];
  for (int l = 0; l < L; ++l) t[l] = lanes[l];
  for (int width = L / 2; width >= 1; width /= 2)
    for (int l = 0; l < width; ++l) t[l] = t[l] + t[l + width];
  return t[0];
}

// acc[(r * kCols + c) * L + l] += sum over the chunk of a_r[x] * b_c[x] for x = l mod L, in
// increasing x; a[r], b[c] point at the chunk's first coordinate, `length` is a multiple of L.
template <typename T>
__attribute__((always_inline)) inline void micro_block(const T* const* a, const T* const* b,
                                                       int64_t length, T* acc) {
  constexpr int L = kDotLanes<T>;
  T sums[kRows][kCols][L];
  for (int r = 0; r < kRows; ++r)
    for (int c = 0; c < kCols; ++c)
      for (int l = 0; l < L; ++l) sums[r][c][l] = acc[(r * kCols + c) * L + l];
  for (int64_t x = 0; x < length; x += L) {
    for (int r = 0; r < kRows; ++r)
      for (int c = 0; c < kCols; ++c)
        for (int l = 0; l < L; ++l)
          sums[r][c][l] = multiply_add(a[r][x + l], b[c][x + l], sums[r][c][l]);
  }
  for (int r = 0; r < kRows; ++r)
    for (int c = 0; c < kCols; ++c)
      for (int l = 0; l < L; ++l) acc[(r * kCols + c) * L + l] = sums[r][c][l];
}

// <a_r, b_c> for the micro block's rows (chunk after chunk, as the tiles do), into dots[r][c].
template <typename T>
void block_dots(const T* const* a, const T* const* b, int64_t stride, T (*dots)[kCols]) {
  constexpr int L = kDotLanes<T>;
  T acc[kRows * kCols * L] = {};
  for (int64_t x0 = 0; x0 < stride; x0 += chunk_length<T>()) {
    const T* a_chunk[kRows];
    const T* b_chunk[kCols];
    for (int r = 0; r < kRows; ++r) a_chunk[r] = a[r] + x0;
    for (int c = 0; c < kCols; ++c) b_chunk[c] = b[c] + x0;
    micro_block(a_chunk, b_chunk, std::min(chunk_length<T>(), stride - x0), acc);
  }
  for (int r = 0; r < kRows; ++r)
    for (int c = 0; c < kCols; ++c) dots[r][c] = reduce_lanes(acc + (r * kCols + c) * L);
}

// ||row||^2 of every row, by the micro kernel (so that it equals the row's dot with itself
// bit for bit).
template <typename T>
std::vector<T> squared_norms(const PaddedRows<T>& rows, int num_threads) {
  std::vector<T> norms(static_cast<size_t>(rows.count));
#pragma omp parallel for num_threads(num_threads) schedule(static) if (rows.count * rows.stride > 65536)
  for (int64_t i = 0; i < rows.count; ++i) {
    const T* a[kRows];
    const T* b[kCols];
    for (auto& p : a) p = rows.row(i);
    for (auto& p : b) p = rows.row(i);
    T dots[kRows][kCols];
    block_dots(a, b, rows.stride, dots);
    norms[i] = dots[0][0];
  }
  return norms;
}

// The k smallest squared distances seen so far, ascending, +inf where none yet.
template <typename T>
inline void insert_top_k(T* best, int64_t k, T value) {
  if (!(value < best[k - 1])) return;
  int64_t position = k - 1;
  while (position > 0 && best[position - 1] > value) {
    best[position] = best[position - 1];
    --position;
  }
  best[position] = value;
}

template <typename T>
void query_tile(const NearestNeighborsParams<T>& p, const PaddedRows<T>& query,
                const PaddedRows<T>& points, const std::vector<T>& query_norms,
                const std::vector<T>& point_norms, int64_t q0, std::vector<T>& acc,
                std::vector<T>& best, std::vector<int64_t>& within) {
  constexpr int L = kDotLanes<T>;
  const int64_t rows = std::min(kQueryTile, p.num_queries - q0);
  const int64_t row_blocks = (rows + kRows - 1) / kRows;
  std::fill(best.begin(), best.begin() + rows * p.k, std::numeric_limits<T>::infinity());
  std::fill(within.begin(), within.begin() + rows, int64_t(0));
  for (int64_t p0 = 0; p0 < p.num_points; p0 += kPointTile) {
    const int64_t cols = std::min(kPointTile, p.num_points - p0);
    const int64_t col_blocks = (cols + kCols - 1) / kCols;
    std::fill(acc.begin(), acc.begin() + row_blocks * col_blocks * kRows * kCols * L, T(0));
    for (int64_t x0 = 0; x0 < query.stride; x0 += chunk_length<T>()) {
      const int64_t length = std::min(chunk_length<T>(), query.stride - x0);
      for (int64_t cb = 0; cb < col_blocks; ++cb) {
        const T* b[kCols];
        for (int c = 0; c < kCols; ++c) b[c] = points.row(p0 + cb * kCols + c) + x0;
        for (int64_t rb = 0; rb < row_blocks; ++rb) {
          const T* a[kRows];
          for (int r = 0; r < kRows; ++r) a[r] = query.row(q0 + rb * kRows + r) + x0;
          micro_block(a, b, length, acc.data() + (rb * col_blocks + cb) * kRows * kCols * L);
        }
      }
    }
    for (int64_t i = 0; i < rows; ++i) {
      const int64_t q = q0 + i, rb = i / kRows, r = i % kRows;
      T* row_best = best.data() + i * p.k;
      int64_t count = 0;
      for (int64_t j = 0; j < cols; ++j) {
        const int64_t point = p0 + j, cb = j / kCols, c = j % kCols;
        if (p.exclude_self && point == q) continue;
        const T dot = reduce_lanes(acc.data() + ((rb * col_blocks + cb) * kRows * kCols +
                                                 r * kCols + c) * L);
        // The one formula of a pair's squared distance (point first; the sum commutes exactly).
        const T squared = std::max((point_norms[point] + query_norms[q]) - T(2) * dot, T(0));
        insert_top_k(row_best, p.k, squared);
        if (p.radii != nullptr && std::sqrt(squared) <= p.radii[point]) ++count;
      }
      within[i] += count;
    }
  }
  for (int64_t i = 0; i < rows; ++i) {
    p.kth_distance[q0 + i] = std::sqrt(best[i * p.k + p.k - 1]);
    p.within[q0 + i] = within[i];
  }
}

}  // namespace

template <typename T>
void nearest_neighbors_cpu(const NearestNeighborsParams<T>& p) {
  constexpr int L = kDotLanes<T>;
  const PaddedRows<T> query(p.query, p.num_queries, p.dim);
  const PaddedRows<T> points(p.points, p.num_points, p.dim);
  const std::vector<T> query_norms = squared_norms(query, p.num_threads);
  const std::vector<T> point_norms = squared_norms(points, p.num_threads);
  const int64_t tiles = (p.num_queries + kQueryTile - 1) / kQueryTile;
  const bool parallel = p.num_queries * p.num_points * std::max<int64_t>(p.dim, 1) >= kMinParallelWork;
#pragma omp parallel num_threads(p.num_threads) if (parallel)
  {
    std::vector<T> acc(static_cast<size_t>(kQueryTile * kPointTile * L));
    std::vector<T> best(static_cast<size_t>(kQueryTile * p.k));
    std::vector<int64_t> within(static_cast<size_t>(kQueryTile));
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < tiles; ++t)
      query_tile(p, query, points, query_norms, point_norms, t * kQueryTile, acc, best, within);
  }
}

template void nearest_neighbors_cpu<float>(const NearestNeighborsParams<float>&);
template void nearest_neighbors_cpu<double>(const NearestNeighborsParams<double>&);

}  // namespace gmk

// CPU kernel of nearest_neighbors (math and the tie rule in csrc/kernels/nearest_neighbors.h).
//
// The dot products <p_j, q_i> are a GEMM in the usual register-blocked form: both sets are
// packed once into panels (kRows query rows, kCols points; coordinate-major), and a micro kernel
// keeps a kRows x kCols block of dot products in vector registers, adding one coordinate at a
// time (a broadcast query coordinate times a vector of kCols point coordinates). Threads own
// tiles of kQueryTile query rows and sweep the points in tiles of kPointTile, in chunks of
// kChunk coordinates (the tile's panels stay in L1/L2 while its accumulators wait in a
// per-thread buffer). When a tile is complete each pair's squared distance is formed and the
// query row's running top-k and ball count updated, and each point's count of query balls (in a
// per-thread array of M counts, summed at the end). Memory: the packed copies, O((Q + M) D),
// plus per-thread buffers; never Q x M.
//
// Exact ties: every dot product, and every squared norm, is the chain s = fma(x_d, y_d, s) over
// d = 0, 1, ..., D-1 from s = 0 (std::fma and the vector FMA round identically), whichever
// register lane, tile, chunk or pass computes it. So ||a||^2 is bit for bit <a, a>, a duplicate
// of a point is at distance exactly 0, and the pair that defines a radius lies exactly on it.
// Each output row is written by one thread in a fixed order: results do not depend on the
// thread count.
#include "../kernels/nearest_neighbors.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#if defined(__AVX__) && defined(__FMA__)
#include <immintrin.h>
#endif

namespace gmk {
namespace {

// a * b + c with one rounding where the target has FMA; the build turns implicit contraction
// off, so every dot product is exactly this chain of operations.
template <typename T>
inline T multiply_add(T a, T b, T c) {
#ifdef __FMA__
  return std::fma(a, b, c);
#else
  return a * b + c;
#endif
}

// One vector of kDotLanes lanes: a 32-byte register where the target has AVX and FMA, else an
// array (the compiler may vectorize it). Lane by lane it is multiply_add either way.
template <typename T>
struct Lanes {
  T v[kDotLanes<T>];
  static Lanes load(const T* p) {
    Lanes out;
    for (int l = 0; l < kDotLanes<T>; ++l) out.v[l] = p[l];
    return out;
  }
  static Lanes broadcast(const T* p) {
    Lanes out;
    for (int l = 0; l < kDotLanes<T>; ++l) out.v[l] = *p;
    return out;
  }
  void store(T* p) const {
    for (int l = 0; l < kDotLanes<T>; ++l) p[l] = v[l];
  }
  static Lanes multiply_add(const Lanes& a, const Lanes& b, const Lanes& c) {
    Lanes out;
    for (int l = 0; l < kDotLanes<T>; ++l) out.v[l] = gmk::multiply_add(a.v[l], b.v[l], c.v[l]);
    return out;
  }
};
#if defined(__AVX__) && defined(__FMA__)
template <>
struct Lanes<float> {
  __m256 v;
  static Lanes load(const float* p) { return {_mm256_loadu_ps(p)}; }
  static Lanes broadcast(const float* p) { return {_mm256_broadcast_ss(p)}; }
  void store(float* p) const { _mm256_storeu_ps(p, v); }
  static Lanes multiply_add(const Lanes& a, const Lanes& b, const Lanes& c) {
    return {_mm256_fmadd_ps(a.v, b.v, c.v)};
  }
};
template <>
struct Lanes<double> {
  __m256d v;
  static Lanes load(const double* p) { return {_mm256_loadu_pd(p)}; }
  static Lanes broadcast(const double* p) { return {_mm256_broadcast_sd(p)}; }
  void store(double* p) const { _mm256_storeu_pd(p, v); }
  static Lanes multiply_add(const Lanes& a, const Lanes& b, const Lanes& c) {
    return {_mm256_fmadd_pd(a.v, b.v, c.v)};
  }
};
#endif

// Micro block: kRows query rows x kVectors vectors of points: 12 accumulators, 2 point vectors
// and 1 broadcast, within the 16 vector registers of AVX2.
constexpr int kRows = 6;
constexpr int kVectors = 2;
template <typename T>
constexpr int64_t kCols = kVectors * kDotLanes<T>;   // points per panel: 16 floats, 8 doubles
constexpr int64_t kQueryTile = 8 * kRows;            // query rows per work item
constexpr int64_t kPointTile = 128;                  // points per tile (whole panels)
constexpr int64_t kChunk = 256;                      // coordinates per pass over a tile
static_assert(kPointTile % 16 == 0, "a point tile holds whole panels");
// Below about this many multiply-adds (Q M D) one thread does it all: waking a team costs more.
constexpr int64_t kMinParallelWork = int64_t(1) << 22;

// Rows packed in panels of `width` rows, coordinate-major: element (row, d) at
// panel(row / width)[d * width + row % width]. Rows past the end are zeros (their results are
// never read).
template <typename T>
struct Panels {
  int64_t width, dim, count;
  std::vector<T> data;

  Panels(const T* rows, int64_t num_rows, int64_t dim_, int64_t width_, int num_threads)
      : width(width_), dim(dim_), count((num_rows + width_ - 1) / width_) {
    data.assign(static_cast<size_t>(count * width * dim), T(0));
#pragma omp parallel for num_threads(num_threads) schedule(static) if (num_rows * dim > 65536)
    for (int64_t panel = 0; panel < count; ++panel) {
      T* out = data.data() + panel * width * dim;
      const int64_t first = panel * width, last = std::min(first + width, num_rows);
      for (int64_t row = first; row < last; ++row)
        for (int64_t d = 0; d < dim; ++d) out[d * width + (row - first)] = rows[row * dim + d];
    }
  }

  const T* panel(int64_t index, int64_t d0) const { return data.data() + (index * dim + d0) * width; }
};

// acc[r][c] (kRows x kCols, row-major) += sum over d of a[d][r] * b[d][c] for `length`
// coordinates of an A panel (kRows wide) and a B panel (kCols wide), one coordinate after another.
template <typename T>
__attribute__((always_inline)) inline void micro_block(const T* a, const T* b, int64_t length,
                                                       T* acc) {
  constexpr int L = kDotLanes<T>;
  Lanes<T> sums[kRows][kVectors];
  for (int r = 0; r < kRows; ++r)
    for (int v = 0; v < kVectors; ++v) sums[r][v] = Lanes<T>::load(acc + r * kCols<T> + v * L);
  for (int64_t d = 0; d < length; ++d) {
    const Lanes<T> column0 = Lanes<T>::load(b + d * kCols<T>);
    const Lanes<T> column1 = Lanes<T>::load(b + d * kCols<T> + L);
    for (int r = 0; r < kRows; ++r) {
      const Lanes<T> row = Lanes<T>::broadcast(a + d * kRows + r);
      sums[r][0] = Lanes<T>::multiply_add(row, column0, sums[r][0]);
      sums[r][1] = Lanes<T>::multiply_add(row, column1, sums[r][1]);
    }
  }
  for (int r = 0; r < kRows; ++r)
    for (int v = 0; v < kVectors; ++v) sums[r][v].store(acc + r * kCols<T> + v * L);
}
static_assert(kVectors == 2, "micro_block names its two point vectors");

// ||row||^2 = the chain fma(x_d, x_d, s) over d, as micro_block computes <row, row>.
template <typename T>
std::vector<T> squared_norms(const T* rows, int64_t num_rows, int64_t dim, int num_threads) {
  std::vector<T> norms(static_cast<size_t>(num_rows));
#pragma omp parallel for num_threads(num_threads) schedule(static) if (num_rows * dim > 65536)
  for (int64_t i = 0; i < num_rows; ++i) {
    T sum = T(0);
    for (int64_t d = 0; d < dim; ++d) sum = multiply_add(rows[i * dim + d], rows[i * dim + d], sum);
    norms[i] = sum;
  }
  return norms;
}

// For each radius r the largest squared distance t with sqrt(t) <= r, so that the ball test
// sqrt(squared) <= r is squared <= t exactly (sqrt is correctly rounded, hence monotone), without
// a square root per pair. A negative radius contains nothing, an infinite one everything.
template <typename T>
std::vector<T> squared_thresholds(const T* radii, int64_t count) {
  constexpr T infinity = std::numeric_limits<T>::infinity();
  std::vector<T> thresholds(static_cast<size_t>(count));
  for (int64_t j = 0; j < count; ++j) {
    const T r = radii[j];
    if (r < T(0)) {
      thresholds[j] = -infinity;
      continue;
    }
    T t = r * r;
    while (std::sqrt(t) > r) t = std::nextafter(t, -infinity);
    while (t < infinity && std::sqrt(std::nextafter(t, infinity)) <= r) t = std::nextafter(t, infinity);
    thresholds[j] = t;
  }
  return thresholds;
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
struct Workspace {
  std::vector<T> acc, best;
  std::vector<int64_t> within, points_within;
  Workspace(int64_t k, int64_t num_points, bool count_points)
      : acc(static_cast<size_t>(kQueryTile * kPointTile)),
        best(static_cast<size_t>(kQueryTile * k)),
        within(static_cast<size_t>(kQueryTile)),
        points_within(count_points ? static_cast<size_t>(num_points) : 0) {}
};

template <typename T>
void query_tile(const NearestNeighborsParams<T>& p, const Panels<T>& query,
                const Panels<T>& points, const std::vector<T>& query_norms,
                const std::vector<T>& point_norms, const std::vector<T>& thresholds,
                const std::vector<T>& query_thresholds, int64_t q0, Workspace<T>& work) {
  constexpr int64_t C = kCols<T>;
  const int64_t rows = std::min(kQueryTile, p.num_queries - q0);
  const int64_t row_blocks = (rows + kRows - 1) / kRows;
  std::fill(work.best.begin(), work.best.begin() + rows * p.k, std::numeric_limits<T>::infinity());
  std::fill(work.within.begin(), work.within.begin() + rows, int64_t(0));
  // acc[(rb * panels + pb) * kRows * C + r * C + c]: the pair (q0 + rb kRows + r, p0 + pb C + c).
  for (int64_t p0 = 0; p0 < p.num_points; p0 += kPointTile) {
    const int64_t cols = std::min(kPointTile, p.num_points - p0);
    const int64_t panels = (cols + C - 1) / C;
    std::fill(work.acc.begin(), work.acc.begin() + row_blocks * panels * kRows * C, T(0));
    for (int64_t d0 = 0; d0 < p.dim; d0 += kChunk) {
      const int64_t length = std::min(kChunk, p.dim - d0);
      for (int64_t pb = 0; pb < panels; ++pb) {
        const T* b = points.panel(p0 / C + pb, d0);
        for (int64_t rb = 0; rb < row_blocks; ++rb)
          micro_block(query.panel(q0 / kRows + rb, d0), b, length,
                      work.acc.data() + (rb * panels + pb) * kRows * C);
      }
    }
    for (int64_t i = 0; i < rows; ++i) {
      const int64_t q = q0 + i;
      const T* acc_row = work.acc.data() + (i / kRows) * panels * kRows * C + (i % kRows) * C;
      T* row_best = work.best.data() + i * p.k;
      const T query_threshold = p.query_radii != nullptr ? query_thresholds[q] : T(0);
      int64_t count = 0;
      for (int64_t j = 0; j < cols; ++j) {
        const int64_t point = p0 + j;
        if (p.exclude_self && point == q) continue;
        const T dot = acc_row[(j / C) * kRows * C + j % C];
        // The one formula of a pair's squared distance (point first; the sum commutes exactly).
        const T squared = std::max((point_norms[point] + query_norms[q]) - T(2) * dot, T(0));
        insert_top_k(row_best, p.k, squared);
        if (p.radii != nullptr && squared <= thresholds[point]) ++count;   // dist <= radius
        if (p.query_radii != nullptr && squared <= query_threshold) ++work.points_within[point];
      }
      work.within[i] += count;
    }
  }
  for (int64_t i = 0; i < rows; ++i) {
    p.kth_distance[q0 + i] = std::sqrt(work.best[i * p.k + p.k - 1]);
    p.within[q0 + i] = work.within[i];
  }
}

}  // namespace

template <typename T>
void nearest_neighbors_cpu(const NearestNeighborsParams<T>& p) {
  static_assert(kQueryTile % kRows == 0 && kPointTile % kCols<T> == 0, "tiles hold whole panels");
  const bool parallel =
      p.num_queries * p.num_points * std::max<int64_t>(p.dim, 1) >= kMinParallelWork;
  const int threads = parallel ? p.num_threads : 1;
  const Panels<T> query(p.query, p.num_queries, p.dim, kRows, threads);
  const Panels<T> points(p.points, p.num_points, p.dim, kCols<T>, threads);
  const std::vector<T> query_norms = squared_norms(p.query, p.num_queries, p.dim, threads);
  const std::vector<T> point_norms = squared_norms(p.points, p.num_points, p.dim, threads);
  const std::vector<T> thresholds =
      p.radii != nullptr ? squared_thresholds(p.radii, p.num_points) : std::vector<T>();
  const std::vector<T> query_thresholds = p.query_radii != nullptr
      ? squared_thresholds(p.query_radii, p.num_queries) : std::vector<T>();
  const int64_t tiles = (p.num_queries + kQueryTile - 1) / kQueryTile;
  std::fill(p.points_within, p.points_within + p.num_points, int64_t(0));
#pragma omp parallel num_threads(threads) if (parallel)
  {
    Workspace<T> work(p.k, p.num_points, p.query_radii != nullptr);
#pragma omp for schedule(dynamic, 1) nowait
    for (int64_t t = 0; t < tiles; ++t)
      query_tile(p, query, points, query_norms, point_norms, thresholds, query_thresholds,
                 t * kQueryTile, work);
    if (p.query_radii != nullptr) {
#pragma omp critical(nearest_neighbors_points_within)
      for (int64_t j = 0; j < p.num_points; ++j) p.points_within[j] += work.points_within[j];
    }
  }
}

template void nearest_neighbors_cpu<float>(const NearestNeighborsParams<float>&);
template void nearest_neighbors_cpu<double>(const NearestNeighborsParams<double>&);

}  // namespace gmk

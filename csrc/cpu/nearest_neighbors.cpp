// CPU kernel of nearest_neighbors (math and the tie rule in csrc/kernels/nearest_neighbors.h).
//
// The dot products <p_j, q_i> are a GEMM in the usual register-blocked form: each tile of both
// sets is packed into panels (kRows query rows, kCols points; coordinate-major) by the thread
// that uses it, and a micro kernel
// keeps a kRows x kCols block of dot products in vector registers, adding one coordinate at a
// time (a broadcast query coordinate times a vector of kCols point coordinates). Threads own
// tiles of kQueryTile query rows and sweep the points in tiles of kPointTile, in chunks of
// kChunk coordinates (the tile's panels stay in L1/L2 while its accumulators wait in a
// per-thread buffer). When a tile is complete each pair's squared distance is formed and the
// query row's running top-k and ball count updated, and each point's count of query balls (in a
// per-thread array of M counts, summed at the end). Memory: per-thread tiles and M counts;
// never Q x M.
//
// Exact ties: every dot product, and every squared norm, is the chain s = fma(x_d, y_d, s) over
// d = 0, 1, ..., D-1 from s = 0 (std::fma and the vector FMA round identically), whichever
// register lane, tile, chunk or pass computes it. So ||a||^2 is bit for bit <a, a>, a duplicate
// of a point is at distance exactly 0, and the pair that defines a radius lies exactly on it.
// Each output row is written by one thread in a fixed order: results do not depend on the
// thread count.
#include "../kernels/nearest_neighbors.h"
#include "multiply_add.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#if defined(__AVX__) && defined(__FMA__)
#include <immintrin.h>
#endif

namespace gmk {
namespace {

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

// Rows [first, first + tile_rows) of `rows` packed in panels of `width` rows, coordinate-major:
// element (first + p width + r, d) at out[(p dim + d) width + r]; and their squared norms, the
// chain fma(x_d, x_d, s) over d, as micro_block computes <row, row>. Rows past `num_rows` are
// zeros (their results are never read).
template <typename T>
void pack_tile(const T* rows, int64_t num_rows, int64_t dim, int64_t first, int64_t tile_rows,
               int64_t width, T* out, T* norms) {
  for (int64_t i = 0; i < tile_rows; ++i) {
    const int64_t row = first + i, panel = i / width, lane = i % width;
    T* column = out + panel * dim * width + lane;
    T sum = T(0);
    if (row < num_rows) {
      const T* source = rows + row * dim;
      for (int64_t d = 0; d < dim; ++d) {
        column[d * width] = source[d];
        sum = multiply_add(source[d], source[d], sum);
      }
    } else {
      for (int64_t d = 0; d < dim; ++d) column[d * width] = T(0);
    }
    norms[i] = sum;
  }
}

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
  std::vector<T> query_panels, point_panels, query_norms, point_norms, acc, best, squared;
  std::vector<int64_t> within, points_within;
  Workspace(int64_t k, int64_t dim, int64_t num_points, bool count_points)
      : query_panels(static_cast<size_t>(kQueryTile * dim)),
        point_panels(static_cast<size_t>(kPointTile * dim)),
        query_norms(static_cast<size_t>(kQueryTile)),
        point_norms(static_cast<size_t>(kPointTile)),
        acc(static_cast<size_t>(kQueryTile * kPointTile)),
        best(static_cast<size_t>(kQueryTile * k)),
        squared(static_cast<size_t>(kPointTile)),
        within(static_cast<size_t>(kQueryTile)),
        points_within(count_points ? static_cast<size_t>(num_points) : 0) {}
};

template <typename T>
void query_tile(const NearestNeighborsParams<T>& p, const std::vector<T>& thresholds,
                const std::vector<T>& query_thresholds, int64_t q0, Workspace<T>& work) {
  constexpr int64_t C = kCols<T>;
  const int64_t rows = std::min(kQueryTile, p.num_queries - q0);
  const int64_t row_blocks = (rows + kRows - 1) / kRows;
  pack_tile(p.query, p.num_queries, p.dim, q0, row_blocks * kRows, kRows,
            work.query_panels.data(), work.query_norms.data());
  std::fill(work.best.begin(), work.best.begin() + rows * p.k, std::numeric_limits<T>::infinity());
  std::fill(work.within.begin(), work.within.begin() + rows, int64_t(0));
  // acc[(rb * panels + pb) * kRows * C + r * C + c]: the pair (q0 + rb kRows + r, p0 + pb C + c).
  for (int64_t p0 = 0; p0 < p.num_points; p0 += kPointTile) {
    const int64_t cols = std::min(kPointTile, p.num_points - p0);
    const int64_t panels = (cols + C - 1) / C;
    pack_tile(p.points, p.num_points, p.dim, p0, panels * C, C, work.point_panels.data(),
              work.point_norms.data());
    std::fill(work.acc.begin(), work.acc.begin() + row_blocks * panels * kRows * C, T(0));
    for (int64_t d0 = 0; d0 < p.dim; d0 += kChunk) {
      const int64_t length = std::min(kChunk, p.dim - d0);
      for (int64_t pb = 0; pb < panels; ++pb) {
        const T* b = work.point_panels.data() + (pb * p.dim + d0) * C;
        for (int64_t rb = 0; rb < row_blocks; ++rb)
          micro_block(work.query_panels.data() + (rb * p.dim + d0) * kRows, b, length,
                      work.acc.data() + (rb * panels + pb) * kRows * C);
      }
    }
    // Per query row: the tile's squared distances (NaN for the excluded self pair: it then
    // passes no comparison), then the counts and the top-k, each loop simple enough to
    // vectorize or to skip most pairs at one comparison.
    for (int64_t i = 0; i < rows; ++i) {
      const int64_t q = q0 + i;
      const T* acc_row = work.acc.data() + (i / kRows) * panels * kRows * C + (i % kRows) * C;
      T* squared = work.squared.data();
      for (int64_t pb = 0; pb < panels; ++pb)
        for (int64_t c = 0; c < C; ++c) {
          const int64_t j = pb * C + c;
          // The one formula of a pair's squared distance (the sum commutes exactly, so it is
          // symmetric in the two rows).
          squared[j] = std::max((work.point_norms[j] + work.query_norms[i]) -
                                    T(2) * acc_row[pb * kRows * C + c],
                                T(0));
        }
      if (p.exclude_self && q >= p0 && q < p0 + cols)
        squared[q - p0] = std::numeric_limits<T>::quiet_NaN();
      if (p.radii != nullptr) {
        const T* threshold = thresholds.data() + p0;
        int64_t count = 0;
        for (int64_t j = 0; j < cols; ++j) count += squared[j] <= threshold[j];   // dist <= radius
        work.within[i] += count;
      }
      if (p.query_radii != nullptr) {
        const T threshold = query_thresholds[q];
        int64_t* counts = work.points_within.data() + p0;
        for (int64_t j = 0; j < cols; ++j) counts[j] += squared[j] <= threshold;
      }
      T* row_best = work.best.data() + i * p.k;
      for (int64_t j = 0; j < cols; ++j)
        if (squared[j] < row_best[p.k - 1]) insert_top_k(row_best, p.k, squared[j]);
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
  const std::vector<T> thresholds =
      p.radii != nullptr ? squared_thresholds(p.radii, p.num_points) : std::vector<T>();
  const std::vector<T> query_thresholds = p.query_radii != nullptr
      ? squared_thresholds(p.query_radii, p.num_queries) : std::vector<T>();
  const int64_t tiles = (p.num_queries + kQueryTile - 1) / kQueryTile;
  std::fill(p.points_within, p.points_within + p.num_points, int64_t(0));
  // One parallel region (one barrier): each thread packs the tiles it uses itself, which costs
  // about 1 / kQueryTile of the arithmetic and leaves nothing to wait for on a busy machine.
#pragma omp parallel num_threads(p.num_threads) if (parallel)
  {
    Workspace<T> work(p.k, p.dim, p.num_points, p.query_radii != nullptr);
#pragma omp for schedule(dynamic, 1) nowait
    for (int64_t t = 0; t < tiles; ++t)
      query_tile(p, thresholds, query_thresholds, t * kQueryTile, work);
    if (p.query_radii != nullptr) {
#pragma omp critical(nearest_neighbors_points_within)
      for (int64_t j = 0; j < p.num_points; ++j) p.points_within[j] += work.points_within[j];
    }
  }
}

template void nearest_neighbors_cpu<float>(const NearestNeighborsParams<float>&);
template void nearest_neighbors_cpu<double>(const NearestNeighborsParams<double>&);

}  // namespace gmk

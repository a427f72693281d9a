// CPU kernel of nearest_neighbors (math and the tie rule in csrc/kernels/nearest_neighbors.h).
//
// The dot products <p_j, q_i> are a GEMM in the usual register-blocked form. A thread owns a
// tile of kPointTile points, packs it once into panels (kCols points, coordinate-major), and
// sweeps the query rows against it in blocks of kQueryTile, in chunks of kChunk coordinates (the
// packed tile stays in L2, the query rows of a micro block in L1, the block's accumulators wait
// in a per-thread buffer between chunks); a micro kernel keeps kRows x kCols dot products in
// vector registers, adding one coordinate at a time (a broadcast query coordinate, read in place,
// times a vector of kCols point coordinates). Each thread computes the query rows' squared norms
// once, a tile's when it packs it. When a block is complete each pair's squared distance is
// formed and the thread's running top-k and ball count of the query row updated (each thread
// keeps its own for every query row, Q (k + 2) numbers, merged by the last thread to finish: one
// parallel region, no barrier inside), and the tile's counts of query balls (its own outputs).
// A set against itself (exclude_self, the same rows, no radii: the k-NN radii of
// precision_recall) visits each unordered pair once and feeds both rows' top-k: half the work.
// Memory: the per-thread tile and row state; never Q x M.
//
// Exact ties: every dot product, and every squared norm, is the chain s = fma(x_d, y_d, s) over
// d = 0, 1, ..., D-1 from s = 0 (std::fma and the vector FMA round identically), whichever
// register lane, tile, chunk or pass computes it. So ||a||^2 is bit for bit <a, a>, a duplicate
// of a point is at distance exactly 0, and the pair that defines a radius lies exactly on it.
// The k smallest of the union of the threads' lists and the sum of their counts do not depend on
// which thread saw which pair: results do not depend on the thread count.
#include "../kernels/nearest_neighbors.h"
#include "multiply_add.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include <omp.h>

#if defined(__AVX__) && defined(__FMA__)
#include <immintrin.h>
#endif

namespace gmk {
namespace {

template <typename T>
constexpr T kZero = T(0);

// One vector register: 64 bytes where the target has AVX-512 (a core with a full-width FMA unit
// does twice the multiply-adds of 32-byte vectors per cycle, and 32 registers hold a larger
// micro block), 32 bytes with AVX2 and FMA, else an array (the compiler may vectorize it). Lane
// by lane it is multiply_add either way: the lane count changes which pairs share a register,
// never a pair's chain of operations.
#if defined(__AVX512F__)
constexpr int kVectorBytes = 64;
#else
constexpr int kVectorBytes = 32;
#endif
template <typename T>
constexpr int kLanes = kVectorBytes / static_cast<int>(sizeof(T));

template <typename T>
struct Lanes {
  T v[kLanes<T>];
  static Lanes load(const T* p) {
    Lanes out;
    for (int l = 0; l < kLanes<T>; ++l) out.v[l] = p[l];
    return out;
  }
  static Lanes broadcast(const T* p) {
    Lanes out;
    for (int l = 0; l < kLanes<T>; ++l) out.v[l] = *p;
    return out;
  }
  void store(T* p) const {
    for (int l = 0; l < kLanes<T>; ++l) p[l] = v[l];
  }
  static Lanes multiply_add(const Lanes& a, const Lanes& b, const Lanes& c) {
    Lanes out;
    for (int l = 0; l < kLanes<T>; ++l) out.v[l] = gmk::multiply_add(a.v[l], b.v[l], c.v[l]);
    return out;
  }
};
#if defined(__AVX512F__)
template <>
struct Lanes<float> {
  __m512 v;
  static Lanes load(const float* p) { return {_mm512_loadu_ps(p)}; }
  static Lanes broadcast(const float* p) { return {_mm512_set1_ps(*p)}; }
  void store(float* p) const { _mm512_storeu_ps(p, v); }
  static Lanes multiply_add(const Lanes& a, const Lanes& b, const Lanes& c) {
    return {_mm512_fmadd_ps(a.v, b.v, c.v)};
  }
};
template <>
struct Lanes<double> {
  __m512d v;
  static Lanes load(const double* p) { return {_mm512_loadu_pd(p)}; }
  static Lanes broadcast(const double* p) { return {_mm512_set1_pd(*p)}; }
  void store(double* p) const { _mm512_storeu_pd(p, v); }
  static Lanes multiply_add(const Lanes& a, const Lanes& b, const Lanes& c) {
    return {_mm512_fmadd_pd(a.v, b.v, c.v)};
  }
};
#elif defined(__AVX__) && defined(__FMA__)
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

// Micro block: kRows query rows x kVectors vectors of points, kRows kVectors accumulators plus
// kVectors point vectors and one broadcast in the vector registers (16 with AVX2, 32 with
// AVX-512). With AVX-512 the shapes 12 x 2, 8 x 3, 6 x 4 and 14 x 2 ran within 5 % of each other
// here (a Zen 5 core, D = 2048, N = 1000 and 2000), about 160-190 GFLOP/s per core.
#if defined(__AVX512F__)
constexpr int kRows = 12;
#else
constexpr int kRows = 6;
#endif
constexpr int kVectors = 2;
static_assert(kRows * kVectors + kVectors + 1 <= kVectorBytes / 2, "the micro block fits the registers");
template <typename T>
constexpr int64_t kCols = kVectors * kLanes<T>;      // points per panel
constexpr int64_t kQueryTile = 8 * kRows;            // query rows per accumulator block
constexpr int64_t kPointTile = 4 * kVectors * 16;    // points per work item (whole panels)
constexpr int64_t kChunk = 256;                      // coordinates per pass over a block
static_assert(kPointTile % kCols<float> == 0 && kPointTile % kCols<double> == 0,
              "a point tile holds whole panels");
// Below about this many multiply-adds (Q M D) one thread does it all: waking a team costs more.
constexpr int64_t kMinParallelWork = int64_t(1) << 22;

// Rows [first, first + tile_rows) of `rows` packed in panels of kCols rows, coordinate-major:
// element (first + p kCols + c, d) at out[(p dim + d) kCols + c]. Rows past `num_rows` are zeros
// (their results are never read).
template <typename T>
void pack_tile(const T* rows, int64_t num_rows, int64_t dim, int64_t first, int64_t tile_rows,
               T* out) {
  constexpr int64_t C = kCols<T>;
  for (int64_t panel = 0; panel < tile_rows / C; ++panel) {
    const T* source[C];
    for (int64_t c = 0; c < C; ++c) {
      const int64_t row = first + panel * C + c;
      source[c] = row < num_rows ? rows + row * dim : nullptr;
    }
    T* target = out + panel * dim * C;
    for (int64_t d = 0; d < dim; ++d)
      for (int64_t c = 0; c < C; ++c) target[d * C + c] = source[c] != nullptr ? source[c][d] : T(0);
  }
}

// The squared norms of the kCols rows of a packed panel, each the chain fma(x_d, x_d, s) over
// d = 0, 1, ..., D-1 from s = 0 that micro_block computes for <row, row>: one chain per lane.
template <typename T>
void panel_norms(const T* panel, int64_t dim, T* norms) {
  constexpr int64_t C = kCols<T>;
  constexpr int L = kLanes<T>;
  Lanes<T> sums[kVectors];
  for (int v = 0; v < kVectors; ++v) sums[v] = Lanes<T>::broadcast(&kZero<T>);
  for (int64_t d = 0; d < dim; ++d)
    for (int v = 0; v < kVectors; ++v) {
      const Lanes<T> x = Lanes<T>::load(panel + d * C + v * L);
      sums[v] = Lanes<T>::multiply_add(x, x, sums[v]);
    }
  for (int v = 0; v < kVectors; ++v) sums[v].store(norms + v * L);
}

// The squared norms of all rows (as panel_norms computes them).
template <typename T>
std::vector<T> squared_norms(const T* rows, int64_t num_rows, int64_t dim) {
  constexpr int64_t C = kCols<T>;
  std::vector<T> panel(static_cast<size_t>(C * std::max<int64_t>(dim, 1)));
  std::vector<T> norms(static_cast<size_t>((num_rows + C - 1) / C * C));
  for (int64_t first = 0; first < num_rows; first += C) {
    pack_tile(rows, num_rows, dim, first, C, panel.data());
    panel_norms(panel.data(), dim, norms.data() + first);
  }
  return norms;
}

// acc[r][c] (kRows x kCols, row-major) += sum over d of a[r][d] * b[d][c] for `length`
// coordinates of kRows query rows (row pointers, unpacked: one broadcast each) and a B panel
// (kCols wide, packed), one coordinate after another.
template <typename T>
__attribute__((always_inline)) inline void micro_block(const T* const* a, const T* b,
                                                       int64_t length, T* acc) {
  constexpr int L = kLanes<T>;
  const T* rows[kRows];
  Lanes<T> sums[kRows][kVectors];
  for (int r = 0; r < kRows; ++r) {
    rows[r] = a[r];
    for (int v = 0; v < kVectors; ++v) sums[r][v] = Lanes<T>::load(acc + r * kCols<T> + v * L);
  }
  for (int64_t d = 0; d < length; ++d) {
    Lanes<T> columns[kVectors];
    for (int v = 0; v < kVectors; ++v) columns[v] = Lanes<T>::load(b + d * kCols<T> + v * L);
    for (int r = 0; r < kRows; ++r) {
      const Lanes<T> row = Lanes<T>::broadcast(rows[r] + d);
      for (int v = 0; v < kVectors; ++v)
        sums[r][v] = Lanes<T>::multiply_add(row, columns[v], sums[r][v]);
    }
  }
  for (int r = 0; r < kRows; ++r)
    for (int v = 0; v < kVectors; ++v) sums[r][v].store(acc + r * kCols<T> + v * L);
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

// What one thread has seen of every query row: its running top-k (Q k) and ball count (Q).
template <typename T>
struct RowState {
  std::vector<T> query_norms, best;
  std::vector<int64_t> within;
};

template <typename T>
struct Workspace {
  std::vector<T> point_panels, point_norms, acc, squared;
  explicit Workspace(int64_t dim)
      : point_panels(static_cast<size_t>(kPointTile * std::max<int64_t>(dim, 1))),
        point_norms(static_cast<size_t>(kPointTile)),
        acc(static_cast<size_t>(kQueryTile * kPointTile)),
        squared(static_cast<size_t>(kPointTile)) {}
};

// One work item: the points [p0, p0 + kPointTile) packed once, against every query row (or, for
// `symmetric`, the rows i < p0 + kPointTile, each unordered pair {i, j} once, i < j, counted for
// both rows). Updates this thread's row state, and writes the tile's points_within.
template <typename T>
void point_tile(const NearestNeighborsParams<T>& p, const std::vector<T>& thresholds, const std::vector<T>& query_thresholds,
                bool symmetric, int64_t p0, Workspace<T>& work, RowState<T>& state) {
  constexpr int64_t C = kCols<T>;
  constexpr T nan = std::numeric_limits<T>::quiet_NaN();
  const int64_t cols = std::min(kPointTile, p.num_points - p0);
  const int64_t panels = (cols + C - 1) / C;
  pack_tile(p.points, p.num_points, p.dim, p0, panels * C, work.point_panels.data());
  for (int64_t pb = 0; pb < panels; ++pb)
    panel_norms(work.point_panels.data() + pb * p.dim * C, p.dim, work.point_norms.data() + pb * C);
  const T* point_norms = work.point_norms.data();
  int64_t counts[kPointTile] = {};
  const int64_t query_end = symmetric ? std::min(p.num_queries, p0 + cols) : p.num_queries;
  for (int64_t q0 = 0; q0 < query_end; q0 += kQueryTile) {
    const int64_t rows = std::min(kQueryTile, query_end - q0);
    const int64_t row_blocks = (rows + kRows - 1) / kRows;
    // acc[(rb * panels + pb) * kRows * C + r * C + c]: the pair (q0 + rb kRows + r, p0 + pb C + c).
    std::fill(work.acc.begin(), work.acc.begin() + row_blocks * panels * kRows * C, T(0));
    for (int64_t d0 = 0; d0 < p.dim; d0 += kChunk) {
      const int64_t length = std::min(kChunk, p.dim - d0);
      for (int64_t rb = 0; rb < row_blocks; ++rb) {
        const T* a[kRows];
        for (int r = 0; r < kRows; ++r) {
          // A row past the block's end reads row q0 (its results are never read).
          const int64_t i = rb * kRows + r < rows ? q0 + rb * kRows + r : q0;
          a[r] = p.query + i * p.dim + d0;
        }
        for (int64_t pb = 0; pb < panels; ++pb)
          micro_block(a, work.point_panels.data() + (pb * p.dim + d0) * C, length,
                      work.acc.data() + (rb * panels + pb) * kRows * C);
      }
    }
    // Per query row: the tile's squared distances (NaN for a pair left out: the excluded self
    // pair, and in the symmetric case each pair's second orientation; NaN passes no comparison),
    // then the counts and the top-k, each loop simple enough to vectorize or to skip most pairs
    // at one comparison.
    for (int64_t i = 0; i < rows; ++i) {
      const int64_t q = q0 + i;
      const T* acc_row = work.acc.data() + (i / kRows) * panels * kRows * C + (i % kRows) * C;
      T* squared = work.squared.data();
      const T query_norm = state.query_norms[q];
      for (int64_t pb = 0; pb < panels; ++pb)
        for (int64_t c = 0; c < C; ++c) {
          const int64_t j = pb * C + c;
          // The one formula of a pair's squared distance (the sum commutes exactly, so it is
          // symmetric in the two rows).
          squared[j] = std::max((point_norms[j] + query_norm) - T(2) * acc_row[pb * kRows * C + c],
                                T(0));
        }
      if (symmetric) {
        for (int64_t j = 0; j < std::min(cols, q - p0 + 1); ++j) squared[j] = nan;   // p0 + j <= q
      } else if (p.exclude_self && q >= p0 && q < p0 + cols) {
        squared[q - p0] = nan;
      }
      if (p.radii != nullptr) {
        const T* threshold = thresholds.data() + p0;
        int64_t count = 0;
        for (int64_t j = 0; j < cols; ++j) count += squared[j] <= threshold[j];   // dist <= radius
        state.within[q] += count;
      }
      if (p.query_radii != nullptr) {
        const T threshold = query_thresholds[q];
        for (int64_t j = 0; j < cols; ++j) counts[j] += squared[j] <= threshold;
      }
      T* row_best = state.best.data() + q * p.k;
      for (int64_t j = 0; j < cols; ++j)
        if (squared[j] < row_best[p.k - 1]) insert_top_k(row_best, p.k, squared[j]);
      if (symmetric)
        for (int64_t j = 0; j < cols; ++j) {
          T* column_best = state.best.data() + (p0 + j) * p.k;
          if (squared[j] < column_best[p.k - 1]) insert_top_k(column_best, p.k, squared[j]);
        }
    }
  }
  for (int64_t j = 0; j < cols; ++j) p.points_within[p0 + j] = counts[j];
}

// The threads' row states into the outputs (a team may have fewer threads than states: the
// states of threads that did not run are empty).
template <typename T>
void merge_rows(const NearestNeighborsParams<T>& p, std::vector<RowState<T>>& states) {
  RowState<T>& first = states[0];
  for (int64_t q = 0; q < p.num_queries; ++q) {
    T* best = first.best.data() + q * p.k;
    int64_t within = first.within[q];
    for (size_t s = 1; s < states.size(); ++s) {
      if (states[s].best.empty()) continue;
      const T* other = states[s].best.data() + q * p.k;
      for (int64_t n = 0; n < p.k && other[n] < best[p.k - 1]; ++n) insert_top_k(best, p.k, other[n]);
      within += states[s].within[q];
    }
    p.kth_distance[q] = std::sqrt(best[p.k - 1]);
    p.within[q] = within;
  }
}

}  // namespace

template <typename T>
void nearest_neighbors_cpu(const NearestNeighborsParams<T>& p) {
  static_assert(kQueryTile % kRows == 0 && kPointTile % kCols<T> == 0, "tiles hold whole panels");
  const bool parallel =
      p.num_queries * p.num_points * std::max<int64_t>(p.dim, 1) >= kMinParallelWork;
  const int teams = parallel ? std::max(p.num_threads, 1) : 1;
  const std::vector<T> thresholds =
      p.radii != nullptr ? squared_thresholds(p.radii, p.num_points) : std::vector<T>();
  const std::vector<T> query_thresholds = p.query_radii != nullptr
      ? squared_thresholds(p.query_radii, p.num_queries) : std::vector<T>();
  // A set against itself (the same rows, self excluded, no balls): each unordered pair once.
  const bool symmetric = p.exclude_self && p.query == p.points && p.num_queries == p.num_points &&
                         p.radii == nullptr && p.query_radii == nullptr;
  const int64_t tiles = (p.num_points + kPointTile - 1) / kPointTile;
  std::vector<RowState<T>> states(static_cast<size_t>(teams));
  std::atomic<int> finished{0};
  // Threads own tiles of points and keep their own view of every query row (and their own copy
  // of the query norms: no barrier to wait at on a busy machine), merged by the last thread to
  // finish: the k smallest of the union of their lists and the sum of their counts do not depend
  // on which thread saw which pair, so neither do the results.
#pragma omp parallel num_threads(teams) if (parallel)
  {
    RowState<T>& state = states[static_cast<size_t>(omp_get_thread_num())];
    state.query_norms = squared_norms(p.query, p.num_queries, p.dim);
    state.best.assign(static_cast<size_t>(p.num_queries * p.k), std::numeric_limits<T>::infinity());
    state.within.assign(static_cast<size_t>(p.num_queries), 0);
    Workspace<T> work(p.dim);
    // Symmetric tiles grow with their position: the largest first balances the team.
#pragma omp for schedule(dynamic, 1) nowait
    for (int64_t t = 0; t < tiles; ++t)
      point_tile(p, thresholds, query_thresholds, symmetric,
                 (symmetric ? tiles - 1 - t : t) * kPointTile, work, state);
    if (finished.fetch_add(1, std::memory_order_acq_rel) + 1 == omp_get_num_threads())
      merge_rows(p, states);
  }
}

template void nearest_neighbors_cpu<float>(const NearestNeighborsParams<float>&);
template void nearest_neighbors_cpu<double>(const NearestNeighborsParams<double>&);

}  // namespace gmk

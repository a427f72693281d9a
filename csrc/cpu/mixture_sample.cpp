// CPU kernels of mixture_sample (math in csrc/kernels/mixture_sample.h).
//
// eps is never stored: every kernel regenerates it kLanes Philox counters at a time in SIMD
// registers (philox_simd.h), and each normal is a pure function of its counter, so forward and
// backward see the same eps bits whatever the tiling or thread count.
//
// Forward, diagonal: one pass over the flat stream of counters (row s owns counters
//   s * ceil(K/4) ...), z written once, in order.
// Forward, full: samples grouped by component; per component, tiles of samples times the packed
//   transposed factor L^T (a register-blocked triangular mat-mat product), z rows written once.
//   A component with few samples (at most dim / 16) skips the packing: a direct row-wise product
//   from L's lower triangle. dim <= 16: the diagonal forward's walk over the counter stream, each
//   z row one or two vectors from a per-component packed L^T.
// Backward: every gradient entry is a sum over its component's samples in sample order,
//   accumulated by one writer: the bits are the same run to run and for any thread count, without
//   atomics. Diagonal and full with dim <= 16: the forward's walk over the counter stream, in
//   chunks of consecutive samples whose per-component sums are added in chunk order (diagonal,
//   fewer chunks than threads: the same chunks, threads over bands of columns). Full: samples
//   grouped by component with a stable counting sort. torch.are_deterministic_algorithms_enabled()
//   thus needs no special path on the CPU.
// Diagonal backward from the samples (mixture_sample_backward_from_samples): the same chunks and
//   additions with grad_z (z - mu_c) for grad_z eps, no normal drawn, one division by scale at
//   the end. A single chunk on several threads: threads over ranges of components (whole rows),
//   or over bands of columns where one component holds most of the samples.
#include "../kernels/mixture_sample.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#include "../kernels/philox.h"
#include "philox_simd.h"
#include "team_size.h"

#include <omp.h>

namespace gmk {
namespace {

using simd::kLanes;
constexpr int64_t kBlockFloats = 4 * kLanes;  // normals of one randn4_lanes call

// Rough single-core costs (AVX-512 machine): ~1.5 ns per normal with its load/store, ~16
// multiply-adds per ns in the register-blocked triangular products.
double normals_ns(int64_t normals) { return 1.5 * static_cast<double>(normals); }
double triangle_ns(int64_t samples, int64_t dim) {
  return static_cast<double>(samples) * static_cast<double>(dim) * static_cast<double>(dim) / 32.0;
}

int64_t round_up(int64_t value, int64_t multiple) {
  return (value + multiple - 1) / multiple * multiple;
}

// The first `count` normals of row `sample` (count <= dim, rounded up to whole SIMD blocks) into
// `eps`, which holds round_up(ceil(count / 4), kLanes) * 4 floats.
void row_normals(uint64_t seed, int64_t sample, int64_t groups_per_row, int64_t count,
                 float* eps) {
  const uint64_t first = static_cast<uint64_t>(sample * groups_per_row);
  const int64_t groups = (count + 3) / 4;
  for (int64_t g = 0; g < groups; g += kLanes) simd::randn4_lanes(seed, first + g, eps + 4 * g);
}

// Sample indices grouped by component, in sample order within a component; component c owns
// order[begin[c] .. begin[c + 1]).
struct ComponentBuckets {
  std::vector<int64_t> begin;
  std::vector<int64_t> order;
};

ComponentBuckets bucket_by_component(const int64_t* component, int64_t num_samples,
                                     int64_t num_components) {
  ComponentBuckets buckets;
  buckets.begin.assign(num_components + 1, 0);
  buckets.order.resize(num_samples);
  for (int64_t s = 0; s < num_samples; ++s) ++buckets.begin[component[s] + 1];
  for (int64_t c = 0; c < num_components; ++c) buckets.begin[c + 1] += buckets.begin[c];
  std::vector<int64_t> next(buckets.begin.begin(), buckets.begin.end() - 1);
  for (int64_t s = 0; s < num_samples; ++s) buckets.order[next[component[s]]++] = s;
  return buckets;
}

// A run of one component's samples: order[begin .. end).
struct SampleRun {
  int64_t component, begin, end;
};

// Each component's bucket cut into runs of at most `length` samples, in component order.
std::vector<SampleRun> split_buckets(const ComponentBuckets& buckets, int64_t length) {
  std::vector<SampleRun> runs;
  const int64_t num_components = static_cast<int64_t>(buckets.begin.size()) - 1;
  for (int64_t c = 0; c < num_components; ++c)
    for (int64_t b = buckets.begin[c]; b < buckets.begin[c + 1]; b += length)
      runs.push_back({c, b, std::min(b + length, buckets.begin[c + 1])});
  return runs;
}

// ---------------------------------------------------------------------------------------------
// Diagonal forward: z[s, k] = mu[c, k] + sigma[c, k] eps[s, k], walking the flat counter stream.

// Splits the Philox counters [first, last) of one SIMD block (eps: their 4 normals each) at row
// boundaries, since a block may span rows: visit(sample, k_begin, k_end, normals) for each piece,
// the row's coordinates [k_begin, k_end) taking normals[0 .. k_end - k_begin).
template <typename Visit>
inline void for_each_row_piece(int64_t first, int64_t last, int64_t groups, int64_t dim,
                               const float* eps, Visit&& visit) {
  if (groups == 1) {
    // dim <= 4: each counter is one whole row; no division (a quarter of the forward's time at
    // dim = 2, where a row is two multiply-adds).
    for (int64_t counter = first; counter < last; ++counter)
      visit(counter, int64_t(0), dim, eps + 4 * (counter - first));
    return;
  }
  for (int64_t counter = first; counter < last;) {
    const int64_t s = counter / groups;
    const int64_t g = counter - s * groups;
    const int64_t piece_end = std::min(last, (s + 1) * groups);
    const int64_t k_begin = 4 * g;
    const int64_t k_end = std::min(dim, 4 * (g + piece_end - counter));
    visit(s, k_begin, k_end, eps + 4 * (counter - first));
    counter = piece_end;
  }
}

// The SIMD block's normals as the diagonal walk reads them: rows of dim <= 2 read only each
// counter's first two (randn2_lanes, the same bits at half the cost).
inline void (*block_normals(int64_t dim))(uint64_t, uint64_t, float*) {
  return dim <= 2 ? simd::randn2_lanes : simd::randn4_lanes;
}

template <typename scalar_t>
void forward_diagonal(const MixtureSampleParams<scalar_t>& p) {
  const int64_t dim = p.dim;
  const auto draw_block = block_normals(dim);
  const int64_t groups = philox_groups_per_row(dim);
  const int64_t total = p.num_samples * groups;
  const int64_t blocks = (total + kLanes - 1) / kLanes;
  const int threads = team_size(p.num_threads, blocks, normals_ns(total * 4));
  // Static schedule: each thread writes one contiguous stretch of z.
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t block = 0; block < blocks; ++block) {
    alignas(64) float eps[kBlockFloats];
    const int64_t first = block * kLanes;
    draw_block(p.seed, static_cast<uint64_t>(first), eps);
    const int64_t last = std::min(total, first + kLanes);
    for_each_row_piece(first, last, groups, dim, eps, [&](int64_t s, int64_t k_begin, int64_t k_end,
                                                      const float* piece_eps) {
      const int64_t c = p.component[s];
      const scalar_t* mu = p.mu + c * dim + k_begin;
      const scalar_t* sigma = p.scale + c * dim + k_begin;
      scalar_t* z = p.z + s * dim + k_begin;
      for (int64_t k = 0; k < k_end - k_begin; ++k)
        z[k] = mu[k] + sigma[k] * static_cast<scalar_t>(piece_eps[k]);
    });
  }
}

// ---------------------------------------------------------------------------------------------
// Full forward: Z = E L^T + mu for a tile of samples of one component, L^T packed with zeros
// above the diagonal so the upper triangle of scale is never read.

// Register tiles of the full-scale products: kRows rows (forward: samples, backward: rows of
// grad_L) x kCols columns (2 vectors), 2 kRows accumulators: 12 of AVX-512's 32 registers, 8 of
// AVX2's 16.
template <typename scalar_t>
struct FullTile {
  typedef typename simd::Vec<scalar_t>::type vec;
  static constexpr int64_t kWidth = simd::Vec<scalar_t>::width;
  static constexpr int64_t kCols = 2 * kWidth;
  static constexpr int kRows = kLanes == 16 ? 6 : 4;
  static constexpr int64_t kForwardSamples = 48;   // samples per forward work item
  static constexpr int64_t kBackwardSamples = 64;  // samples per backward tile (eps in L2)
};

// lt[j * padded + i] = L[i, j] for j <= i < dim, else 0.
template <typename scalar_t>
void pack_transposed_tril(const scalar_t* tril, int64_t dim, int64_t padded, scalar_t* lt) {
  std::fill(lt, lt + dim * padded, scalar_t(0));
  for (int64_t i = 0; i < dim; ++i)
    for (int64_t j = 0; j <= i; ++j) lt[j * padded + i] = tril[i * dim + j];
}

// z rows of `rows` samples (eps rows at eps, stride `padded`):
// z[i] = mu[i] + sum_{j<=i} L[i,j] e[j].
template <typename scalar_t, int rows>
void full_forward_rows(const scalar_t* eps, const scalar_t* lt, const scalar_t* mu,
                       int64_t dim, int64_t padded, scalar_t* const* z_rows) {
  using Tile = FullTile<scalar_t>;
  typedef typename Tile::vec vec;
  for (int64_t i0 = 0; i0 < dim; i0 += Tile::kCols) {
    vec acc[rows][2];
    for (int r = 0; r < rows; ++r) acc[r][0] = acc[r][1] = vec{};
    // L^T[j, i] is zero for j > i: the tile's columns need j < i0 + kCols only.
    const int64_t j_end = std::min(dim, i0 + Tile::kCols);
    for (int64_t j = 0; j < j_end; ++j) {
      const scalar_t* lt_row = lt + j * padded + i0;
      const vec l0 = simd::load<vec>(lt_row), l1 = simd::load<vec>(lt_row + Tile::kWidth);
      for (int r = 0; r < rows; ++r) {
        const scalar_t e = eps[r * padded + j];
        acc[r][0] += e * l0;
        acc[r][1] += e * l1;
      }
    }
    const int64_t width = std::min<int64_t>(Tile::kCols, dim - i0);
    for (int r = 0; r < rows; ++r) {
      alignas(64) scalar_t out[Tile::kCols];
      simd::store(out, acc[r][0]);
      simd::store(out + Tile::kWidth, acc[r][1]);
      scalar_t* z = z_rows[r] + i0;
      for (int64_t i = 0; i < width; ++i) z[i] = mu[i0 + i] + out[i];
    }
  }
}

// Full forward, few samples per component: packing L^T (dim x padded stores, a strided read of
// the lower triangle) costs more than the products when a component has only a few samples, as
// with many components and about one sample each. Then each z entry is a dot product of a row of
// L (contiguous, read up to the diagonal only) with the sample's eps, kDirectSamples samples
// sharing each row's loads: L is streamed once per group of samples, nothing is packed.
//
// A component with at most dim / 16 samples takes the direct product. Measured on an AVX-512 Zen 4
// core (2 threads, L larger than the caches, every component with the same number of samples):
// at dim 64 the paths tie at 4 samples per component and the packed tiles are ~2x faster from 8;
// at dim 256 the direct product is 2-3x faster at 4 to 8 samples, 1.2-1.9x at 16 and ties at 32;
// at dim 1024 (packing an L^T of 4 MiB, larger than L2) it is 3-7x faster from 4 to 32.
bool direct_product(int64_t samples, int64_t dim) { return samples * 16 <= dim; }
constexpr int kDirectSamples = 4;

// The lanes of v added in a fixed order (a tree), the same bits for any thread count.
template <typename scalar_t, typename vec>
GMK_SIMD_INLINE scalar_t horizontal_sum(vec v) {
  constexpr int width = simd::Vec<scalar_t>::width;
  alignas(64) scalar_t lanes[width];
  simd::store(lanes, v);
  for (int half = width / 2; half >= 1; half /= 2)
    for (int k = 0; k < half; ++k) lanes[k] += lanes[k + half];
  return lanes[0];
}

// z rows of `rows` samples of one component (eps rows at eps, stride `padded`, zero past dim):
// z[i] = mu[i] + sum_{j<=i} L[i,j] e[j], reading row i of L up to its diagonal only.
template <typename scalar_t, int rows>
void full_forward_direct(const scalar_t* tril, const scalar_t* mu, const scalar_t* eps,
                         int64_t dim, int64_t padded, scalar_t* const* z_rows) {
  typedef typename simd::Vec<scalar_t>::type vec;
  constexpr int64_t width = simd::Vec<scalar_t>::width;
  for (int64_t i = 0; i < dim; ++i) {
    const scalar_t* l = tril + i * dim;
    const int64_t length = i + 1;
    vec acc[rows];
    for (int r = 0; r < rows; ++r) acc[r] = vec{};
    int64_t j = 0;
    for (; j + width <= length; j += width) {
      const vec l_v = simd::load<vec>(l + j);
      for (int r = 0; r < rows; ++r) acc[r] += l_v * simd::load<vec>(eps + r * padded + j);
    }
    if (j < length) {
      // The row's last entries, zero-padded: L above the diagonal is never read.
      alignas(64) scalar_t tail[width] = {};
      std::copy(l + j, l + length, tail);
      const vec l_v = simd::load<vec>(tail);
      for (int r = 0; r < rows; ++r) acc[r] += l_v * simd::load<vec>(eps + r * padded + j);
    }
    for (int r = 0; r < rows; ++r) z_rows[r][i] = mu[i] + horizontal_sum<scalar_t>(acc[r]);
  }
}

template <typename scalar_t>
void forward_full(const MixtureSampleParams<scalar_t>& p) {
  using Tile = FullTile<scalar_t>;
  const int64_t dim = p.dim;
  const int64_t groups = philox_groups_per_row(dim);
  const int64_t padded = round_up(dim, Tile::kCols);
  const int64_t eps_floats = 4 * round_up(groups, kLanes);
  const ComponentBuckets buckets =
      bucket_by_component(p.component, p.num_samples, p.num_components);
  const std::vector<SampleRun> runs = split_buckets(buckets, Tile::kForwardSamples);
  const int64_t items = static_cast<int64_t>(runs.size());
  const int threads = team_size(p.num_threads, items,
                                normals_ns(p.num_samples * dim) + triangle_ns(p.num_samples, dim));
#pragma omp parallel num_threads(threads)
  {
    std::vector<scalar_t> lt(dim * padded);
    std::vector<scalar_t> eps(Tile::kForwardSamples * padded);
    std::vector<float> row_eps(eps_floats);
    int64_t packed = -1;
    // Runs are in component order: a thread re-packs L^T only when its component changes.
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < items; ++item) {
      const SampleRun run = runs[item];
      const int64_t bucket_size = buckets.begin[run.component + 1] - buckets.begin[run.component];
      const bool direct = direct_product(bucket_size, dim);
      if (!direct && run.component != packed) {
        pack_transposed_tril(p.scale + run.component * dim * dim, dim, padded, lt.data());
        packed = run.component;
      }
      const int64_t count = run.end - run.begin;
      scalar_t* z_rows[Tile::kForwardSamples];
      for (int64_t b = 0; b < count; ++b) {
        const int64_t s = buckets.order[run.begin + b];
        row_normals(p.seed, s, groups, dim, row_eps.data());
        std::copy(row_eps.begin(), row_eps.begin() + dim, eps.begin() + b * padded);
        z_rows[b] = p.z + s * dim;
      }
      const scalar_t* mu = p.mu + run.component * dim;
      int64_t b = 0;
      if (direct) {
        const scalar_t* tril = p.scale + run.component * dim * dim;
        for (; b + kDirectSamples <= count; b += kDirectSamples)
          full_forward_direct<scalar_t, kDirectSamples>(tril, mu, eps.data() + b * padded, dim,
                                                        padded, z_rows + b);
        for (; b < count; ++b)
          full_forward_direct<scalar_t, 1>(tril, mu, eps.data() + b * padded, dim, padded,
                                           z_rows + b);
        continue;
      }
      for (; b + Tile::kRows <= count; b += Tile::kRows)
        full_forward_rows<scalar_t, Tile::kRows>(eps.data() + b * padded, lt.data(), mu, dim,
                                                 padded, z_rows + b);
      for (; b < count; ++b)
        full_forward_rows<scalar_t, 1>(eps.data() + b * padded, lt.data(), mu, dim, padded,
                                       z_rows + b);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Full forward, small dimension (dim <= kSmallDimMax): the tiled path above draws a whole SIMD
// block of normals for every row and computes register tiles kCols columns wide, nearly all
// padding at dim 2. Here the samples are walked in counter order like the diagonal forward: a
// tile of kLanes consecutive samples owns kLanes * groups consecutive counters (exactly `groups`
// SIMD blocks, no normal drawn that is not used or shared), and each sample's z row is one or two
// vectors: acc = sum_j e_j L^T[j] over a per-component packed L^T, then z = mu + acc, the
// multiply-adds in the tiled path's order (the same bits).
//
// dim at or below which the full-scale kernels walk the counter stream: a z row and a row of
// the backward's sums are one vector of floats. Measured on an AVX-512 Zen 4 core (one thread,
// 10 or 100 components, 1e5 samples) against the tiled path: dim 2 forward 9.4 -> 1.15 ms,
// forward + backward 15 -> 2.6 ms; dim 16 forward ~20 -> ~4.6 ms, forward + backward ~50 -> ~11 ms.
// Larger dims were not measured (the tiled path wastes half its normals at 32, none from 64).
constexpr int64_t kSmallDimMax = 16;

// Per component c, (dim + 1) rows of `row` scalars at table + c * (dim + 1) * row: mu[c], then
// L^T[j] (j < dim) with zeros where i < j (the upper triangle of scale is never read) or i >= dim.
template <typename scalar_t>
std::vector<scalar_t> pack_small_tables(const scalar_t* mu, const scalar_t* tril,
                                        int64_t num_components, int64_t dim, int64_t row) {
  std::vector<scalar_t> table(num_components * (dim + 1) * row, scalar_t(0));
  for (int64_t c = 0; c < num_components; ++c) {
    scalar_t* t = table.data() + c * (dim + 1) * row;
    std::copy(mu + c * dim, mu + (c + 1) * dim, t);
    const scalar_t* l = tril + c * dim * dim;
    for (int64_t i = 0; i < dim; ++i)
      for (int64_t j = 0; j <= i; ++j) t[(1 + j) * row + i] = l[i * dim + j];
  }
  return table;
}

// The normals of kLanes consecutive samples from `first_sample` (counters first_sample * groups
// ...): `groups` SIMD blocks into eps (4 * groups * kLanes floats); row b at eps + 4 * groups * b.
inline void tile_normals(uint64_t seed, int64_t first_sample, int64_t groups, int64_t count,
                         float* eps) {
  const int64_t first = first_sample * groups;
  const int64_t blocks = (count * groups + kLanes - 1) / kLanes;
  for (int64_t block = 0; block < blocks; ++block)
    simd::randn4_lanes(seed, static_cast<uint64_t>(first + block * kLanes), eps + kBlockFloats * block);
}

constexpr int64_t kSmallEpsFloats = 4 * 4 * kLanes;  // a tile's normals at groups <= 4 (dim <= 16)

// eps as scalar_t rows for the vector products, with `slack` zeros after the tile's normals (a
// row's vector load may run past its dim entries: those lanes only reach columns j >= dim).
template <typename scalar_t>
struct SmallTileEps {
  static constexpr int64_t kSlack = 64;  // at least one row of the widest table (4 vectors)
  alignas(64) scalar_t values[kSmallEpsFloats + kSlack];
  const scalar_t* from(const float* eps, int64_t floats) {
    for (int64_t k = 0; k < floats; ++k) values[k] = static_cast<scalar_t>(eps[k]);
    std::fill(values + floats, values + floats + kSlack, scalar_t(0));
    return values;
  }
};

template <typename scalar_t, int vectors>
void forward_full_small(const MixtureSampleParams<scalar_t>& p) {
  typedef typename simd::Vec<scalar_t>::type vec;
  constexpr int64_t width = simd::Vec<scalar_t>::width;
  constexpr int64_t row = vectors * width;
  const int64_t dim = p.dim;
  const int64_t groups = philox_groups_per_row(dim);
  const std::vector<scalar_t> table =
      pack_small_tables(p.mu, p.scale, p.num_components, dim, row);
  const int64_t tiles = (p.num_samples + kLanes - 1) / kLanes;
  const int threads = team_size(p.num_threads, tiles,
                                normals_ns(p.num_samples * groups * 4) +
                                    static_cast<double>(p.num_samples * dim * vectors) / 4.0);
  // Static schedule: each thread writes one contiguous stretch of z.
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t tile = 0; tile < tiles; ++tile) {
    alignas(64) float eps[kSmallEpsFloats + 32];
    alignas(64) scalar_t out[kLanes * kSmallDimMax + row];
    SmallTileEps<scalar_t> converted;
    const int64_t first_sample = tile * kLanes;
    const int64_t count = std::min<int64_t>(kLanes, p.num_samples - first_sample);
    tile_normals(p.seed, first_sample, groups, count, eps);
    const scalar_t* e_rows = converted.from(eps, 4 * groups * count);
    for (int64_t b = 0; b < count; ++b) {
      const scalar_t* t = table.data() + p.component[first_sample + b] * (dim + 1) * row;
      const scalar_t* e = e_rows + 4 * groups * b;
      vec acc[vectors];
      for (int v = 0; v < vectors; ++v) acc[v] = vec{};
      for (int64_t j = 0; j < dim; ++j) {
        const scalar_t e_j = e[j];
        for (int v = 0; v < vectors; ++v)
          acc[v] += e_j * simd::load<vec>(t + (1 + j) * row + v * width);
      }
      // Rows overlap in `out`: each store's lanes past dim are overwritten by the next row.
      for (int v = 0; v < vectors; ++v)
        simd::store(out + b * dim + v * width, simd::load<vec>(t + v * width) + acc[v]);
    }
    std::copy(out, out + count * dim, p.z + first_sample * dim);
  }
}

// ---------------------------------------------------------------------------------------------
// Diagonal backward, in sample order: the samples are cut into chunks of consecutive samples;
// each entry's terms are summed, in sample order, over a chunk into a per-component accumulator,
// and the chunks' sums are added to the gradients one after another, in chunk order. The chunk
// length depends on the problem only, so every entry is summed in the same order for any thread
// count: the same bits, without atomics, whichever of the two schedules below runs (threads over
// chunks, or over bands of columns when there are too few chunks).
constexpr int64_t kChunkSamples = 2048;

// Samples per chunk: at least 16 per component, so that the ordered additions (at most one
// (N, 2K) block per chunk) stay a small fraction of the chunk's own work.
int64_t chunk_samples(int64_t num_components) {
  return std::max<int64_t>(kChunkSamples, 16 * num_components);
}

// One row piece's terms added to its component's chunk sums, in coordinate order (both diagonal
// paths below call this, so that their additions are the same).
template <typename scalar_t>
inline void add_piece(const scalar_t* grad, const float* piece_eps, int64_t count, scalar_t* sum,
                      scalar_t* sum_eps) {
  for (int64_t k = 0; k < count; ++k) {
    sum[k] += grad[k];
    sum_eps[k] += grad[k] * static_cast<scalar_t>(piece_eps[k]);
  }
}

// Per-thread chunk sums of columns [k_begin, k_end) of every component: sums[c * 2 width + j] of
// grad_z, sums[c * 2 width + width + j] of grad_z * eps (j = k - k_begin). `touched` lists the
// components the chunk met, whose rows are zeroed when first met (untouched rows are never read,
// so never cleared); flush() adds them to the gradients.
template <typename scalar_t>
struct ChunkSums {
  const MixtureSampleBackwardParams<scalar_t>& p;
  int64_t k_begin, width;
  std::unique_ptr<scalar_t[]> sums;
  std::vector<char> met;
  std::vector<int64_t> touched;

  ChunkSums(const MixtureSampleBackwardParams<scalar_t>& params, int64_t begin, int64_t end)
      : p(params), k_begin(begin), width(end - begin),
        sums(new scalar_t[params.num_components * 2 * (end - begin)]),
        met(params.num_components, 0) {}

  // The sums of component c, zeroed the first time the chunk meets it.
  scalar_t* row(int64_t c) {
    scalar_t* sum = sums.get() + c * 2 * width;
    if (!met[c]) {
      met[c] = 1;
      touched.push_back(c);
      std::fill(sum, sum + 2 * width, scalar_t(0));
    }
    return sum;
  }

  void flush() {
    for (const int64_t c : touched) {
      const scalar_t* sum = sums.get() + c * 2 * width;
      scalar_t* grad_mu = p.grad_mu + c * p.dim + k_begin;
      scalar_t* grad_sigma = p.grad_scale + c * p.dim + k_begin;
      for (int64_t j = 0; j < width; ++j) {
        grad_mu[j] += sum[j];
        grad_sigma[j] += sum[width + j];
      }
      met[c] = 0;
    }
    touched.clear();
  }
};

// Diagonal backward, by chunks of samples (one thread per chunk): the flat counter stream is
// walked as the forward walks it (no normal is drawn twice, grad_z is read front to back), cut
// into chunks of consecutive samples. A chunk sums its samples, in order, into per-component
// accumulators of its thread; chunks then add their sums to the gradients one after another, in
// chunk order (an ordered loop).
template <typename scalar_t>
void backward_diagonal_by_chunks(const MixtureSampleBackwardParams<scalar_t>& p, int threads) {
  const int64_t dim = p.dim;
  const auto draw_block = block_normals(dim);
  const int64_t groups = philox_groups_per_row(dim);
  const int64_t chunk = chunk_samples(p.num_components);
  const int64_t chunks = (p.num_samples + chunk - 1) / chunk;
#pragma omp parallel num_threads(threads)
  {
    ChunkSums<scalar_t> sums(p, 0, dim);
#pragma omp for ordered schedule(static, 1)
    for (int64_t chunk_index = 0; chunk_index < chunks; ++chunk_index) {
      const int64_t first_sample = chunk_index * chunk;
      const int64_t end_sample = std::min(p.num_samples, first_sample + chunk);
      const int64_t end_counter = end_sample * groups;
      alignas(64) float eps[kBlockFloats];
      for (int64_t first = first_sample * groups; first < end_counter; first += kLanes) {
        draw_block(p.seed, static_cast<uint64_t>(first), eps);
        const int64_t last = std::min(end_counter, first + kLanes);
        for_each_row_piece(first, last, groups, dim, eps, [&](int64_t s, int64_t k_begin, int64_t k_end,
                                                          const float* piece_eps) {
          scalar_t* sum = sums.row(p.component[s]) + k_begin;
          add_piece(p.grad_z + s * p.grad_row_stride + k_begin, piece_eps, k_end - k_begin, sum,
                    sum + dim);
        });
      }
#pragma omp ordered
      sums.flush();
    }
  }
}

// Diagonal backward, by columns (one thread per band of columns, every chunk): each thread walks
// all the samples, drawing only its band's counters of each row (whole SIMD blocks of a row, so
// a band is a multiple of kLanes counters), with the same chunks and the same additions in the
// same order as the chunked path: the same bits. Taken when the chunks cannot keep the threads
// busy (fewer chunks than threads: n <= 16 N samples make one chunk, as with N = 1000
// components and n = 10^4 samples, where the chunked path ran on one thread) and a row has room
// for two bands (at least 2 kLanes counters: dim >= 125 with AVX-512's 16 lanes, 61 with AVX2's
// 8).
template <typename scalar_t>
void backward_diagonal_by_columns(const MixtureSampleBackwardParams<scalar_t>& p, int threads,
                                  int64_t bands) {
  const int64_t dim = p.dim;
  const int64_t groups = philox_groups_per_row(dim);
  const int64_t chunk = chunk_samples(p.num_components);
#pragma omp parallel num_threads(threads)
  {
    const int64_t team = omp_get_num_threads(), thread = omp_get_thread_num();
    const int64_t group_begin = bands * thread / team * kLanes;
    // The last band also takes the row's counters past the last whole block.
    const int64_t group_end = thread + 1 == team ? groups : bands * (thread + 1) / team * kLanes;
    const int64_t k_begin = 4 * group_begin, k_end = std::min(dim, 4 * group_end);
    if (k_begin < k_end) {
      ChunkSums<scalar_t> sums(p, k_begin, k_end);
      const int64_t width = k_end - k_begin;
      alignas(64) float eps[kBlockFloats];
      for (int64_t first_sample = 0; first_sample < p.num_samples; first_sample += chunk) {
        const int64_t end_sample = std::min(p.num_samples, first_sample + chunk);
        for (int64_t s = first_sample; s < end_sample; ++s) {
          scalar_t* sum = sums.row(p.component[s]);
          const scalar_t* grad = p.grad_z + s * p.grad_row_stride;
          for (int64_t g = group_begin; g < group_end; g += kLanes) {
            simd::randn4_lanes(p.seed, static_cast<uint64_t>(s * groups + g), eps);
            const int64_t k = 4 * g;
            add_piece(grad + k, eps, std::min(k_end, k + kBlockFloats) - k, sum + (k - k_begin),
                      sum + width + (k - k_begin));
          }
        }
        sums.flush();
      }
    }
  }
}

template <typename scalar_t>
void backward_diagonal(const MixtureSampleBackwardParams<scalar_t>& p) {
  const int64_t chunk = chunk_samples(p.num_components);
  const int64_t chunks = (p.num_samples + chunk - 1) / chunk;
  const double work = normals_ns(p.num_samples * p.dim);
  const int by_chunks = team_size(p.num_threads, chunks, work);
  // Bands of whole SIMD blocks of a row's counters (none for rows of less than one block, such
  // as those of dim <= 2 that draw half blocks).
  const int64_t bands = philox_groups_per_row(p.dim) / kLanes;
  const int by_columns = team_size(p.num_threads, bands, work);
  if (bands >= 2 && by_columns > by_chunks) {
    backward_diagonal_by_columns(p, by_columns, bands);
  } else {
    backward_diagonal_by_chunks(p, by_chunks);
  }
}

// ---------------------------------------------------------------------------------------------
// Diagonal backward from the samples: the chunks and the chunk-ordered additions of the
// regenerating backward, each term grad_z * (z - mu_c) instead of grad_z * eps (so grad_scale
// holds sum grad_z (z - mu_c) until the last pass divides it by scale_c). It reads two (n, K)
// streams instead of drawing n K normals: ~0.3 ns an entry against normals_ns's ~1.5.
double samples_ns(int64_t entries) { return 0.3 * static_cast<double>(entries); }

// Columns per band when threads split the columns: a 64-byte line of floats.
constexpr int64_t kBandColumns = 16;

template <typename scalar_t>
inline void add_sample_piece(const scalar_t* grad, const scalar_t* z, const scalar_t* mu,
                             int64_t count, scalar_t* sum, scalar_t* sum_deviation) {
  for (int64_t k = 0; k < count; ++k) {
    sum[k] += grad[k];
    sum_deviation[k] += grad[k] * (z[k] - mu[k]);
  }
}

// grad_scale holds sum grad_z (z - mu_c) until this last pass.
template <typename scalar_t>
void divide_by_scale(scalar_t* grad_scale, const scalar_t* scale, int64_t count) {
  for (int64_t k = 0; k < count; ++k) grad_scale[k] /= scale[k];
}

// Columns [k_begin, k_end) of every sample, chunk by chunk, into `sums` (flushed per chunk).
template <typename scalar_t>
void sum_sample_chunk(const MixtureSampleBackwardParams<scalar_t>& p, int64_t first_sample,
                      int64_t end_sample, ChunkSums<scalar_t>& sums) {
  const int64_t k_begin = sums.k_begin, width = sums.width;
  for (int64_t s = first_sample; s < end_sample; ++s) {
    const int64_t c = p.component[s];
    scalar_t* sum = sums.row(c);
    add_sample_piece(p.grad_z + s * p.grad_row_stride + k_begin, p.z + s * p.dim + k_begin,
                     p.mu + c * p.dim + k_begin, width, sum, sum + width);
  }
}

constexpr int64_t kRangesMinDim = 64;

// Cuts of the components into `teams` ranges holding about equal numbers of samples: range t is
// components [cuts[t], cuts[t + 1]). Returns the cuts and the most samples one range holds.
std::pair<std::vector<int64_t>, int64_t> component_ranges(const int64_t* component,
                                                          int64_t num_samples,
                                                          int64_t num_components, int teams) {
  std::vector<int64_t> counts(num_components, 0);
  for (int64_t s = 0; s < num_samples; ++s) ++counts[component[s]];
  std::vector<int64_t> cuts(teams + 1, num_components);
  cuts[0] = 0;
  int64_t seen = 0, range_begin = 0, most = 0;
  int team = 1;
  for (int64_t c = 0; c < num_components && team < teams; ++c) {
    seen += counts[c];
    // Range team - 1 ends after c once it holds its share of the samples.
    if (seen * teams >= num_samples * team) {
      cuts[team] = c + 1;
      most = std::max(most, seen - range_begin);
      range_begin = seen;
      ++team;
    }
  }
  return {cuts, std::max(most, num_samples - range_begin)};
}

// All the samples as one chunk, their sums straight into the zeroed gradients, for components
// [c_begin, c_end) and columns [k_begin, k_end): the same additions in the same order as a chunk
// buffer and its flush (0 + sum is sum), without the buffer's zeroing and flush pass. The
// backward op at N = 1000, n = 10^4 (interleaved A/B, 2 threads, bands of columns): K = 256
// 2.54 -> 2.32 ms, K = 1024 7.17 -> 6.40 ms.
template <typename scalar_t>
void sum_one_chunk(const MixtureSampleBackwardParams<scalar_t>& p, int64_t c_begin,
                   int64_t c_end, int64_t k_begin, int64_t k_end) {
  const int64_t dim = p.dim;
  for (int64_t s = 0; s < p.num_samples; ++s) {
    const int64_t c = p.component[s];
    if (c < c_begin || c >= c_end) continue;
    add_sample_piece(p.grad_z + s * p.grad_row_stride + k_begin, p.z + s * dim + k_begin,
                     p.mu + c * dim + k_begin, k_end - k_begin, p.grad_mu + c * dim + k_begin,
                     p.grad_scale + c * dim + k_begin);
  }
}

// One chunk, each thread the samples of a range of components (whole rows of grad_z and z, one
// writer per gradient row, in sample order: the same additions as the other paths). Every thread
// reads the component of every sample, which is cheap next to a row of dim >= kRangesMinDim.
template <typename scalar_t>
void backward_one_chunk_by_components(const MixtureSampleBackwardParams<scalar_t>& p,
                                      const std::vector<int64_t>& cuts) {
  const int64_t dim = p.dim;
  const int ranges = static_cast<int>(cuts.size()) - 1;
#pragma omp parallel num_threads(ranges)
  {
    // A smaller team than asked for (a thread limit) takes the ranges in turn.
    for (int range = omp_get_thread_num(); range < ranges; range += omp_get_num_threads()) {
      const int64_t c_begin = cuts[range], c_end = cuts[range + 1];
      sum_one_chunk(p, c_begin, c_end, 0, dim);
      for (int64_t c = c_begin; c < c_end; ++c)
        divide_by_scale(p.grad_scale + c * dim, p.scale + c * dim, dim);
    }
  }
}

template <typename scalar_t>
void backward_diagonal_from_samples(const MixtureSampleBackwardParams<scalar_t>& p) {
  const int64_t dim = p.dim;
  const int64_t chunk = chunk_samples(p.num_components);
  const int64_t chunks = (p.num_samples + chunk - 1) / chunk;
  const double work = samples_ns(p.num_samples * dim);
  const int by_chunks = team_size(p.num_threads, chunks, work);
  const int64_t bands = dim / kBandColumns;
  const int by_columns = team_size(p.num_threads, bands, work);
  const int by_ranges = team_size(p.num_threads, p.num_components, work);
  if (chunks == 1 && by_ranges > 1 && dim >= kRangesMinDim) {
    // One chunk (at most 16 samples per component) for several threads: threads over ranges of
    // components, unless one range would hold over 5/4 of its share of the samples (a dominant
    // component). Against the bands of columns below (interleaved A/B, 2 threads, uniform
    // components, the same bits), backward op / forward+backward at N = 1000: n = 10^4, K = 256
    // 2.01 -> 1.50 / 4.60 -> 4.08 ms, K = 1024 6.87 -> 5.36 / 15.7 -> 14.1 ms; n = 1000, K = 64
    // 0.148 -> 0.133 / 0.426 -> 0.365 ms; n = 16000, K = 64 0.75 -> 0.57 ms; at K = 32 and 48
    // no faster, up to 10% slower (hence kRangesMinDim). The bands read half of every row of
    // grad_z and z each; a range reads whole rows. (Ranges for every chunk count were measured
    // too: 1.2-2.5x slower than the chunks at N = 64 to 1000, n = 10^5 to 10^6.)
    const auto [cuts, most] = component_ranges(p.component, p.num_samples, p.num_components,
                                               by_ranges);
    if (4 * most * by_ranges <= 5 * p.num_samples) {
      backward_one_chunk_by_components(p, cuts);
      return;
    }
  }
  if (bands >= 2 && by_columns > by_chunks) {
    // Too few chunks for the threads: each thread takes a band of columns of every chunk.
#pragma omp parallel num_threads(by_columns)
    {
      const int64_t team = omp_get_num_threads(), thread = omp_get_thread_num();
      const int64_t k_begin = bands * thread / team * kBandColumns;
      const int64_t k_end = thread + 1 == team ? dim : bands * (thread + 1) / team * kBandColumns;
      if (k_begin < k_end) {
        if (chunks == 1) {
          sum_one_chunk(p, 0, p.num_components, k_begin, k_end);
        } else {
          ChunkSums<scalar_t> sums(p, k_begin, k_end);
          for (int64_t first = 0; first < p.num_samples; first += chunk) {
            sum_sample_chunk(p, first, std::min(p.num_samples, first + chunk), sums);
            sums.flush();
          }
        }
        // Each thread divides its own columns (one thread over N K entries was 5% of the
        // backward at N = 1000, K = 256, n = 10^4).
        for (int64_t c = 0; c < p.num_components; ++c)
          divide_by_scale(p.grad_scale + c * dim + k_begin, p.scale + c * dim + k_begin,
                          k_end - k_begin);
      }
    }
  } else {
#pragma omp parallel num_threads(by_chunks)
    {
      ChunkSums<scalar_t> sums(p, 0, dim);
#pragma omp for ordered schedule(static, 1)
      for (int64_t chunk_index = 0; chunk_index < chunks; ++chunk_index) {
        const int64_t first = chunk_index * chunk;
        sum_sample_chunk(p, first, std::min(p.num_samples, first + chunk), sums);
#pragma omp ordered
        sums.flush();
      }
      // After the loop's barrier: every chunk is in.
#pragma omp for schedule(static)
      for (int64_t c = 0; c < p.num_components; ++c)
        divide_by_scale(p.grad_scale + c * dim, p.scale + c * dim, dim);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Full backward: grad_L[c] = tril(G^T E) over the component's samples, grad_mu[c] = G^T 1.
// Work item = (component, block of output rows [i0, i1)); it regenerates eps[:, :i1] for every
// sample of the component, kBackwardSamples at a time, and adds each sample's outer product to a
// row-block accumulator in sample order. Splitting the rows changes which thread owns an entry,
// never the order of its sum: the row blocks may follow the thread count.

// acc[r, j] += sum_b grad[b, r] eps[b, j] for `rows` rows and columns j < columns (a multiple of
// kCols), samples b in order.
template <typename scalar_t, int rows>
void full_backward_rows(const scalar_t* grad, int64_t grad_stride, const scalar_t* eps,
                        int64_t eps_stride, int64_t count, int64_t columns, scalar_t* acc,
                        int64_t acc_stride) {
  using Tile = FullTile<scalar_t>;
  typedef typename Tile::vec vec;
  for (int64_t j0 = 0; j0 < columns; j0 += Tile::kCols) {
    vec sum[rows][2];
    for (int r = 0; r < rows; ++r) {
      sum[r][0] = simd::load<vec>(acc + r * acc_stride + j0);
      sum[r][1] = simd::load<vec>(acc + r * acc_stride + j0 + Tile::kWidth);
    }
    for (int64_t b = 0; b < count; ++b) {
      const scalar_t* eps_row = eps + b * eps_stride + j0;
      const vec e0 = simd::load<vec>(eps_row), e1 = simd::load<vec>(eps_row + Tile::kWidth);
      for (int r = 0; r < rows; ++r) {
        const scalar_t g = grad[b * grad_stride + r];
        sum[r][0] += g * e0;
        sum[r][1] += g * e1;
      }
    }
    for (int r = 0; r < rows; ++r) {
      simd::store(acc + r * acc_stride + j0, sum[r][0]);
      simd::store(acc + r * acc_stride + j0 + Tile::kWidth, sum[r][1]);
    }
  }
}

template <typename scalar_t>
void backward_full(const MixtureSampleBackwardParams<scalar_t>& p,
                   const ComponentBuckets& buckets) {
  using Tile = FullTile<scalar_t>;
  const int64_t dim = p.dim;
  const int64_t groups = philox_groups_per_row(dim);
  // Row blocks per component: enough items to keep the threads busy, each a multiple of kRows
  // rows, cut so that the triangle's area (the work) is about equal: i_b = dim sqrt(b / B).
  const int64_t row_tiles = (dim + Tile::kRows - 1) / Tile::kRows;
  const int threads = team_size(p.num_threads, p.num_components * row_tiles,
                                normals_ns(p.num_samples * dim) + triangle_ns(p.num_samples, dim));
  // Each extra block regenerates eps: one thread needs none.
  const int64_t wanted_blocks = (4 * threads + p.num_components - 1) / p.num_components;
  const int64_t blocks_per_component =
      threads == 1 ? 1 : std::max<int64_t>(1, std::min(row_tiles, wanted_blocks));
  std::vector<int64_t> row_cut(blocks_per_component + 1);
  for (int64_t b = 0; b <= blocks_per_component; ++b) {
    const double fraction = std::sqrt(static_cast<double>(b) / blocks_per_component);
    row_cut[b] = std::min(dim, round_up(static_cast<int64_t>(fraction * dim), Tile::kRows));
  }
  row_cut[blocks_per_component] = dim;
  const int64_t items = p.num_components * blocks_per_component;
#pragma omp parallel num_threads(threads)
  {
    const int64_t padded = round_up(dim, Tile::kCols);
    std::vector<scalar_t> acc(dim * padded);
    std::vector<scalar_t> eps(Tile::kBackwardSamples * padded);
    std::vector<scalar_t> grad(Tile::kBackwardSamples * Tile::kRows * row_tiles);
    std::vector<float> row_eps(4 * round_up(groups, kLanes));
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t c = item / blocks_per_component;
      const int64_t i0 = row_cut[item % blocks_per_component];
      const int64_t i1 = row_cut[item % blocks_per_component + 1];
      if (i0 >= i1) continue;
      const int64_t rows = i1 - i0;
      const int64_t columns = round_up(i1, Tile::kCols);  // eps columns j < i1 are needed
      std::fill(acc.begin(), acc.begin() + rows * padded, scalar_t(0));
      std::fill(eps.begin(), eps.end(), scalar_t(0));
      scalar_t* grad_mu = p.grad_mu + c * dim;
      const int64_t bucket_end = buckets.begin[c + 1];
      for (int64_t tile = buckets.begin[c]; tile < bucket_end; tile += Tile::kBackwardSamples) {
        const int64_t count = std::min<int64_t>(Tile::kBackwardSamples, bucket_end - tile);
        for (int64_t b = 0; b < count; ++b) {
          const int64_t s = buckets.order[tile + b];
          row_normals(p.seed, s, groups, i1, row_eps.data());
          std::copy(row_eps.begin(), row_eps.begin() + i1, eps.begin() + b * padded);
          const scalar_t* grad_row = p.grad_z + s * p.grad_row_stride + i0;
          std::copy(grad_row, grad_row + rows, grad.begin() + b * rows);
          for (int64_t i = 0; i < rows; ++i) grad_mu[i0 + i] += grad_row[i];
        }
        int64_t r = 0;
        for (; r + Tile::kRows <= rows; r += Tile::kRows) {
          // Columns past the tile's last row only feed the upper triangle: skip them.
          const int64_t needed = round_up(i0 + r + Tile::kRows, Tile::kCols);
          full_backward_rows<scalar_t, Tile::kRows>(grad.data() + r, rows, eps.data(), padded,
                                                    count, std::min(needed, columns),
                                                    acc.data() + r * padded, padded);
        }
        for (; r < rows; ++r) {
          const int64_t needed = round_up(i0 + r + 1, Tile::kCols);
          full_backward_rows<scalar_t, 1>(grad.data() + r, rows, eps.data(), padded, count,
                                          std::min(needed, columns), acc.data() + r * padded,
                                          padded);
        }
      }
      scalar_t* grad_tril = p.grad_scale + c * dim * dim;
      for (int64_t i = i0; i < i1; ++i)
        std::copy(acc.begin() + (i - i0) * padded, acc.begin() + (i - i0) * padded + i + 1,
                  grad_tril + i * dim);  // entries above the diagonal stay zero
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Full backward, small dimension: the diagonal backward's walk (chunks of consecutive samples,
// per-component sums of the chunk added in chunk order: the same bits for any thread count),
// each sample adding its outer product to its component's sums: row 0 += g, row 1 + i += g_i e
// (whole vectors; only the columns j <= i are written out).
template <typename scalar_t, int vectors>
void backward_full_small(const MixtureSampleBackwardParams<scalar_t>& p) {
  typedef typename simd::Vec<scalar_t>::type vec;
  constexpr int64_t width = simd::Vec<scalar_t>::width;
  constexpr int64_t row = vectors * width;
  const int64_t dim = p.dim;
  const int64_t groups = philox_groups_per_row(dim);
  const int64_t block = (dim + 1) * row;  // one component's sums
  // A multiple of kLanes (2048 and 16 N are): tiles never straddle two chunks.
  const int64_t chunk = chunk_samples(p.num_components);
  const int64_t chunks = (p.num_samples + chunk - 1) / chunk;
  const int threads = team_size(p.num_threads, chunks,
                                normals_ns(p.num_samples * groups * 4) +
                                    static_cast<double>(p.num_samples * dim * vectors) / 4.0);
#pragma omp parallel num_threads(threads)
  {
    std::vector<scalar_t> sums(p.num_components * block);
    std::vector<char> met(p.num_components, 0);
    std::vector<int64_t> touched;
#pragma omp for ordered schedule(static, 1)
    for (int64_t chunk_index = 0; chunk_index < chunks; ++chunk_index) {
      const int64_t end_sample = std::min(p.num_samples, (chunk_index + 1) * chunk);
      alignas(64) float eps[kSmallEpsFloats + 32];
      SmallTileEps<scalar_t> converted;
      for (int64_t first_sample = chunk_index * chunk; first_sample < end_sample;
           first_sample += kLanes) {
        const int64_t count = std::min<int64_t>(kLanes, end_sample - first_sample);
        tile_normals(p.seed, first_sample, groups, count, eps);
        const scalar_t* e_rows = converted.from(eps, 4 * groups * count);
        for (int64_t b = 0; b < count; ++b) {
          const int64_t s = first_sample + b;
          const int64_t c = p.component[s];
          scalar_t* sum = sums.data() + c * block;
          if (!met[c]) {
            met[c] = 1;
            touched.push_back(c);
            std::fill(sum, sum + block, scalar_t(0));
          }
          const scalar_t* grad = p.grad_z + s * p.grad_row_stride;
          const scalar_t* e = e_rows + 4 * groups * b;
          vec e_v[vectors];
          for (int v = 0; v < vectors; ++v) e_v[v] = simd::load<vec>(e + v * width);
          for (int64_t i = 0; i < dim; ++i) {
            const scalar_t g = grad[i];
            sum[i] += g;
            scalar_t* sum_row = sum + (1 + i) * row;
            for (int v = 0; v < vectors; ++v)
              simd::store(sum_row + v * width, simd::load<vec>(sum_row + v * width) + g * e_v[v]);
          }
        }
      }
#pragma omp ordered
      {
        for (const int64_t c : touched) {
          const scalar_t* sum = sums.data() + c * block;
          scalar_t* grad_mu = p.grad_mu + c * dim;
          scalar_t* grad_tril = p.grad_scale + c * dim * dim;
          for (int64_t i = 0; i < dim; ++i) {
            grad_mu[i] += sum[i];
            for (int64_t j = 0; j <= i; ++j) grad_tril[i * dim + j] += sum[(1 + i) * row + j];
          }
          met[c] = 0;
        }
        touched.clear();
      }
    }
  }
}

// Runs run(std::integral_constant<int, vectors>) and returns true where the small-dimension
// full-scale path applies: dim <= kSmallDimMax in at most 4 vectors of scalar_t.
template <typename scalar_t, typename Run>
bool small_full_dispatch(int64_t dim, Run&& run, scalar_t*) {
  constexpr int64_t width = simd::Vec<scalar_t>::width;
  if (dim > kSmallDimMax) return false;
  switch ((dim + width - 1) / width) {
    case 1: run(std::integral_constant<int, 1>{}); return true;
    case 2: run(std::integral_constant<int, 2>{}); return true;
    case 3: run(std::integral_constant<int, 3>{}); return true;
    case 4: run(std::integral_constant<int, 4>{}); return true;
    default: return false;
  }
}

}  // namespace

template <typename scalar_t>
void mixture_sample_forward_cpu(const MixtureSampleParams<scalar_t>& p) {
  if (p.full_scale) {
    if (!small_full_dispatch(p.dim, [&](auto vectors) { forward_full_small<scalar_t, vectors()>(p); },
                             static_cast<scalar_t*>(nullptr)))
      forward_full(p);
  } else {
    forward_diagonal(p);
  }
}

template <typename scalar_t>
void mixture_sample_backward_cpu(const MixtureSampleBackwardParams<scalar_t>& p) {
  if (p.full_scale) {
    if (!small_full_dispatch(p.dim, [&](auto vectors) { backward_full_small<scalar_t, vectors()>(p); },
                             static_cast<scalar_t*>(nullptr)))
      backward_full(p, bucket_by_component(p.component, p.num_samples, p.num_components));
  } else {
    backward_diagonal(p);
  }
}

template <typename scalar_t>
void mixture_sample_backward_from_samples_cpu(const MixtureSampleBackwardParams<scalar_t>& p) {
  backward_diagonal_from_samples(p);
}

template <typename scalar_t>
bool mixture_sample_recoverable_cpu(const scalar_t* mu, const scalar_t* scale, int64_t entries) {
  const scalar_t limit = static_cast<scalar_t>(kRecoverMaxRatio);
  bool recoverable = true;   // no early exit: the loop vectorizes
  for (int64_t j = 0; j < entries; ++j) {
    const scalar_t size = std::abs(scale[j]);
    recoverable &= (size > 0) & (std::abs(mu[j]) <= limit * size);
  }
  return recoverable;
}

template bool mixture_sample_recoverable_cpu<float>(const float*, const float*, int64_t);
template bool mixture_sample_recoverable_cpu<double>(const double*, const double*, int64_t);
template void mixture_sample_backward_from_samples_cpu<float>(
    const MixtureSampleBackwardParams<float>&);
template void mixture_sample_backward_from_samples_cpu<double>(
    const MixtureSampleBackwardParams<double>&);
template void mixture_sample_forward_cpu<float>(const MixtureSampleParams<float>&);
template void mixture_sample_forward_cpu<double>(const MixtureSampleParams<double>&);
template void mixture_sample_backward_cpu<float>(const MixtureSampleBackwardParams<float>&);
template void mixture_sample_backward_cpu<double>(const MixtureSampleBackwardParams<double>&);

}  // namespace gmk

// CPU kernels of mixture_log_likelihood (math in csrc/kernels/mixture_log_likelihood.h).
// Direct path: rows are processed in blocks of kRowBlock, transposed into a small local array so
// that every inner loop runs over the rows of the block (contiguous, vectorized), and the C
// exponents of the block live in a local (C x kRowBlock) array: nothing of size B x C is written.
// The backward reduces the component gradients per fixed chunk of rows into double partials and
// adds the chunks in order: results are identical for any thread count.
// Tiled path: the epilogues of one BLAS tile, one row per iteration (rows are independent).
#include "../kernels/mixture_log_likelihood.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "multiply_add.h"
#include "philox_simd.h"
#include "team_size.h"

namespace gmk {
namespace {

constexpr double kLog2Pi = 1.83787706640934548356;
constexpr int64_t kRowBlock = 16;
// Component gradients are reduced per chunk of rows; at most this many chunks, so the double
// partials stay small, and at least kChunkRows rows per chunk so each chunk amortises its setup.
// Chunks are also the backward's unit of parallel work, so kChunkRows is small: with 512, any
// B <= 512 was one chunk, and the backward ran on one thread (B = C = 316 forward + backward
// 0.48x the compiled matrix-product formula at 2 threads). The chunking never depends on the
// thread count, so neither do the sums.
constexpr int64_t kMaxChunks = 32;
constexpr int64_t kChunkRows = 2 * kRowBlock;

template <typename scalar_t>
constexpr scalar_t minus_infinity() {
  return -std::numeric_limits<scalar_t>::infinity();
}

// exp(x) for x <= 88, written with arithmetic only so that GCC vectorizes the loops that call
// it (std::exp does not vectorize without -ffast-math). Cephes' expf: x = n ln2 + r with
// |r| <= ln2 / 2, ln2 split in two parts so r is exact, degree-6 polynomial: within 2 ulp.
// Below -87 (exp < 1.7e-38) it returns 0, which also covers -inf; NaN stays NaN.
// The reduction and polynomial of exp on x clamped to [-87, 88], for a float or a register of
// floats alike (exp_vectorizable and exp_lanes below: one set of operations, so the same values):
// returns exp(r) with r = clamped - n ln2, and n, the power of two still to multiply by.
// The reduction and the Horner steps are multiply_adds, fused where the target has FMA (both
// forms alike): 7 of the ~30 operations fewer, ~15% of a tile epilogue at B = C = 1000, d = 64.
GMK_SIMD_INLINE float multiply_add(float a, float b, float c) { return gmk::multiply_add(a, b, c); }
using simd::multiply_add;

template <typename Floats>
GMK_SIMD_INLINE Floats exp_reduced(Floats clamped, Floats& n) {
  const Floats zero{};
  n = clamped * 1.44269504088896341f;
  n = (n + 12582912.0f) - 12582912.0f;  // round to nearest: 1.5 * 2^23 pushes the fraction out
  // n ln2's high part is exact (n has at most 8 bits, 0.693359375 9), so r keeps one rounding.
  Floats r = multiply_add(n, zero - 0.693359375f, clamped);
  r = multiply_add(n, zero + 2.12194440e-4f, r);
  Floats p = zero + 1.9875691500e-4f;
  p = multiply_add(p, r, zero + 1.3981999507e-3f);
  p = multiply_add(p, r, zero + 8.3334519073e-3f);
  p = multiply_add(p, r, zero + 4.1665795894e-2f);
  p = multiply_add(p, r, zero + 1.6666665459e-1f);
  p = multiply_add(p, r, zero + 5.0000001201e-1f);
  return multiply_add(p, r * r, r) + 1.0f;
}

inline float exp_vectorizable(float x) {
  const float clamped = std::min(std::max(x, -87.0f), 88.0f);
  float n;
  const float p = exp_reduced(clamped, n);
  const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23;
  float power;
  std::memcpy(&power, &bits, sizeof(power));
  return x < -87.0f ? 0.0f : p * power;
}

// float64 keeps the library exp: its cost is small next to the float64 arithmetic around it.
inline double exp_vectorizable(double x) { return std::exp(x); }

// exp_vectorizable on a register of simd::kLanes floats, the same operations lane by lane (so
// the same values), written with vector extensions: GCC left the tile epilogues' exp loops
// scalar (a compare-and-branch per element) even under `omp simd`.
GMK_SIMD_INLINE simd::f32v exp_lanes(simd::f32v x) {
  using simd::f32v;
  using simd::i32v;
  const f32v low = f32v{} - 87.0f, high = f32v{} + 88.0f;
  f32v clamped = simd::select(x < low, low, x);
  clamped = simd::select(clamped > high, high, clamped);
  f32v n;
  const f32v q = exp_reduced(clamped, n);
  const i32v bits = (__builtin_convertvector(n, i32v) + 127) << 23;
  return simd::select(x < low, f32v{}, q * (f32v)bits);
}

// sum_c exp(row[c] - shift) over a row of the tile.
inline float row_exp_sum(const float* row, int64_t cols, float shift) {
  constexpr int64_t kLanes = simd::kLanes;
  simd::f32v lanes{};
  int64_t c = 0;
  for (; c + kLanes <= cols; c += kLanes)
    lanes += exp_lanes(simd::load<simd::f32v>(row + c) - shift);
  float sum = 0;
  for (int64_t l = 0; l < kLanes; ++l) sum += lanes[l];
  for (; c < cols; ++c) sum += exp_vectorizable(row[c] - shift);
  return sum;
}
inline double row_exp_sum(const double* row, int64_t cols, double shift) {
  double sum = 0;
  for (int64_t c = 0; c < cols; ++c) sum += std::exp(row[c] - shift);
  return sum;
}

#if defined(__AVX512F__)
// Sums over a row with peaked responsibilities (AVX-512, float): most terms exp(row[c] - shift)
// are then below exp(cutoff) (the sweep's B = C = 1000, d = 64, (C,) var: 83%), and the exp is
// most of a tile epilogue. With cutoff = log(eps / C) and shift at most the row's final maximum,
// all such terms together weigh less than one rounding of the row's total (as the backward's
// flushed responsibilities), so they can be left out.
//
// Whether a row is worth compacting: at most half of its first kSampleColumns terms kept, a pure
// function of the row, so the sums stay independent of the thread count. (Compacting every row
// made the forward at B = C = 3162, d = 16, var = 10, where every term is kept, ~8% slower;
// with the sample it is within 1%. B = C = 1000, d = 64, (C,) var: forward 1.04 -> 0.95 ms,
// forward + backward 3.34 -> 3.19 ms; B = 8192, C = 5000, d = 64: 207 -> 194 ms.)
constexpr int64_t kSampleColumns = 256;

inline bool mostly_negligible(const float* row, int64_t cols, float shift, float cutoff) {
  const __m512 shift_lanes = _mm512_set1_ps(shift), cutoff_lanes = _mm512_set1_ps(cutoff);
  const int64_t sampled = std::min(cols, kSampleColumns) / 16 * 16;
  if (sampled == 0) return false;
  int64_t kept = 0;
  for (int64_t c = 0; c < sampled; c += 16) {
    const __m512 shifted = _mm512_sub_ps(_mm512_loadu_ps(row + c), shift_lanes);
    kept += __builtin_popcount(_mm512_cmp_ps_mask(shifted, cutoff_lanes, _CMP_NLT_UQ));
  }
  return 2 * kept <= sampled;
}

// sum_c exp(row[c] - shift) over the terms not below exp(cutoff) (NaN kept): each register of
// the row compressed to its kept lanes into a buffer (in registers, then a plain store: a
// compressing store is slow on some cores), and only the buffer exponentiated.
inline float row_exp_sum_kept(const float* row, int64_t cols, float shift, float cutoff) {
  constexpr int64_t kChunk = 1024;   // columns compacted, then summed, at a time
  alignas(64) float kept[kChunk + 16];
  const __m512 shift_lanes = _mm512_set1_ps(shift), cutoff_lanes = _mm512_set1_ps(cutoff);
  simd::f32v lanes{};
  for (int64_t start = 0; start < cols; start += kChunk) {
    const int64_t end = std::min(cols, start + kChunk);
    int64_t count = 0;
    int64_t c = start;
    for (; c + 16 <= end; c += 16) {
      const __m512 shifted = _mm512_sub_ps(_mm512_loadu_ps(row + c), shift_lanes);
      const __mmask16 keep = _mm512_cmp_ps_mask(shifted, cutoff_lanes, _CMP_NLT_UQ);
      _mm512_storeu_ps(kept + count, _mm512_maskz_compress_ps(keep, shifted));
      count += __builtin_popcount(keep);
    }
    for (; c < end; ++c) {
      kept[count] = row[c] - shift;
      count += !(kept[count] < cutoff);
    }
    // The last register's unused lanes: exp_lanes gives 0 below -87.
    for (int64_t l = 0; l < 16; ++l) kept[count + l] = minus_infinity<float>();
    for (int64_t k = 0; k < count; k += 16) lanes += exp_lanes(simd::load<simd::f32v>(kept + k));
  }
  float sum = 0;
  for (int64_t l = 0; l < simd::kLanes; ++l) sum += lanes[l];
  return sum;
}
#endif

// The forward's sum of a tile row: its kept terms when most are negligible (AVX-512, float),
// else all of them.
inline float row_forward_sum(const float* row, int64_t cols, float shift, float cutoff) {
#if defined(__AVX512F__)
  if (mostly_negligible(row, cols, shift, cutoff)) return row_exp_sum_kept(row, cols, shift, cutoff);
#endif
  (void)cutoff;
  return row_exp_sum(row, cols, shift);
}
inline double row_forward_sum(const double* row, int64_t cols, double shift, double /*cutoff*/) {
  return row_exp_sum(row, cols, shift);
}

#if defined(__AVX512F__)
// row_exp_weights over the kept terms only (AVX-512), the same values: each register's kept
// lanes compressed into a buffer with its mask, the buffer exponentiated, then expanded back.
inline int64_t row_exp_weights_kept(float* row, int64_t cols, float grad, float cutoff) {
  constexpr int64_t kChunk = 1024;   // columns compacted, then weighted, at a time
  alignas(64) float kept[kChunk + 16];
  __mmask16 masks[kChunk / 16];
  const __m512 cutoff_lanes = _mm512_set1_ps(cutoff);
  int64_t total = 0;
  const int64_t whole = cols / 16 * 16;
  for (int64_t start = 0; start < whole; start += kChunk) {
    const int64_t end = std::min(whole, start + kChunk);
    int64_t count = 0;
    for (int64_t c = start; c < end; c += 16) {
      const __m512 shifted = _mm512_loadu_ps(row + c);
      const __mmask16 keep = _mm512_cmp_ps_mask(shifted, cutoff_lanes, _CMP_GE_OQ);
      masks[(c - start) / 16] = keep;
      _mm512_storeu_ps(kept + count, _mm512_maskz_compress_ps(keep, shifted));
      count += __builtin_popcount(keep);
    }
    for (int64_t k = 0; k < count; k += 16)
      simd::store(kept + k, grad * exp_lanes(simd::load<simd::f32v>(kept + k)));
    int64_t used = 0;
    for (int64_t c = start; c < end; c += 16) {
      const __mmask16 keep = masks[(c - start) / 16];
      _mm512_storeu_ps(row + c, _mm512_maskz_expand_ps(keep, _mm512_loadu_ps(kept + used)));
      used += __builtin_popcount(keep);
    }
    total += count;
  }
  for (int64_t c = whole; c < cols; ++c) {
    const bool keep = row[c] >= cutoff;
    row[c] = keep ? grad * exp_vectorizable(row[c]) : 0.0f;
    total += keep;
  }
  return total;
}
#endif

// row[c] <- grad exp(row[c]) where row[c] >= cutoff, else 0; returns the number kept. Rows
// whose terms are mostly below the cutoff take row_exp_weights_kept (AVX-512).
inline int64_t row_exp_weights(float* row, int64_t cols, float grad, float cutoff) {
#if defined(__AVX512F__)
  if (mostly_negligible(row, cols, 0.0f, cutoff)) return row_exp_weights_kept(row, cols, grad, cutoff);
#endif
  constexpr int64_t kLanes = simd::kLanes;
  simd::i32v kept{};
  int64_t c = 0;
  for (; c + kLanes <= cols; c += kLanes) {
    const simd::f32v shifted = simd::load<simd::f32v>(row + c);
    const simd::i32v mask = shifted >= cutoff;   // -1 where kept
    simd::store(row + c, simd::select(mask, grad * exp_lanes(shifted), simd::f32v{}));
    kept -= mask;
  }
  int64_t total = 0;
  for (int64_t l = 0; l < kLanes; ++l) total += kept[l];
  for (; c < cols; ++c) {
    const bool keep = row[c] >= cutoff;
    row[c] = keep ? grad * exp_vectorizable(row[c]) : 0.0f;
    total += keep;
  }
  return total;
}
inline int64_t row_exp_weights(double* row, int64_t cols, double grad, double cutoff) {
  int64_t total = 0;
  for (int64_t c = 0; c < cols; ++c) {
    const bool keep = row[c] >= cutoff;
    row[c] = keep ? grad * std::exp(row[c]) : 0.0;
    total += keep;
  }
  return total;
}

// The direct path's exps over the kRowBlock rows of a block (a multiple of simd::kLanes):
//   sum[r] += exp(exponent[r] - top[r])            (block_exp_accumulate)
//   w[r] = grad[r] == 0 ? 0 : grad[r] exp(w[r] - shift[r])   (block_exp_weights)
// in SIMD registers for float (GCC left the `omp simd` forms scalar), plain loops for double.
static_assert(kRowBlock % simd::kLanes == 0, "a row block is whole SIMD registers");
inline void block_exp_accumulate(const float* exponent, const float* top, float* sum) {
  for (int64_t r = 0; r < kRowBlock; r += simd::kLanes)
    simd::store(sum + r, simd::load<simd::f32v>(sum + r) +
                             exp_lanes(simd::load<simd::f32v>(exponent + r) -
                                       simd::load<simd::f32v>(top + r)));
}
inline void block_exp_accumulate(const double* exponent, const double* top, double* sum) {
  for (int64_t r = 0; r < kRowBlock; ++r) sum[r] += std::exp(exponent[r] - top[r]);
}
inline void block_exp_weights(float* w, const float* grad, const float* shift) {
  for (int64_t r = 0; r < kRowBlock; r += simd::kLanes) {
    const simd::f32v g = simd::load<simd::f32v>(grad + r);
    const simd::f32v weight =
        g * exp_lanes(simd::load<simd::f32v>(w + r) - simd::load<simd::f32v>(shift + r));
    simd::store(w + r, simd::select(g == 0.0f, simd::f32v{}, weight));
  }
}
inline void block_exp_weights(double* w, const double* grad, const double* shift) {
  for (int64_t r = 0; r < kRowBlock; ++r)
    w[r] = grad[r] == 0.0 ? 0.0 : grad[r] * std::exp(w[r] - shift[r]);
}

// Per-component constants of the direct path: precision 1/v_ck as a full (C, d) table (so that
// inner loops never branch on the variance's shape), 1/v_c for the isotropic case, and
// offset_c = lw_c - 1/2 sum_k log(2 pi v_ck), the latter summed in double.
template <typename scalar_t>
struct ComponentTable {
  std::vector<scalar_t> precision;            // (C, d)
  std::vector<scalar_t> component_precision;  // (C,), isotropic only
  std::vector<scalar_t> offset;               // (C,)

  ComponentTable(const scalar_t* var, const scalar_t* log_weights, int64_t num_components,
                 int64_t dim, bool diagonal)
      : precision(num_components * dim), component_precision(num_components),
        offset(num_components) {
    for (int64_t c = 0; c < num_components; ++c) {
      double log_norm = 0;
      if (diagonal) {
        for (int64_t k = 0; k < dim; ++k) {
          precision[c * dim + k] = scalar_t(1) / var[c * dim + k];
          log_norm += kLog2Pi + std::log(double(var[c * dim + k]));
        }
      } else {
        component_precision[c] = scalar_t(1) / var[c];
        std::fill(precision.begin() + c * dim, precision.begin() + (c + 1) * dim,
                  component_precision[c]);
        log_norm = dim * (kLog2Pi + std::log(double(var[c])));
      }
      offset[c] = static_cast<scalar_t>(double(log_weights[c]) - 0.5 * log_norm);
    }
  }
};

// Rows [row_begin, row_begin + rows) of x, transposed into x_block (dim x kRowBlock); missing
// rows of a short block are zeros (their results are never written).
template <typename scalar_t>
void load_block(const scalar_t* x, int64_t dim, int64_t row_begin, int64_t rows,
                scalar_t* x_block) {
  std::fill(x_block, x_block + dim * kRowBlock, scalar_t(0));
  for (int64_t r = 0; r < rows; ++r) {
    const scalar_t* row = x + (row_begin + r) * dim;
    for (int64_t k = 0; k < dim; ++k) x_block[k * kRowBlock + r] = row[k];
  }
}

// Components whose distances block_exponents computes together: kComponentGroup independent
// accumulator registers share each load of x_block; one accumulator alone is a chain of
// dependent additions, one per dimension (no speed-up was measurable through this machine's
// noise at B = C = 316, d = 16; the chains are independent in the generated code).
constexpr int64_t kComponentGroup = 4;

// acc[j][r] <- sum_k (x_rk - mu_ck)^2 (times 1/v_ck when Diagonal) for the components
// c = first + j of one group (a short group repeats its last component; those rows are unused).
template <bool Diagonal, typename scalar_t>
GMK_SIMD_INLINE void group_distances(const scalar_t* x_block, const scalar_t* means,
                                     const scalar_t* precision, int64_t first, int64_t group,
                                     int64_t dim, scalar_t (&acc)[kComponentGroup][kRowBlock]) {
  const scalar_t* mean[kComponentGroup];
  const scalar_t* weight[kComponentGroup];
  for (int64_t j = 0; j < kComponentGroup; ++j) {
    const int64_t c = first + std::min(j, group - 1);
    mean[j] = means + c * dim;
    weight[j] = precision + c * dim;
    std::fill(acc[j], acc[j] + kRowBlock, scalar_t(0));
  }
  for (int64_t k = 0; k < dim; ++k) {
    const scalar_t* xk = x_block + k * kRowBlock;
    for (int64_t j = 0; j < kComponentGroup; ++j) {
      const scalar_t mu = mean[j][k];
      if (Diagonal) {
        const scalar_t w = weight[j][k];
#pragma omp simd
        for (int64_t r = 0; r < kRowBlock; ++r) acc[j][r] += (xk[r] - mu) * (xk[r] - mu) * w;
      } else {
#pragma omp simd
        for (int64_t r = 0; r < kRowBlock; ++r) acc[j][r] += (xk[r] - mu) * (xk[r] - mu);
      }
    }
  }
}

// exponent (C x kRowBlock) <- E_rc for the rows of x_block; squared (C x kRowBlock, optional)
// <- the plain squared distance sum_k (x_k - mu_ck)^2 (isotropic case only: the var gradient).
template <typename scalar_t>
void block_exponents(const scalar_t* x_block, const scalar_t* means,
                     const ComponentTable<scalar_t>& table, int64_t num_components, int64_t dim,
                     bool diagonal, scalar_t* exponent, scalar_t* squared) {
  for (int64_t first = 0; first < num_components; first += kComponentGroup) {
    const int64_t group = std::min(kComponentGroup, num_components - first);
    scalar_t acc[kComponentGroup][kRowBlock];
    if (diagonal)
      group_distances<true>(x_block, means, table.precision.data(), first, group, dim, acc);
    else
      group_distances<false>(x_block, means, table.precision.data(), first, group, dim, acc);
    for (int64_t j = 0; j < group; ++j) {
      const int64_t c = first + j;
      if (!diagonal && squared != nullptr)
        std::copy(acc[j], acc[j] + kRowBlock, squared + c * kRowBlock);
      const scalar_t half_precision =
          diagonal ? scalar_t(0.5) : scalar_t(0.5) * table.component_precision[c];
      scalar_t* out = exponent + c * kRowBlock;
#pragma omp simd
      for (int64_t r = 0; r < kRowBlock; ++r) out[r] = table.offset[c] - half_precision * acc[j][r];
    }
  }
}

// log_likelihood[r] = logsumexp_c exponent[c][r]; -inf when every component is switched off.
template <typename scalar_t>
void block_logsumexp(const scalar_t* exponent, int64_t num_components, scalar_t* out) {
  scalar_t top[kRowBlock];
  std::fill(top, top + kRowBlock, minus_infinity<scalar_t>());
  for (int64_t c = 0; c < num_components; ++c)
#pragma omp simd
    for (int64_t r = 0; r < kRowBlock; ++r) top[r] = std::max(top[r], exponent[c * kRowBlock + r]);
  // A row whose maximum is -inf shifts by 0 instead, so that exp(-inf - -inf) never makes a NaN.
#pragma omp simd
  for (int64_t r = 0; r < kRowBlock; ++r)
    if (top[r] == minus_infinity<scalar_t>()) top[r] = 0;
  scalar_t sum[kRowBlock] = {};
  for (int64_t c = 0; c < num_components; ++c)
    block_exp_accumulate(exponent + c * kRowBlock, top, sum);
#pragma omp simd
  for (int64_t r = 0; r < kRowBlock; ++r) out[r] = top[r] + std::log(sum[r]);
}

// Rough single-core costs (AVX2 machine) from which the team sizes are chosen: a direct-path
// pair (row, component) costs ~0.15 ns per dimension plus its exp; a tile element (exponent, exp
// and the running sums) ~1 ns; a nonzero weight of the sparse products ~0.5 ns per factor.
double direct_ns(int64_t rows, int64_t num_components, int64_t dim) {
  return static_cast<double>(rows) * static_cast<double>(num_components) *
         (0.15 * static_cast<double>(dim) + 2.0);
}
double tile_ns(int64_t rows, int64_t cols) {
  return static_cast<double>(rows) * static_cast<double>(cols);
}

// Dimensions of grad_x that add_x_gradient takes in one pass.
constexpr int kGradDims = 4;

// grad_x of a block of kRowBlock rows in dimensions [k0, k0 + D): grad_rk = sum_c W_rc (mu_ck -
// x_rk) / v_ck, with W (C x kRowBlock, component-major), x and grad (d x kRowBlock, transposed).
// The D x kRowBlock sums stay in registers over all the components, with the x columns they
// need: one pass per component over sums held in memory loaded and stored each of them.
template <typename scalar_t, int D>
void add_x_gradient(const scalar_t* weights, const scalar_t* means, const scalar_t* precision,
                    int64_t num_components, int64_t dim, int64_t k0, const scalar_t* x_block,
                    scalar_t* grad_block) {
  scalar_t sums[D][kRowBlock] = {};
  scalar_t x[D][kRowBlock];
  for (int j = 0; j < D; ++j)
    for (int64_t r = 0; r < kRowBlock; ++r) x[j][r] = x_block[(k0 + j) * kRowBlock + r];
  for (int64_t c = 0; c < num_components; ++c) {
    const scalar_t* w = weights + c * kRowBlock;
    for (int j = 0; j < D; ++j) {
      const scalar_t weight = precision[c * dim + k0 + j], mean = means[c * dim + k0 + j];
#pragma omp simd
      for (int64_t r = 0; r < kRowBlock; ++r) sums[j][r] += w[r] * weight * (mean - x[j][r]);
    }
  }
  for (int j = 0; j < D; ++j)
    std::copy(sums[j], sums[j] + kRowBlock, grad_block + (k0 + j) * kRowBlock);
}

// The kRowBlock values of a block summed as a tree: four dependent vector additions where GCC
// ended an `omp simd` reduction with a chain of 16 scalar ones (per component and block, twice
// with an isotropic var: a sixth of the direct backward at B = C = 316, d = 16).
template <typename scalar_t>
GMK_SIMD_INLINE scalar_t block_sum(const scalar_t* v) {
  static_assert(kRowBlock == 16, "the tree below halves 16 values four times");
  scalar_t half[8];
  for (int i = 0; i < 8; ++i) half[i] = v[i] + v[i + 8];
  for (int i = 0; i < 4; ++i) half[i] += half[i + 4];
  for (int i = 0; i < 2; ++i) half[i] += half[i + 2];
  return half[0] + half[1];
}

// Rows whose component sums add_component_sums takes in one pass.
constexpr int kSumRows = 4;

// The direct backward's component sums over R consecutive rows (x: R rows of dim; weights: R
// rows of `padded` weights, `ld` apart, the components of zero weight included), for every
// dimension k: first[k][c] += sum_r w_rc (x_rk - mu_ck) and, with `second` (a diagonal var),
// second[k][c] += sum_r w_rc (x_rk - mu_ck)^2, sums transposed (d rows of `padded`, `ld` apart).
// The loops are bound by L1 traffic (three loads and a store per vector of products); R rows a
// pass load and store each sum once instead of R times.
template <typename scalar_t, int R>
void add_component_sums(const scalar_t* x, int64_t dim, const scalar_t* weights, int64_t padded,
                        int64_t ld, const scalar_t* means_t, scalar_t* first, scalar_t* second) {
  for (int64_t k = 0; k < dim; ++k) {
    scalar_t xk[R];
    for (int i = 0; i < R; ++i) xk[i] = x[i * dim + k];
    const scalar_t* mean_k = means_t + k * ld;
    scalar_t* first_k = first + k * ld;
    if (second != nullptr) {
      scalar_t* second_k = second + k * ld;
#pragma omp simd
      for (int64_t c = 0; c < padded; ++c) {
        scalar_t first_sum = 0, second_sum = 0;
        for (int i = 0; i < R; ++i) {
          const scalar_t diff = xk[i] - mean_k[c];
          const scalar_t weighted = weights[i * ld + c] * diff;
          first_sum += weighted;
          second_sum += weighted * diff;
        }
        first_k[c] += first_sum;
        second_k[c] += second_sum;
      }
    } else {
#pragma omp simd
      for (int64_t c = 0; c < padded; ++c) {
        scalar_t first_sum = 0;
        for (int i = 0; i < R; ++i) first_sum += weights[i * ld + c] * (xk[i] - mean_k[c]);
        first_k[c] += first_sum;
      }
    }
  }
}

int64_t chunk_rows_for(int64_t num_rows) {
  const int64_t spread = (num_rows + kMaxChunks - 1) / kMaxChunks;
  const int64_t rows = std::max(kChunkRows, spread);
  return (rows + kRowBlock - 1) / kRowBlock * kRowBlock;
}

}  // namespace

template <typename scalar_t>
void mixture_log_likelihood_direct_cpu(const MixtureLogLikelihoodParams<scalar_t>& p) {
  const int64_t dim = p.dim, num_components = p.num_components;
  const ComponentTable<scalar_t> table(p.var, p.log_weights, num_components, dim, p.diagonal);
  const int64_t blocks = (p.num_rows + kRowBlock - 1) / kRowBlock;
  const int threads = team_size(p.num_threads, blocks, direct_ns(p.num_rows, num_components, dim));
#pragma omp parallel num_threads(threads)
  {
    std::vector<scalar_t> x_block(dim * kRowBlock);
    std::vector<scalar_t> exponent(num_components * kRowBlock);
    scalar_t out[kRowBlock];
#pragma omp for schedule(static)
    for (int64_t block = 0; block < blocks; ++block) {
      const int64_t row_begin = block * kRowBlock;
      const int64_t rows = std::min(kRowBlock, p.num_rows - row_begin);
      load_block(p.x, dim, row_begin, rows, x_block.data());
      block_exponents(x_block.data(), p.means, table, num_components, dim, p.diagonal,
                      exponent.data(), static_cast<scalar_t*>(nullptr));
      block_logsumexp(exponent.data(), num_components, out);
      std::copy(out, out + rows, p.log_likelihood + row_begin);
    }
  }
}

template <typename scalar_t>
void mixture_log_likelihood_direct_backward_cpu(
    const MixtureLogLikelihoodBackwardParams<scalar_t>& p) {
  const int64_t dim = p.dim, num_components = p.num_components;
  const bool diagonal = p.diagonal;
  const bool component_grads = p.component_grads;
  const ComponentTable<scalar_t> table(p.var, p.log_weights, num_components, dim, diagonal);
  const int64_t chunk_rows = chunk_rows_for(p.num_rows);
  const int64_t chunks = (p.num_rows + chunk_rows - 1) / chunk_rows;
  const int64_t var_size = diagonal ? num_components * dim : num_components;
  // Per chunk: grad_means (C x d), grad_var (var_size), grad_log_weights (C), in double.
  const int64_t partial_size = num_components * dim + var_size + num_components;
  std::vector<double> partials(component_grads ? chunks * partial_size : 0, 0.0);
  // The backward does about three times the forward's arithmetic per pair.
  const int threads =
      team_size(p.num_threads, chunks, 3.0 * direct_ns(p.num_rows, num_components, dim));

  // The means transposed (d x C), so that the component sums below run over components; rows
  // padded to whole SIMD registers with components of zero weight (C = 10 is common).
  const int64_t padded = (num_components + simd::kLanes - 1) / simd::kLanes * simd::kLanes;
  // The tables' rows are ld apart, an odd number of SIMD registers: rows a power of two apart
  // (C = 2048) put the same-column entries that add_component_sums reads and writes together in
  // one L1 set, and its stores and loads 4 KiB apart (B = C = 2048, d = 2: 9.4 ms against 1.2 ms
  // at B = C = 1000, 4.2x fewer pairs).
  const int64_t ld = padded / simd::kLanes % 2 == 1 ? padded : padded + simd::kLanes;
  std::vector<scalar_t> means_t(component_grads ? dim * ld : 0, scalar_t(0));
  for (int64_t c = 0; c < (component_grads ? num_components : 0); ++c)
    for (int64_t k = 0; k < dim; ++k) means_t[k * ld + c] = p.means[c * dim + k];

#pragma omp parallel num_threads(threads)
  {
    std::vector<scalar_t> x_block(dim * kRowBlock);
    std::vector<scalar_t> grad_block(p.x_grad ? dim * kRowBlock : 0);
    std::vector<scalar_t> exponent(num_components * kRowBlock);
    std::vector<scalar_t> squared(diagonal ? 0 : num_components * kRowBlock);
    scalar_t* squared_ptr = diagonal ? nullptr : squared.data();
    // The component sums over the chunk's rows, sum_r W_rc (x_rk - mu_ck) and (diagonal var)
    // sum_r W_rc (x_rk - mu_ck)^2, held transposed (d x C) and accumulated with the block's
    // weights transposed (rows x C): every inner loop runs over components, with no horizontal
    // SIMD reduction per (component, dimension) and block (the rows-inner form of these sums
    // took ~6x the forward's time at B = C = 316, d = 16).
    std::vector<scalar_t> weights_t(component_grads ? kRowBlock * ld : 0, scalar_t(0));
    std::vector<scalar_t> first_t(component_grads ? dim * ld : 0);
    std::vector<scalar_t> second_t(component_grads && diagonal ? dim * ld : 0);
#pragma omp for schedule(dynamic, 1)
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      double* partial = component_grads ? partials.data() + chunk * partial_size : nullptr;
      std::fill(first_t.begin(), first_t.end(), scalar_t(0));
      std::fill(second_t.begin(), second_t.end(), scalar_t(0));
      const int64_t chunk_end = std::min(p.num_rows, (chunk + 1) * chunk_rows);
      for (int64_t row_begin = chunk * chunk_rows; row_begin < chunk_end; row_begin += kRowBlock) {
        const int64_t rows = std::min(kRowBlock, chunk_end - row_begin);
        load_block(p.x, dim, row_begin, rows, x_block.data());
        block_exponents(x_block.data(), p.means, table, num_components, dim, diagonal,
                        exponent.data(), squared_ptr);
        // exponent <- W_rc = grad_r exp(E_rc - log p_r); missing rows, zero gradients and rows
        // of likelihood 0 (every component off) contribute nothing.
        scalar_t grad[kRowBlock] = {}, shift[kRowBlock] = {};
        for (int64_t r = 0; r < rows; ++r) {
          const scalar_t log_likelihood = p.log_likelihood[row_begin + r];
          if (log_likelihood != minus_infinity<scalar_t>()) {
            grad[r] = p.grad[row_begin + r];
            shift[r] = log_likelihood;
          }
        }
        for (int64_t c = 0; c < num_components; ++c)
          block_exp_weights(exponent.data() + c * kRowBlock, grad, shift);
        if (p.x_grad) {
          // grad_x_r = sum_c W_rc (mu_c - x_r) / v_c
          int64_t k = 0;
          for (; k + kGradDims <= dim; k += kGradDims)
            add_x_gradient<scalar_t, kGradDims>(exponent.data(), p.means, table.precision.data(),
                                                num_components, dim, k, x_block.data(),
                                                grad_block.data());
          for (; k < dim; ++k)
            add_x_gradient<scalar_t, 1>(exponent.data(), p.means, table.precision.data(),
                                        num_components, dim, k, x_block.data(), grad_block.data());
          for (int64_t r = 0; r < rows; ++r) {
            scalar_t* out = p.grad_x + (row_begin + r) * dim;
            for (int64_t k = 0; k < dim; ++k) out[k] = grad_block[k * kRowBlock + r];
          }
        }
        if (!component_grads) continue;
        double* grad_var = partial + num_components * dim;
        double* grad_log_weights = grad_var + var_size;
        for (int64_t c = 0; c < num_components; ++c) {
          const scalar_t* w = exponent.data() + c * kRowBlock;
          for (int64_t r = 0; r < rows; ++r) weights_t[r * ld + c] = w[r];
          const scalar_t weight_sum = block_sum(w);
          grad_log_weights[c] += weight_sum;
          if (!diagonal) {
            // d/dv [-||x - mu||^2 / (2 v) - d log(v) / 2] = (||x - mu||^2 / v^2 - d / v) / 2
            const double precision = table.component_precision[c];
            const scalar_t* sq = squared.data() + c * kRowBlock;
            scalar_t products[kRowBlock];
            for (int64_t r = 0; r < kRowBlock; ++r) products[r] = w[r] * sq[r];
            const scalar_t weighted_squared = block_sum(products);
            grad_var[c] += 0.5 * precision *
                           (precision * double(weighted_squared) - double(dim) * weight_sum);
          }
        }
        const scalar_t* x_rows = p.x + row_begin * dim;
        scalar_t* second = diagonal ? second_t.data() : nullptr;
        int64_t r = 0;
        for (; r + kSumRows <= rows; r += kSumRows)
          add_component_sums<scalar_t, kSumRows>(x_rows + r * dim, dim,
                                                 weights_t.data() + r * ld, padded, ld,
                                                 means_t.data(), first_t.data(), second);
        for (; r < rows; ++r)
          add_component_sums<scalar_t, 1>(x_rows + r * dim, dim, weights_t.data() + r * ld,
                                          padded, ld, means_t.data(), first_t.data(), second);
      }
      if (!component_grads) continue;
      // The chunk's sums into its partial: grad_mu = sum_r W (x - mu) / v; for a diagonal var
      // d/dv_k [-(x_k - mu_k)^2 / (2 v_k) - log(v_k) / 2] = ((x_k - mu_k)^2 / v_k^2 - 1 / v_k) / 2
      // (the chunk's weight sums are its grad_log_weights partial).
      double* grad_means = partial;
      double* grad_var = partial + num_components * dim;
      const double* weight_sums = grad_var + var_size;
      for (int64_t c = 0; c < num_components; ++c)
        for (int64_t k = 0; k < dim; ++k) {
          const double precision = table.precision[c * dim + k];
          const int64_t t = k * ld + c;
          grad_means[c * dim + k] += precision * double(first_t[t]);
          if (diagonal)
            grad_var[c * dim + k] +=
                0.5 * precision * (precision * double(second_t[t]) - weight_sums[c]);
        }
    }
  }
  if (!component_grads) return;
  // Chunks are added in order: the same sums for any number of threads.
  std::vector<double> total(partial_size, 0.0);
  for (int64_t chunk = 0; chunk < chunks; ++chunk) {
    const double* partial = partials.data() + chunk * partial_size;
    for (int64_t i = 0; i < partial_size; ++i) total[i] += partial[i];
  }
  const int64_t means_size = num_components * dim;
  for (int64_t i = 0; i < means_size; ++i) p.grad_means[i] = static_cast<scalar_t>(total[i]);
  for (int64_t i = 0; i < var_size; ++i) p.grad_var[i] = static_cast<scalar_t>(total[means_size + i]);
  for (int64_t c = 0; c < num_components; ++c)
    p.grad_log_weights[c] = static_cast<scalar_t>(total[means_size + var_size + c]);
}

template <typename scalar_t>
void mixture_tile_forward_cpu(const MixtureTileParams<scalar_t>& p) {
  // Two passes over each row (it stays in L1/L2): exponents and their maximum (an `omp simd`
  // reduction), then the sum of exps in SIMD registers (row_forward_sum). The former lane-array
  // loops were left scalar by GCC: 3x the product's time at B = C = 1000, d = 64.
  const int64_t cols = p.num_cols;
  const int threads =
      team_size_after_product(p.num_threads, p.num_rows, tile_ns(p.num_rows, cols));
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t b = 0; b < p.num_rows; ++b) {
    scalar_t* row = p.scores + b * p.ld;
    const scalar_t* offset = p.offset;
    const scalar_t* scale = p.scale;
    const scalar_t half_norm = p.row_norm != nullptr ? scalar_t(0.5) * p.row_norm[b] : scalar_t(0);
    scalar_t tile_max = minus_infinity<scalar_t>();
#pragma omp simd reduction(max : tile_max)
    for (int64_t c = 0; c < cols; ++c) {
      const scalar_t e = offset[c] + scale[c] * (row[c] - half_norm);
      row[c] = e;
      tile_max = std::max(tile_max, e);
    }
    const scalar_t old_max = p.running_max[b];
    const scalar_t new_max = std::max(old_max, tile_max);
    if (new_max == minus_infinity<scalar_t>()) {
      // Nothing switched on yet, or NaN exponents (the maximum passes over them: a NaN input):
      // those make the row NaN, as a NaN kept by the sums below does, rather than -inf.
      if (std::any_of(row, row + cols, [](scalar_t e) { return e != e; }))
        p.running_max[b] = std::numeric_limits<scalar_t>::quiet_NaN();
      continue;
    }
    const scalar_t sum = row_forward_sum(row, cols, new_max, p.log_cutoff);
    p.running_sum[b] = p.running_sum[b] * exp_vectorizable(old_max - new_max) + sum;
    p.running_max[b] = new_max;
  }
}

template <typename scalar_t>
int64_t mixture_tile_backward_cpu(const MixtureTileParams<scalar_t>& p) {
  const int64_t cols = p.num_cols;
  int64_t nonzeros = 0;
  const int threads =
      team_size_after_product(p.num_threads, p.num_rows, tile_ns(p.num_rows, cols));
#pragma omp parallel for schedule(static) num_threads(threads) reduction(+ : nonzeros)
  for (int64_t b = 0; b < p.num_rows; ++b) {
    scalar_t* row = p.scores + b * p.ld;
    const scalar_t grad = p.grad[b];
    const scalar_t log_likelihood = p.log_likelihood[b];
    if (grad == scalar_t(0) || log_likelihood == minus_infinity<scalar_t>()) {
      std::fill(row, row + cols, scalar_t(0));
      continue;
    }
    const scalar_t half_norm = p.row_norm != nullptr ? scalar_t(0.5) * p.row_norm[b] : scalar_t(0);
    const scalar_t* offset = p.offset;
    const scalar_t* scale = p.scale;
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c)
      row[c] = offset[c] + scale[c] * (row[c] - half_norm) - log_likelihood;
    nonzeros += row_exp_weights(row, cols, grad, p.log_cutoff);
  }
  return nonzeros;
}

template <typename scalar_t>
void mixture_sparse_products_cpu(const MixtureSparseProductParams<scalar_t>& p) {
  // At most 1 / 32 of the weights are nonzero (the binding's kSparseRatio); the scan of the tile
  // for them is the rest.
  const double scan_ns = 0.2 * static_cast<double>(p.num_rows) * static_cast<double>(p.num_cols);
  const double nonzero_ns = 0.5 * scan_ns / 32;
  if (p.row_sums != nullptr) {
    const int threads = team_size_after_product(
        p.num_threads, p.num_rows, scan_ns + nonzero_ns * static_cast<double>(p.row_width));
    // Each row's sum belongs to one iteration: no two threads write the same output.
#pragma omp parallel for schedule(dynamic, 16) num_threads(threads)
    for (int64_t b = 0; b < p.num_rows; ++b) {
      const scalar_t* w = p.weights + b * p.ld;
      scalar_t* out = p.row_sums + b * p.row_width;
      for (int64_t c = 0; c < p.num_cols; ++c) {
        if (w[c] == scalar_t(0)) continue;
        const scalar_t weight = w[c];
        const scalar_t* factor = p.row_factors + c * p.row_width;
#pragma omp simd
        for (int64_t j = 0; j < p.row_width; ++j) out[j] += weight * factor[j];
      }
    }
  }
  if (p.col_sums != nullptr) {
    // Columns in blocks owned by one iteration each; every block scans the rows in order, so
    // the sums are the same for any thread count.
    constexpr int64_t kColumnBlock = 16;
    const int64_t blocks = (p.num_cols + kColumnBlock - 1) / kColumnBlock;
    const int threads = team_size_after_product(
        p.num_threads, blocks, scan_ns + nonzero_ns * static_cast<double>(p.col_width));
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (int64_t block = 0; block < blocks; ++block) {
      const int64_t col_begin = block * kColumnBlock;
      const int64_t col_end = std::min(p.num_cols, col_begin + kColumnBlock);
      for (int64_t b = 0; b < p.num_rows; ++b) {
        const scalar_t* w = p.weights + b * p.ld;
        const scalar_t* factor = p.col_factors + b * p.col_width;
        for (int64_t c = col_begin; c < col_end; ++c) {
          if (w[c] == scalar_t(0)) continue;
          const scalar_t weight = w[c];
          scalar_t* out = p.col_sums + c * p.col_width;
#pragma omp simd
          for (int64_t j = 0; j < p.col_width; ++j) out[j] += weight * factor[j];
        }
      }
    }
  }
}

template void mixture_log_likelihood_direct_cpu<float>(const MixtureLogLikelihoodParams<float>&);
template void mixture_log_likelihood_direct_cpu<double>(const MixtureLogLikelihoodParams<double>&);
template void mixture_log_likelihood_direct_backward_cpu<float>(
    const MixtureLogLikelihoodBackwardParams<float>&);
template void mixture_log_likelihood_direct_backward_cpu<double>(
    const MixtureLogLikelihoodBackwardParams<double>&);
template void mixture_tile_forward_cpu<float>(const MixtureTileParams<float>&);
template void mixture_tile_forward_cpu<double>(const MixtureTileParams<double>&);
template <typename scalar_t>
void mixture_penalty_tile_cpu(const MixturePenaltyTileParams<scalar_t>& p) {
  const int64_t cols = p.num_cols;
  const int threads =
      team_size_after_product(p.num_threads, p.num_rows, tile_ns(p.num_rows, cols));
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t b = 0; b < p.num_rows; ++b) {
    scalar_t* r = p.responsibilities + b * p.ld;
    scalar_t* s = p.slopes + b * p.ld;
    // The row's mean slope in double, in interleaved partial sums (a vectorized loop; the
    // same bits for any thread count: each row is one iteration).
    constexpr int kLanes = 8;
    double partial[kLanes] = {};
    int64_t c = 0;
    for (; c + kLanes <= cols; c += kLanes)
      for (int lane = 0; lane < kLanes; ++lane)
        partial[lane] += static_cast<double>(r[c + lane]) * static_cast<double>(s[c + lane]);
    double total = 0;
    for (; c < cols; ++c) total += static_cast<double>(r[c]) * static_cast<double>(s[c]);
    for (int lane = 0; lane < kLanes; ++lane) total += partial[lane];
    const scalar_t mean_slope = static_cast<scalar_t>(total);
    const scalar_t grad = p.grad[b];
    p.mean_slope[b] = mean_slope;
#pragma omp simd
    for (int64_t k = 0; k < cols; ++k) {
      const scalar_t q = grad * r[k];
      r[k] = q;
      s[k] = q * (s[k] - mean_slope);
    }
  }
}

template <typename scalar_t>
void mixture_penalty_sparse_tile_cpu(const MixturePenaltySparseTileParams<scalar_t>& p) {
  struct Nonzero {
    int64_t col;
    scalar_t q, w;   // r and s until the row's mean slope is known
  };
  const int64_t width = p.width, precision_width = p.precision_width, col_width = p.col_width;
  std::vector<std::vector<Nonzero>> nonzeros(p.num_rows);
  // At most 1 / 32 of r is nonzero; the scan of the tile for them is the rest.
  const double scan_ns = 0.2 * static_cast<double>(p.num_rows) * static_cast<double>(p.num_cols);
  const double nonzero_ns = 0.5 * scan_ns / 32 * static_cast<double>(2 * width + col_width);
  const int threads = team_size_after_product(p.num_threads, p.num_rows, scan_ns + nonzero_ns);
#pragma omp parallel for schedule(dynamic, 16) num_threads(threads)
  for (int64_t b = 0; b < p.num_rows; ++b) {
    const scalar_t* r = p.responsibilities + b * p.ld;
    const scalar_t* left = p.slope_left + b * width;
    std::vector<Nonzero>& row = nonzeros[b];
    double total = 0;   // sum_c r s, in column order
    for (int64_t c = 0; c < p.num_cols; ++c) {
      if (r[c] == scalar_t(0)) continue;
      const scalar_t* factor = p.row_factors + c * width;
      scalar_t slope = 0;
#pragma omp simd reduction(+ : slope)
      for (int64_t j = 0; j < width; ++j) slope += left[j] * factor[j];
      row.push_back({c, r[c], slope});
      total += static_cast<double>(r[c]) * static_cast<double>(slope);
    }
    const scalar_t mean_slope = static_cast<scalar_t>(total);
    const scalar_t grad = p.grad[b];
    p.mean_slope[b] = mean_slope;
    for (Nonzero& entry : row) {
      const scalar_t q = grad * entry.q;
      entry.w = q * (entry.w - mean_slope);
      entry.q = q;
    }
    if (p.row_sums == nullptr) continue;
    scalar_t* sums = p.row_sums + b * width;
    scalar_t* precision_sums = p.precision_sums + b * precision_width;
    std::fill(sums, sums + width, scalar_t(0));
    std::fill(precision_sums, precision_sums + precision_width, scalar_t(0));
    for (const Nonzero& entry : row) {
      const scalar_t* factor = p.row_factors + entry.col * width;
      const scalar_t* precision = p.precision + entry.col * precision_width;
#pragma omp simd
      for (int64_t j = 0; j < width; ++j) sums[j] += entry.w * factor[j];
#pragma omp simd
      for (int64_t j = 0; j < precision_width; ++j) precision_sums[j] += entry.q * precision[j];
    }
  }
  if (p.slope_sums == nullptr) return;
  // Column sums: blocks of columns owned by one iteration each, every block taking the rows in
  // order (each row's nonzeros are in column order), so the sums are the same for any thread
  // count.
  constexpr int64_t kColumnBlock = 64;
  const int64_t blocks = (p.num_cols + kColumnBlock - 1) / kColumnBlock;
  const int block_threads = team_size_after_product(p.num_threads, blocks, nonzero_ns);
#pragma omp parallel for schedule(dynamic, 1) num_threads(block_threads)
  for (int64_t block = 0; block < blocks; ++block) {
    const int64_t col_begin = block * kColumnBlock;
    const int64_t col_end = std::min(p.num_cols, col_begin + kColumnBlock);
    for (int64_t b = 0; b < p.num_rows; ++b) {
      const scalar_t* left = p.slope_left + b * width;
      const scalar_t* factor = p.col_factors + b * col_width;
      for (const Nonzero& entry : nonzeros[b]) {
        if (entry.col < col_begin) continue;
        if (entry.col >= col_end) break;
        scalar_t* slope_sums = p.slope_sums + entry.col * width;
        scalar_t* weight_sums = p.weight_sums + entry.col * col_width;
#pragma omp simd
        for (int64_t j = 0; j < width; ++j) slope_sums[j] += entry.q * left[j];
#pragma omp simd
        for (int64_t j = 0; j < col_width; ++j) weight_sums[j] += entry.w * factor[j];
      }
    }
  }
}

template <typename scalar_t>
void mixture_penalty_direct_cpu(const MixturePenaltyDirectParams<scalar_t>& p) {
  // With diff = x_b - mu_c, P = 1 / var, r_bc = exp(E_bc - ll_b), s_bc = -sum_k U_bk diff_k P_k,
  // q = grad_b r, w = q (s - sum_c r s) (the tiled form's notation):
  //   out_grad_b  = sum_c r s           out_x_b   = sum_c P (-w diff - q U_b)
  //   out_means_c = sum_b P (q U_b + w diff)
  //   out_var_ck  = sum_b P^2 q U_bk diff_k + P^2 w diff_k^2 / 2 - P w / 2  (isotropic: sum over k)
  //   out_log_weights_c = sum_b w
  // Sums over rows and components in double, rows in order: the same bits on every call.
  const int64_t dim = p.dim, components = p.num_components;
  const ComponentTable<scalar_t> table(p.var, p.log_weights, components, dim, p.diagonal);
  const int64_t var_size = p.diagonal ? components * dim : components;
  std::vector<double> means_sum(p.out_means != nullptr ? components * dim : 0, 0.0);
  std::vector<double> var_sum(p.out_var != nullptr ? var_size : 0, 0.0);
  std::vector<double> weight_sum(p.out_log_weights != nullptr ? components : 0, 0.0);
  std::vector<double> responsibility(components), slope(components), x_sum(dim);
  for (int64_t b = 0; b < p.num_rows; ++b) {
    const scalar_t* x = p.x + b * dim;
    const scalar_t* u = p.grad_grad_x + b * dim;
    const double log_likelihood = p.log_likelihood[b];
    const double grad = p.grad[b];
    std::fill(x_sum.begin(), x_sum.end(), 0.0);
    double mean_slope = 0;
    if (log_likelihood != -std::numeric_limits<double>::infinity()) {
      for (int64_t c = 0; c < components; ++c) {
        const scalar_t* mean = p.means + c * dim;
        const scalar_t* precision = table.precision.data() + c * dim;
        double squared = 0, s = 0;
        for (int64_t k = 0; k < dim; ++k) {
          const double diff = double(x[k]) - double(mean[k]), weighted = diff * precision[k];
          squared += diff * weighted;
          s -= double(u[k]) * weighted;
        }
        const double exponent = double(table.offset[c]) - 0.5 * squared;
        responsibility[c] = std::exp(exponent - log_likelihood);   // 0 for a component off
        slope[c] = s;
        mean_slope += responsibility[c] * s;
      }
      for (int64_t c = 0; c < components; ++c) {
        const double q = grad * responsibility[c], w = q * (slope[c] - mean_slope);
        if (q == 0) continue;
        const scalar_t* mean = p.means + c * dim;
        const scalar_t* precision = table.precision.data() + c * dim;
        double var_term = 0;
        for (int64_t k = 0; k < dim; ++k) {
          const double diff = double(x[k]) - double(mean[k]), prec = precision[k];
          x_sum[k] -= prec * (w * diff + q * u[k]);
          if (!means_sum.empty()) means_sum[c * dim + k] += prec * (q * u[k] + w * diff);
          if (var_sum.empty()) continue;
          const double term = prec * prec * (q * u[k] * diff + 0.5 * w * diff * diff) - 0.5 * prec * w;
          if (p.diagonal)
            var_sum[c * dim + k] += term;
          else
            var_term += term;
        }
        if (!var_sum.empty() && !p.diagonal) var_sum[c] += var_term;
        if (!weight_sum.empty()) weight_sum[c] += w;
      }
    }
    if (p.out_grad != nullptr) p.out_grad[b] = static_cast<scalar_t>(mean_slope);
    if (p.out_x != nullptr)
      for (int64_t k = 0; k < dim; ++k) p.out_x[b * dim + k] = static_cast<scalar_t>(x_sum[k]);
  }
  for (size_t i = 0; i < means_sum.size(); ++i) p.out_means[i] = static_cast<scalar_t>(means_sum[i]);
  for (size_t i = 0; i < var_sum.size(); ++i) p.out_var[i] = static_cast<scalar_t>(var_sum[i]);
  for (size_t i = 0; i < weight_sum.size(); ++i)
    p.out_log_weights[i] = static_cast<scalar_t>(weight_sum[i]);
}

template void mixture_penalty_direct_cpu<float>(const MixturePenaltyDirectParams<float>&);
template void mixture_penalty_direct_cpu<double>(const MixturePenaltyDirectParams<double>&);
template int64_t mixture_tile_backward_cpu<float>(const MixtureTileParams<float>&);
template int64_t mixture_tile_backward_cpu<double>(const MixtureTileParams<double>&);
template void mixture_sparse_products_cpu<float>(const MixtureSparseProductParams<float>&);
template void mixture_sparse_products_cpu<double>(const MixtureSparseProductParams<double>&);
template void mixture_penalty_tile_cpu<float>(const MixturePenaltyTileParams<float>&);
template void mixture_penalty_sparse_tile_cpu<float>(
    const MixturePenaltySparseTileParams<float>&);
template void mixture_penalty_sparse_tile_cpu<double>(
    const MixturePenaltySparseTileParams<double>&);
template void mixture_penalty_tile_cpu<double>(const MixturePenaltyTileParams<double>&);

}  // namespace gmk

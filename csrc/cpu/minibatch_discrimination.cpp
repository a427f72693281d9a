// CPU kernels of minibatch_discrimination (math in csrc/kernels/minibatch_discrimination.h).
//
// One work item handles one kernel b: its N x C coordinates are copied, transposed, into a
// per-thread buffer X[c * stride + j] = M[j, b, c], so that the inner loop runs over a contiguous
// run of j in SIMD lanes. Blocks of kRowBlock rows i meet all columns j > i in lane groups; each
// e_ij is computed once and added to both out_i (row sums, kept in lane accumulators) and out_j
// (column sums), halving the work by the symmetry e_ij = e_ji. The backward recomputes e_ij
// the same way and uses w_ij = (g_i + g_j) e_ij for both gradient terms.
// When there are fewer than kMinKernelsForSymmetry kernels, kernels alone cannot keep the
// threads busy; items are then (kernel, chunk of rows) and each row sums over all j != i itself
// (twice the arithmetic, but no shared writes).
// With few samples (N <= kMaxSamplesForKernelLanes) a lane group over j is mostly padding and the
// pairs inside a row block run scalar: the lanes then run over kernels instead. One work item is
// a group of kLanes kernels, transposed to X[j][c][lane] = M[j, b0 + lane, c]; each pair i < j is
// visited once for all the group's kernels, every lane doing useful work when B fills the group.
// Every output element is accumulated by one thread in a fixed order, and the choice between the
// two schemes depends on the shape only: results are identical run to run and for any thread
// count, without atomics.
#include "../kernels/minibatch_discrimination.h"
#include "multiply_add.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

namespace gmk {
namespace {

// exp(x) for x <= 0, branch-free so that the lane loops vectorize (Cephes' expf: x = n ln2 + r
// with |r| <= ln2 / 2, a degree-6 polynomial in r, then 2^n through the exponent bits; < 1.5
// ulp, measured). Below -87, exp(x) < 1.7e-38 is returned as 0 so that 2^n stays a normal float.
// Vectorization needs: always inlined (GCC otherwise keeps an out-of-line scalar call in some
// instantiations), and every floating-point operation unconditional with the result selected
// at the end (with the default trapping math, a multiply inside a conditional arm is not
// if-converted).
__attribute__((always_inline)) inline float exp_nonpositive(float x) {
  const bool underflow = x < -87.0f;
  const float clamped = underflow ? -87.0f : x;
  // Adding 1.5 * 2^23 rounds x / ln2 to the nearest integer n and leaves n in the low bits.
  const float shift = 12582912.0f;
  const float shifted = clamped * 1.44269504088896341f + shift;
  const float n = shifted - shift;
  // ln2 in two parts (Cody-Waite) so that r = x - n ln2 is exact to float precision.
  float r = multiply_add(n, -0.693359375f, clamped);
  r = multiply_add(n, 2.12194440e-4f, r);
  float poly = 1.9875691500e-4f;
  poly = multiply_add(poly, r, 1.3981999507e-3f);
  poly = multiply_add(poly, r, 8.3334519073e-3f);
  poly = multiply_add(poly, r, 4.1665795894e-2f);
  poly = multiply_add(poly, r, 1.6666665459e-1f);
  poly = multiply_add(poly, r, 5.0000001201e-1f);
  poly = multiply_add(poly, r * r, r) + 1.0f;
  int32_t shifted_bits, shift_bits;
  std::memcpy(&shifted_bits, &shifted, sizeof(float));
  std::memcpy(&shift_bits, &shift, sizeof(float));
  const int32_t scale_bits = (shifted_bits - shift_bits + 127) << 23;
  float scale;
  std::memcpy(&scale, &scale_bits, sizeof(float));
  const float value = poly * scale;
  return underflow ? 0.0f : value;
}

// The double version (Cephes' exp: the same reduction, a (3, 4) Pade form in r; < 1.5 ulp);
// below -708 the result is returned as 0.
__attribute__((always_inline)) inline double exp_nonpositive(double x) {
  const bool underflow = x < -708.0;
  const double clamped = underflow ? -708.0 : x;
  const double shift = 6755399441055744.0;  // 1.5 * 2^52
  const double shifted = clamped * 1.4426950408889634074 + shift;
  const double n = shifted - shift;
  double r = clamped - n * 6.93145751953125e-1;
  r = r - n * 1.42860682030941723212e-6;
  const double rr = r * r;
  const double odd =
      r * ((1.26177193074810590878e-4 * rr + 3.02994407707441961300e-2) * rr + 1.0);
  const double even =
      ((3.00198505138664455042e-6 * rr + 2.52448340349684104192e-3) * rr +
       2.27265548208155028766e-1) * rr + 2.0;
  const double poly = 1.0 + 2.0 * (odd / (even - odd));
  int64_t shifted_bits, shift_bits;
  std::memcpy(&shifted_bits, &shifted, sizeof(double));
  std::memcpy(&shift_bits, &shift, sizeof(double));
  const int64_t scale_bits = (shifted_bits - shift_bits + 1023) << 52;
  double scale;
  std::memcpy(&scale, &scale_bits, sizeof(double));
  const double value = poly * scale;
  return underflow ? 0.0 : value;
}

// One group of SIMD lanes: a 64-byte AVX-512 register (two AVX2 ones).
template <typename scalar_t>
constexpr int kLanes = 64 / sizeof(scalar_t);
// Rows per block: each column group loaded from L1 serves kRowBlock rows, and the row
// accumulators of a block still fit in registers.
constexpr int kRowBlock = 4;
// With at least this many kernels, one kernel per work item keeps 8-16 threads busy and the
// symmetric scheme pays; below it, rows are split across threads (see the file comment).
constexpr int64_t kMinKernelsForSymmetry = 8;
constexpr int64_t kRowChunk = 64;  // rows per work item in the row-split scheme
// Below about this many pair-coordinates (N^2 B C, ~0.5 ms of work) one thread does it all:
// waking a thread team costs more than it saves (results do not depend on the thread count).
constexpr int64_t kMinParallelWork = int64_t(1) << 21;
// Up to this many samples (with at least kMinKernelsForSymmetry kernels, and a group's
// coordinates N x C x kLanes within 64 KiB) the lanes run over kernels (see the file comment).
// Measured on one thread, lanes over kernels against lanes over j: N = 16, B = 256, C = 8 3.4x
// faster forward, 4x backward; N = 64, B = 8..256, 1.4-2.4x; N = 128, B = 50 or 256, 1.4-2x;
// N = 256 mixed (B = 50 1.1-1.25x faster, B = 8 1.3x slower), so it stops at 128.
constexpr int64_t kMaxSamplesForKernelLanes = 128;
constexpr int64_t kMaxGroupCoordinates = 1024;  // N x C
static_assert(kRowChunk % kRowBlock == 0, "row chunks hold whole row blocks");

template <typename scalar_t>
inline scalar_t sign_times(scalar_t difference, scalar_t weight) {
  // The L1 subgradient at a tie is 0, as torch.abs's backward.
  // Two selects rather than nested branches, so that the lane loops if-convert and vectorize.
  const scalar_t positive = difference > 0 ? weight : scalar_t(0);
  return difference < 0 ? -weight : positive;
}

// One kernel's coordinates, transposed and padded with kLanes zeros so that a lane group may
// start anywhere in [0, N) (lanes past the end are masked, never read as data).
template <typename scalar_t>
struct KernelSlice {
  int64_t num_samples = 0, dim = 0, stride = 0;
  std::vector<scalar_t> coords;  // dim x stride
  int64_t kernel = -1;           // which kernel `coords` holds

  void load(const scalar_t* M, int64_t num_kernels, int64_t b) {
    if (kernel == b) return;
    for (int64_t j = 0; j < num_samples; ++j) {
      const scalar_t* row = M + (j * num_kernels + b) * dim;
      for (int64_t c = 0; c < dim; ++c) coords[c * stride + j] = row[c];
    }
    kernel = b;
  }
};

template <typename scalar_t>
KernelSlice<scalar_t> make_slice(int64_t num_samples, int64_t dim) {
  KernelSlice<scalar_t> slice;
  slice.num_samples = num_samples;
  slice.dim = dim;
  slice.stride = num_samples + kLanes<scalar_t>;
  slice.coords.assign(dim * slice.stride, scalar_t(0));
  return slice;
}

// sum_c |X_ci - X_cj| for lanes j .. j + kLanes - 1 into dist.
template <typename scalar_t, int kDim>
inline void lane_distances(const scalar_t* X, int64_t stride, int64_t dim, int64_t i, int64_t j,
                           scalar_t* dist) {
  constexpr int L = kLanes<scalar_t>;
  const int64_t dims = kDim > 0 ? kDim : dim;
#pragma omp simd
  for (int l = 0; l < L; ++l) dist[l] = 0;
  for (int64_t c = 0; c < dims; ++c) {
    const scalar_t xi = X[c * stride + i];
    const scalar_t* xj = X + c * stride + j;
#pragma omp simd
    for (int l = 0; l < L; ++l) dist[l] += std::abs(xj[l] - xi);
  }
}

template <typename scalar_t, int kDim>
inline scalar_t pair_term(const scalar_t* X, int64_t stride, int64_t dim, int64_t i, int64_t j) {
  const int64_t dims = kDim > 0 ? kDim : dim;
  scalar_t dist = 0;
  for (int64_t c = 0; c < dims; ++c) dist += std::abs(X[c * stride + j] - X[c * stride + i]);
  return exp_nonpositive(-dist);
}

// Rows i0 .. i0 + rows - 1 (rows <= kRowBlock) against columns [j0, j1), which never contain
// those rows: sums[i] += sum_j e_ij, and with kScatter also sums[j] += sum_i e_ij.
template <typename scalar_t, int kDim, bool kScatter>
void forward_block(const scalar_t* X, int64_t stride, int64_t dim, int64_t i0, int rows,
                   int64_t j0, int64_t j1, scalar_t* sums) {
  constexpr int L = kLanes<scalar_t>;
  scalar_t row_acc[kRowBlock][L] = {};
  for (int64_t j = j0; j < j1; j += L) {
    const int64_t valid = std::min<int64_t>(L, j1 - j);
    scalar_t col[L] = {};
    for (int r = 0; r < kRowBlock; ++r) {
      if (r >= rows) break;
      scalar_t dist[L];
      lane_distances<scalar_t, kDim>(X, stride, dim, i0 + r, j, dist);
#pragma omp simd
      for (int l = 0; l < L; ++l) {
        const scalar_t term = exp_nonpositive(-dist[l]);   // every lane, then masked
        const scalar_t e = l < valid ? term : scalar_t(0);
        row_acc[r][l] += e;
        col[l] += e;
      }
    }
    if (kScatter) {
#pragma omp simd
      for (int l = 0; l < L; ++l) sums[j + l] += col[l];
    }
  }
  for (int r = 0; r < rows; ++r) {
    scalar_t total = 0;
    for (int l = 0; l < L; ++l) total += row_acc[r][l];
    sums[i0 + r] += total;
  }
}

// Pairs inside one row block: each e_ij once, added to both rows.
template <typename scalar_t, int kDim>
void forward_within_block(const scalar_t* X, int64_t stride, int64_t dim, int64_t i0, int rows,
                          scalar_t* sums) {
  for (int r = 0; r < rows; ++r) {
    for (int s = r + 1; s < rows; ++s) {
      const scalar_t e = pair_term<scalar_t, kDim>(X, stride, dim, i0 + r, i0 + s);
      sums[i0 + r] += e;
      sums[i0 + s] += e;
    }
  }
}

// Rows [row_begin, row_end) of one kernel into sums (zeroed by the caller). symmetric: the rows
// are all N samples and each pair is visited once; otherwise each row visits every j != i.
template <typename scalar_t, int kDim>
void forward_kernel(const KernelSlice<scalar_t>& slice, int64_t row_begin, int64_t row_end,
                    bool symmetric, scalar_t* sums) {
  const scalar_t* X = slice.coords.data();
  const int64_t n = slice.num_samples, stride = slice.stride, dim = slice.dim;
  for (int64_t i0 = row_begin; i0 < row_end; i0 += kRowBlock) {
    const int rows = static_cast<int>(std::min<int64_t>(kRowBlock, row_end - i0));
    if (symmetric) {
      forward_block<scalar_t, kDim, true>(X, stride, dim, i0, rows, i0 + rows, n, sums);
    } else {
      forward_block<scalar_t, kDim, false>(X, stride, dim, i0, rows, 0, i0, sums);
      forward_block<scalar_t, kDim, false>(X, stride, dim, i0, rows, i0 + rows, n, sums);
    }
    forward_within_block<scalar_t, kDim>(X, stride, dim, i0, rows, sums);
  }
}

// Gradient coordinates c0 .. c0 + kGradDims - 1 of rows i0 .. i0 + rows - 1 against columns
// [j0, j1): with w_ij = (g_i + g_j) e_ij and t = w_ij sign(X_cj - X_ci),
// grads[c][i] += sum_j t, and with kScatter grads[c][j] -= sum_i t.
template <typename scalar_t, int kDim, int kGradDims, bool kScatter>
void backward_block(const scalar_t* X, const scalar_t* G, int64_t stride, int64_t dim,
                    int64_t c0, int64_t i0, int rows, int64_t j0, int64_t j1, scalar_t* grads) {
  constexpr int L = kLanes<scalar_t>;
  scalar_t row_acc[kRowBlock][kGradDims][L] = {};
  for (int64_t j = j0; j < j1; j += L) {
    const int64_t valid = std::min<int64_t>(L, j1 - j);
    scalar_t col[kGradDims][L] = {};
    for (int r = 0; r < kRowBlock; ++r) {
      if (r >= rows) break;
      const int64_t i = i0 + r;
      scalar_t dist[L], weight[L];
      lane_distances<scalar_t, kDim>(X, stride, dim, i, j, dist);
      const scalar_t gi = G[i];
#pragma omp simd
      for (int l = 0; l < L; ++l)
      {
        // Computed for every lane (the padding is readable) and then masked: a load or a
        // multiply under a condition would keep the loop from vectorizing.
        const scalar_t w = (gi + G[j + l]) * exp_nonpositive(-dist[l]);
        weight[l] = l < valid ? w : scalar_t(0);
      }
      for (int cc = 0; cc < kGradDims; ++cc) {
        const scalar_t xi = X[(c0 + cc) * stride + i];
        const scalar_t* xj = X + (c0 + cc) * stride + j;
#pragma omp simd
        for (int l = 0; l < L; ++l) {
          const scalar_t t = sign_times(xj[l] - xi, weight[l]);
          row_acc[r][cc][l] += t;
          col[cc][l] -= t;
        }
      }
    }
    if (kScatter) {
      for (int cc = 0; cc < kGradDims; ++cc) {
        scalar_t* out = grads + (c0 + cc) * stride + j;
#pragma omp simd
        for (int l = 0; l < L; ++l) out[l] += col[cc][l];
      }
    }
  }
  for (int r = 0; r < rows; ++r) {
    for (int cc = 0; cc < kGradDims; ++cc) {
      scalar_t total = 0;
      for (int l = 0; l < L; ++l) total += row_acc[r][cc][l];
      grads[(c0 + cc) * stride + i0 + r] += total;
    }
  }
}

template <typename scalar_t, int kDim>
void backward_within_block(const scalar_t* X, const scalar_t* G, int64_t stride, int64_t dim,
                           int64_t i0, int rows, scalar_t* grads) {
  const int64_t dims = kDim > 0 ? kDim : dim;
  for (int r = 0; r < rows; ++r) {
    for (int s = r + 1; s < rows; ++s) {
      const int64_t i = i0 + r, j = i0 + s;
      const scalar_t weight = (G[i] + G[j]) * pair_term<scalar_t, kDim>(X, stride, dim, i, j);
      for (int64_t c = 0; c < dims; ++c) {
        const scalar_t t = sign_times(X[c * stride + j] - X[c * stride + i], weight);
        grads[c * stride + i] += t;
        grads[c * stride + j] -= t;
      }
    }
  }
}

// Columns of one row block, gradient coordinates in passes of at most kMaxFixedKernelDim (one
// pass when C <= kMaxFixedKernelDim; a larger C recomputes e_ij once per pass).
template <typename scalar_t, int kDim, bool kScatter>
void backward_columns(const scalar_t* X, const scalar_t* G, int64_t stride, int64_t dim,
                      int64_t i0, int rows, int64_t j0, int64_t j1, scalar_t* grads) {
  if (j0 >= j1) return;
  if constexpr (kDim > 0) {
    backward_block<scalar_t, kDim, kDim, kScatter>(X, G, stride, dim, 0, i0, rows, j0, j1, grads);
  } else {
    for (int64_t c0 = 0; c0 < dim; c0 += kMaxFixedKernelDim) {
      const int64_t count = std::min<int64_t>(kMaxFixedKernelDim, dim - c0);
      dispatch_kernel_dim(count, [&](auto grad_dims) {
        // count is in [1, kMaxFixedKernelDim], so grad_dims is never the run-time case 0.
        constexpr int kGradDims = decltype(grad_dims)::value;
        if constexpr (kGradDims > 0) {
          backward_block<scalar_t, 0, kGradDims, kScatter>(X, G, stride, dim, c0, i0, rows, j0,
                                                           j1, grads);
        }
      });
    }
  }
}

template <typename scalar_t, int kDim>
void backward_kernel(const KernelSlice<scalar_t>& slice, const scalar_t* G, int64_t row_begin,
                     int64_t row_end, bool symmetric, scalar_t* grads) {
  const scalar_t* X = slice.coords.data();
  const int64_t n = slice.num_samples, stride = slice.stride, dim = slice.dim;
  for (int64_t i0 = row_begin; i0 < row_end; i0 += kRowBlock) {
    const int rows = static_cast<int>(std::min<int64_t>(kRowBlock, row_end - i0));
    if (symmetric) {
      backward_columns<scalar_t, kDim, true>(X, G, stride, dim, i0, rows, i0 + rows, n, grads);
    } else {
      backward_columns<scalar_t, kDim, false>(X, G, stride, dim, i0, rows, 0, i0, grads);
      backward_columns<scalar_t, kDim, false>(X, G, stride, dim, i0, rows, i0 + rows, n, grads);
    }
    backward_within_block<scalar_t, kDim>(X, G, stride, dim, i0, rows, grads);
  }
}

// One group of kLanes kernels [b0, b0 + kLanes), transposed: X[(j * dim + c) * L + lane] =
// M[j, b0 + lane, c], lanes past B zero (their results are computed and never written out).
template <typename scalar_t>
void load_kernel_group(const scalar_t* M, int64_t n, int64_t kernels, int64_t dim, int64_t b0,
                       scalar_t* X) {
  constexpr int L = kLanes<scalar_t>;
  const int64_t valid = std::min<int64_t>(L, kernels - b0);
  for (int64_t j = 0; j < n; ++j) {
    scalar_t* row = X + j * dim * L;
    if (valid < L) std::fill(row, row + dim * L, scalar_t(0));
    for (int64_t l = 0; l < valid; ++l) {
      const scalar_t* coords = M + (j * kernels + b0 + l) * dim;
      for (int64_t c = 0; c < dim; ++c) row[c * L + l] = coords[c];
    }
  }
}

// sums[i * L + lane] = sum over j != i of e_ij for the group's kernels; each pair i < j once,
// added to both rows (out_i sums its partners in increasing order of j).
template <typename scalar_t, int kDim>
void forward_kernel_lanes(const scalar_t* X, int64_t n, int64_t dim, scalar_t* sums) {
  constexpr int L = kLanes<scalar_t>;
  const int64_t dims = kDim > 0 ? kDim : dim;
  std::fill(sums, sums + n * L, scalar_t(0));
  for (int64_t i = 0; i < n; ++i) {
    const scalar_t* xi = X + i * dims * L;
    for (int64_t j = i + 1; j < n; ++j) {
      const scalar_t* xj = X + j * dims * L;
      scalar_t dist[L] = {};
      for (int64_t c = 0; c < dims; ++c) {
#pragma omp simd
        for (int l = 0; l < L; ++l) dist[l] += std::abs(xj[c * L + l] - xi[c * L + l]);
      }
#pragma omp simd
      for (int l = 0; l < L; ++l) {
        const scalar_t e = exp_nonpositive(-dist[l]);
        sums[i * L + l] += e;
        sums[j * L + l] += e;
      }
    }
  }
}

// grads[(i * dim + c) * L + lane] = sum over j != i of w_ij sign(X_jc - X_ic), with
// w_ij = (g_i + g_j) e_ij and G[j * L + lane] = g_jb (zero in padding lanes, so is w there).
template <typename scalar_t, int kDim>
void backward_kernel_lanes(const scalar_t* X, const scalar_t* G, int64_t n, int64_t dim,
                           scalar_t* grads) {
  constexpr int L = kLanes<scalar_t>;
  const int64_t dims = kDim > 0 ? kDim : dim;
  std::fill(grads, grads + n * dims * L, scalar_t(0));
  for (int64_t i = 0; i < n; ++i) {
    const scalar_t* xi = X + i * dims * L;
    scalar_t* gi = grads + i * dims * L;
    for (int64_t j = i + 1; j < n; ++j) {
      const scalar_t* xj = X + j * dims * L;
      scalar_t* gj = grads + j * dims * L;
      scalar_t dist[L] = {};
      for (int64_t c = 0; c < dims; ++c) {
#pragma omp simd
        for (int l = 0; l < L; ++l) dist[l] += std::abs(xj[c * L + l] - xi[c * L + l]);
      }
      scalar_t weight[L];
#pragma omp simd
      for (int l = 0; l < L; ++l) weight[l] = (G[i * L + l] + G[j * L + l]) * exp_nonpositive(-dist[l]);
      for (int64_t c = 0; c < dims; ++c) {
#pragma omp simd
        for (int l = 0; l < L; ++l) {
          const scalar_t t = sign_times(xj[c * L + l] - xi[c * L + l], weight[l]);
          gi[c * L + l] += t;
          gj[c * L + l] -= t;
        }
      }
    }
  }
}

// Depends on the shape only, so results stay identical for any thread count.
bool uses_kernel_lanes(int64_t num_samples, int64_t num_kernels, int64_t dim) {
  return num_samples <= kMaxSamplesForKernelLanes && num_kernels >= kMinKernelsForSymmetry &&
         num_samples * dim <= kMaxGroupCoordinates;
}

// Threads for the lanes-over-kernels scheme: one work item per group of kLanes kernels.
template <typename scalar_t>
int kernel_lane_threads(int64_t n, int64_t kernels, int64_t dim, int num_threads) {
  const int64_t groups = (kernels + kLanes<scalar_t> - 1) / kLanes<scalar_t>;
  const int64_t work = n * n * kernels * std::max<int64_t>(dim, 1);
  return work < kMinParallelWork ? 1 : static_cast<int>(std::min<int64_t>(num_threads, groups));
}

template <typename scalar_t>
void forward_cpu_kernel_lanes(const MinibatchDiscriminationParams<scalar_t>& p) {
  constexpr int L = kLanes<scalar_t>;
  const int64_t n = p.num_samples, kernels = p.num_kernels, dim = p.kernel_dim;
  const int64_t groups = (kernels + L - 1) / L;
#pragma omp parallel num_threads(kernel_lane_threads<scalar_t>(n, kernels, dim, p.num_threads))
  {
    std::vector<scalar_t> X(std::max<int64_t>(n * dim * L, 1)), sums(n * L);
#pragma omp for schedule(dynamic, 1)
    for (int64_t group = 0; group < groups; ++group) {
      const int64_t b0 = group * L, valid = std::min<int64_t>(L, kernels - b0);
      load_kernel_group(p.M, n, kernels, dim, b0, X.data());
      dispatch_kernel_dim(dim, [&](auto fixed_dim) {
        forward_kernel_lanes<scalar_t, decltype(fixed_dim)::value>(X.data(), n, dim, sums.data());
      });
      for (int64_t i = 0; i < n; ++i) {
        for (int64_t l = 0; l < valid; ++l) p.out[i * kernels + b0 + l] = sums[i * L + l];
      }
    }
  }
}

template <typename scalar_t>
void backward_cpu_kernel_lanes(const MinibatchDiscriminationBackwardParams<scalar_t>& p) {
  constexpr int L = kLanes<scalar_t>;
  const int64_t n = p.num_samples, kernels = p.num_kernels, dim = p.kernel_dim;
  const int64_t groups = (kernels + L - 1) / L;
#pragma omp parallel num_threads(kernel_lane_threads<scalar_t>(n, kernels, dim, p.num_threads))
  {
    std::vector<scalar_t> X(n * dim * L), G(n * L), grads(n * dim * L);
#pragma omp for schedule(dynamic, 1)
    for (int64_t group = 0; group < groups; ++group) {
      const int64_t b0 = group * L, valid = std::min<int64_t>(L, kernels - b0);
      load_kernel_group(p.M, n, kernels, dim, b0, X.data());
      for (int64_t j = 0; j < n; ++j) {
        for (int64_t l = 0; l < L; ++l) {
          G[j * L + l] = l < valid ? p.grad_out[j * kernels + b0 + l] : scalar_t(0);
        }
      }
      dispatch_kernel_dim(dim, [&](auto fixed_dim) {
        backward_kernel_lanes<scalar_t, decltype(fixed_dim)::value>(X.data(), G.data(), n, dim,
                                                                    grads.data());
      });
      for (int64_t i = 0; i < n; ++i) {
        for (int64_t l = 0; l < valid; ++l) {
          scalar_t* out = p.grad_M + (i * kernels + b0 + l) * dim;
          for (int64_t c = 0; c < dim; ++c) out[c] = grads[(i * dim + c) * L + l];
        }
      }
    }
  }
}

// The double backward, rows [row_begin, row_end) of one kernel against every j (the self pair
// contributes nothing: its signs are all 0, so h = 0). X, V: the kernel's M and V transposed
// (dim x stride), G: g_jb. Columns in blocks of kColumnBlock: the first loop over a block
// sums e h into the row's grad_out term and keeps w = (g_i + g_j) e h per column in L1, then one
// loop per coordinate c sums w s_ijc. Accumulated in scalar_t, as the backward.
constexpr int64_t kColumnBlock = 256;

template <typename scalar_t, int kDim>
void double_backward_rows(const scalar_t* X, const scalar_t* V, const scalar_t* G, int64_t n,
                          int64_t stride, int64_t dim, int64_t row_begin, int64_t row_end,
                          scalar_t* grad_g, scalar_t* grads) {
  const int64_t dims = kDim > 0 ? kDim : dim;
  scalar_t weights[kColumnBlock];
  for (int64_t i = row_begin; i < row_end; ++i) {
    const scalar_t gi = G[i];
    scalar_t total_g = 0;
    for (int64_t j0 = 0; j0 < n; j0 += kColumnBlock) {
      const int64_t width = std::min(kColumnBlock, n - j0);
#pragma omp simd reduction(+ : total_g)
      for (int64_t l = 0; l < width; ++l) {
        const int64_t j = j0 + l;
        scalar_t dist = 0, h = 0;
        for (int64_t c = 0; c < dims; ++c) {
          const scalar_t difference = X[c * stride + j] - X[c * stride + i];
          dist += std::abs(difference);
          h += sign_times(difference, V[c * stride + i] - V[c * stride + j]);
        }
        const scalar_t eh = exp_nonpositive(-dist) * h;
        total_g += eh;
        weights[l] = (gi + G[j]) * eh;
      }
      for (int64_t c = 0; c < dims; ++c) {
        const scalar_t* xc = X + c * stride + j0;
        const scalar_t xi = X[c * stride + i];
        scalar_t total = 0;
#pragma omp simd reduction(+ : total)
        for (int64_t l = 0; l < width; ++l) total += sign_times(xc[l] - xi, weights[l]);
        grads[c * stride + i] += total;
      }
    }
    grad_g[i] = total_g;
  }
}

struct WorkSplit {
  bool symmetric;
  int64_t chunks_per_kernel;
  int64_t items;
  int threads;
};

WorkSplit split_work(int64_t num_samples, int64_t num_kernels, int64_t dim, int num_threads) {
  WorkSplit split;
  split.symmetric = num_kernels >= kMinKernelsForSymmetry;
  split.chunks_per_kernel =
      split.symmetric ? 1 : (num_samples + kRowChunk - 1) / kRowChunk;
  split.items = num_kernels * split.chunks_per_kernel;
  const int64_t work = num_samples * num_samples * num_kernels * std::max<int64_t>(dim, 1);
  split.threads = work < kMinParallelWork ? 1 : num_threads;
  return split;
}

}  // namespace

template <typename scalar_t>
void minibatch_discrimination_forward_cpu(const MinibatchDiscriminationParams<scalar_t>& p) {
  const int64_t n = p.num_samples, kernels = p.num_kernels, dim = p.kernel_dim;
  if (n == 0 || kernels == 0) return;
  if (uses_kernel_lanes(n, kernels, dim)) return forward_cpu_kernel_lanes(p);
  const WorkSplit split = split_work(n, kernels, dim, p.num_threads);
#pragma omp parallel num_threads(split.threads)
  {
    KernelSlice<scalar_t> slice = make_slice<scalar_t>(n, dim);
    std::vector<scalar_t> sums(slice.stride);
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < split.items; ++item) {
      const int64_t b = item / split.chunks_per_kernel;
      const int64_t row_begin = split.symmetric ? 0 : (item % split.chunks_per_kernel) * kRowChunk;
      const int64_t row_end = split.symmetric ? n : std::min(n, row_begin + kRowChunk);
      slice.load(p.M, kernels, b);
      std::fill(sums.begin(), sums.end(), scalar_t(0));
      dispatch_kernel_dim(dim, [&](auto fixed_dim) {
        forward_kernel<scalar_t, decltype(fixed_dim)::value>(slice, row_begin, row_end,
                                                             split.symmetric, sums.data());
      });
      for (int64_t i = row_begin; i < row_end; ++i) p.out[i * kernels + b] = sums[i];
    }
  }
}

template <typename scalar_t>
void minibatch_discrimination_backward_cpu(
    const MinibatchDiscriminationBackwardParams<scalar_t>& p) {
  const int64_t n = p.num_samples, kernels = p.num_kernels, dim = p.kernel_dim;
  if (n == 0 || kernels == 0 || dim == 0) return;
  if (uses_kernel_lanes(n, kernels, dim)) return backward_cpu_kernel_lanes(p);
  const WorkSplit split = split_work(n, kernels, dim, p.num_threads);
#pragma omp parallel num_threads(split.threads)
  {
    KernelSlice<scalar_t> slice = make_slice<scalar_t>(n, dim);
    std::vector<scalar_t> grad_column(slice.stride, scalar_t(0));  // g_jb, zero-padded
    std::vector<scalar_t> grads(dim * slice.stride);
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < split.items; ++item) {
      const int64_t b = item / split.chunks_per_kernel;
      const int64_t row_begin = split.symmetric ? 0 : (item % split.chunks_per_kernel) * kRowChunk;
      const int64_t row_end = split.symmetric ? n : std::min(n, row_begin + kRowChunk);
      if (slice.kernel != b) {
        for (int64_t j = 0; j < n; ++j) grad_column[j] = p.grad_out[j * kernels + b];
      }
      slice.load(p.M, kernels, b);
      std::fill(grads.begin(), grads.end(), scalar_t(0));
      dispatch_kernel_dim(dim, [&](auto fixed_dim) {
        backward_kernel<scalar_t, decltype(fixed_dim)::value>(
            slice, grad_column.data(), row_begin, row_end, split.symmetric, grads.data());
      });
      for (int64_t i = row_begin; i < row_end; ++i) {
        scalar_t* out = p.grad_M + (i * kernels + b) * dim;
        for (int64_t c = 0; c < dim; ++c) out[c] = grads[c * slice.stride + i];
      }
    }
  }
}

// The double backward: work items are (kernel, chunk of kRowChunk rows), each row summing over
// every j (no symmetry: a gradient penalty's backward, where one pass with the backward's
// arithmetic is the cost to beat). Each output element is written by one item.
template <typename scalar_t>
void minibatch_discrimination_double_backward_cpu(
    const MinibatchDiscriminationDoubleBackwardParams<scalar_t>& p) {
  const int64_t n = p.num_samples, kernels = p.num_kernels, dim = p.kernel_dim;
  if (n == 0 || kernels == 0) return;
  const int64_t chunks = (n + kRowChunk - 1) / kRowChunk, items = kernels * chunks;
  const int64_t work = n * n * kernels * std::max<int64_t>(dim, 1);
  const int threads = work < kMinParallelWork ? 1 : p.num_threads;
#pragma omp parallel num_threads(threads)
  {
    KernelSlice<scalar_t> slice = make_slice<scalar_t>(n, dim);
    KernelSlice<scalar_t> upstream = make_slice<scalar_t>(n, dim);
    std::vector<scalar_t> grad_column(slice.stride, scalar_t(0));  // g_jb
    std::vector<scalar_t> grad_g(slice.stride), grads(dim * slice.stride);
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t b = item / chunks, row_begin = (item % chunks) * kRowChunk;
      const int64_t row_end = std::min(n, row_begin + kRowChunk);
      if (slice.kernel != b) {
        for (int64_t j = 0; j < n; ++j) grad_column[j] = p.grad_out[j * kernels + b];
      }
      slice.load(p.M, kernels, b);
      upstream.load(p.grad_grad_M, kernels, b);
      for (int64_t c = 0; c < dim; ++c) {
        std::fill(grads.begin() + c * slice.stride + row_begin,
                  grads.begin() + c * slice.stride + row_end, scalar_t(0));
      }
      dispatch_kernel_dim(dim, [&](auto fixed_dim) {
        double_backward_rows<scalar_t, decltype(fixed_dim)::value>(
            slice.coords.data(), upstream.coords.data(), grad_column.data(), n, slice.stride, dim,
            row_begin, row_end, grad_g.data(), grads.data());
      });
      for (int64_t i = row_begin; i < row_end; ++i) {
        if (p.grad_grad_out != nullptr) p.grad_grad_out[i * kernels + b] = grad_g[i];
        if (p.grad_M == nullptr) continue;
        scalar_t* out = p.grad_M + (i * kernels + b) * dim;
        for (int64_t c = 0; c < dim; ++c) out[c] = grads[c * slice.stride + i];
      }
    }
  }
}

template void minibatch_discrimination_forward_cpu<float>(
    const MinibatchDiscriminationParams<float>&);
template void minibatch_discrimination_forward_cpu<double>(
    const MinibatchDiscriminationParams<double>&);
template void minibatch_discrimination_backward_cpu<float>(
    const MinibatchDiscriminationBackwardParams<float>&);
template void minibatch_discrimination_backward_cpu<double>(
    const MinibatchDiscriminationBackwardParams<double>&);
template void minibatch_discrimination_double_backward_cpu<float>(
    const MinibatchDiscriminationDoubleBackwardParams<float>&);
template void minibatch_discrimination_double_backward_cpu<double>(
    const MinibatchDiscriminationDoubleBackwardParams<double>&);

}  // namespace gmk

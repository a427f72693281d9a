// mixture_log_likelihood: for every row x_b of x (B, d),
//   log p(x_b) = logsumexp_c E_bc,  E_bc = lw_c - 1/2 sum_k [ (x_bk - mu_ck)^2 / v_ck + log(2 pi v_ck) ]
// with v (C,) isotropic per component (v_ck = v_c) or (C, d) diagonal. The gradients use the
// responsibilities r_bc = exp(E_bc - log p(x_b)), recomputed in the backward (from E_bc when the
// binding keeps it, see below), and
// W_bc = grad_b r_bc:
//   grad_x_b   = sum_c W_bc (mu_c - x_b) / v_c        grad_lw_c = sum_b W_bc
//   grad_mu_c  = sum_b W_bc (x_b - mu_c) / v_c
//   grad_v_ck  = sum_b W_bc [ (x_bk - mu_ck)^2 / v_ck^2 - 1 / v_ck ] / 2   (summed over k when isotropic)
//
// Two ways to compute it, chosen by the binding:
// - direct (C <= kDirectMaxComponents, MD-GAN's simplex head; on the CPU also any small
//   problem, see the binding): one pass over the rows, the C exponents of a block of rows held
//   in a small local array, differences taken directly.
// - tiled (large C, Parzen windows): the binding computes a (rows x cols) tile of inner products
//   with a BLAS matrix product and hands it to the epilogues below, which turn it into exponents
//   E_bc = offset_c + scale_c * (S_bc - row_norm_b / 2) and fold them into a running logsumexp
//   (forward) or overwrite the tile with W_bc (backward). No B x C buffer exists, unless the
//   caller keeps the forward's exponents for the backward: then the tiles are blocks of whole
//   rows of that (B, C) table, and the backward's epilogue reads E_bc with unit scale and zero
//   offset.
// All tensors are contiguous row-major; no torch types appear here.
#pragma once
#include <cstdint>

#include "cuda_status.h"

namespace gmk {

// The simplex case (C = d + 1 with d <= 64) and anything smaller takes the direct path.
constexpr int64_t kDirectMaxComponents = 65;

template <typename scalar_t>
struct MixtureLogLikelihoodParams {
  const scalar_t* x;            // (num_rows, dim)
  const scalar_t* means;        // (num_components, dim)
  const scalar_t* var;          // (num_components,) or (num_components, dim)
  const scalar_t* log_weights;  // (num_components,), -inf switches a component off
  scalar_t* log_likelihood;     // (num_rows,), written
  int64_t num_rows;
  int64_t num_components;
  int64_t dim;
  bool diagonal;                // var is (num_components, dim)
  int num_threads;
};

template <typename scalar_t>
struct MixtureLogLikelihoodBackwardParams {
  const scalar_t* grad;            // (num_rows,) gradient of the loss w.r.t. log_likelihood
  const scalar_t* x;
  const scalar_t* means;
  const scalar_t* var;
  const scalar_t* log_weights;
  const scalar_t* log_likelihood;  // (num_rows,) the forward's output: the saved logsumexp
  scalar_t* grad_x;                // (num_rows, dim), written when x_grad
  scalar_t* grad_means;            // (num_components, dim), written when component_grads
  scalar_t* grad_var;              // shape of var, written when component_grads
  scalar_t* grad_log_weights;      // (num_components,), written when component_grads
  bool x_grad;
  bool component_grads;
  // CUDA only (the CPU path reduces over rows itself): (num_rows, num_components) scratch that
  // receives W_bc, from which the column sums are reduced by a second kernel.
  scalar_t* weights_scratch;
  int64_t num_rows;
  int64_t num_components;
  int64_t dim;
  bool diagonal;
  int num_threads;
};

// One tile of the tiled path: rows [0, num_rows) x columns [0, num_cols) of `scores`, whose
// row b starts at scores + b * ld. scores holds S_bc on entry.
template <typename scalar_t>
struct MixtureTileParams {
  scalar_t* scores;              // (num_rows, ld), overwritten (exponents or W_bc)
  const scalar_t* row_norm;      // (num_rows,) or null (treated as zeros)
  const scalar_t* scale;         // (num_cols,)
  const scalar_t* offset;        // (num_cols,), -inf for switched-off components
  // forward: running logsumexp state per row, updated (start from max = -inf, sum = 0)
  scalar_t* running_max;
  scalar_t* running_sum;
  // backward: the upstream gradient and the saved log-likelihood per row; responsibilities
  // below exp(log_cutoff) are flushed to 0 (the binding sets log(eps / C): all of them together
  // weigh less than one rounding of the row's total), which makes peaked rows sparse.
  const scalar_t* grad;
  const scalar_t* log_likelihood;
  // Both passes: terms exp(E - max) below exp(log_cutoff) may be left out of the forward's sums
  // (the CPU float kernels with AVX-512 do, on rows where most terms are such) and are 0 in the
  // backward.
  scalar_t log_cutoff;
  int64_t num_rows;
  int64_t num_cols;
  int64_t ld;
  int num_threads;
};

// The backward's two products for one tile of W (rows x cols, row stride ld) when W is sparse:
//   row_sums[b]  += sum_c W_bc row_factors[c]     (what grad_x needs)
//   col_sums[c]  += sum_b W_bc col_factors[b]     (what the component gradients need)
// visiting only the nonzero W_bc. Either output may be null.
template <typename scalar_t>
struct MixtureSparseProductParams {
  const scalar_t* weights;        // (num_rows, ld)
  const scalar_t* row_factors;    // (num_cols, row_width)
  scalar_t* row_sums;             // (num_rows, row_width), accumulated
  const scalar_t* col_factors;    // (num_rows, col_width)
  scalar_t* col_sums;             // (num_cols, col_width), accumulated
  int64_t num_rows;
  int64_t num_cols;
  int64_t ld;
  int64_t row_width;
  int64_t col_width;
  int num_threads;
};

// One tile of the double backward of a gradient penalty in x (mixture_log_likelihood_double_
// backward): from the responsibilities r_bc and the slopes s_bc = dE_bc/dx_b . U_b of a tile of
// whole rows (every component), per row
//   mean_slope_b = sum_c r_bc s_bc,  q_bc = grad_b r_bc,  w_bc = q_bc (s_bc - mean_slope_b),
// q and w written over r and s.
template <typename scalar_t>
struct MixturePenaltyTileParams {
  scalar_t* responsibilities;    // (num_rows, ld): r in, q out
  scalar_t* slopes;              // (num_rows, ld): s in, w out
  const scalar_t* grad;          // (num_rows,)
  scalar_t* mean_slope;          // (num_rows,) out
  int64_t num_rows;
  int64_t num_cols;
  int64_t ld;
  int num_threads;
};

// The same tile when its responsibilities are sparse (at most 1 / kSparseRatio of r nonzero,
// the binding's rule): per row, in one pass over r, the nonzero r_bc, their slopes s_bc (row b's
// slope operand . component c's row factors, what the dense tile's product gives there), the
// mean slope, q and w there (both vanish where r does), and the row sums w R and q P; then
// from those nonzeros the column sums q^T slope_left and w^T col_factors, accumulated. The
// dense tile's results (mixture_penalty_tile_cpu and its four products) without their passes
// over B x C. Null outputs are not wanted: row_sums with precision_sums, slope_sums with
// weight_sums.
template <typename scalar_t>
struct MixturePenaltySparseTileParams {
  const scalar_t* responsibilities;  // (num_rows, ld): r
  const scalar_t* grad;              // (num_rows,)
  const scalar_t* slope_left;        // (num_rows, width)
  const scalar_t* row_factors;       // (num_cols, width): R
  const scalar_t* precision;         // (num_cols, precision_width): P
  const scalar_t* col_factors;       // (num_rows, col_width)
  scalar_t* mean_slope;              // (num_rows,) out
  scalar_t* row_sums;                // (num_rows, width) out
  scalar_t* precision_sums;          // (num_rows, precision_width) out
  scalar_t* slope_sums;              // (num_cols, width), accumulated
  scalar_t* weight_sums;             // (num_cols, col_width), accumulated
  int64_t num_rows;
  int64_t num_cols;
  int64_t ld;
  int64_t width;
  int64_t precision_width;
  int64_t col_width;
  int num_threads;
};

// The double backward of a gradient penalty in x for small problems (the binding's
// kPenaltyDirectMaxWork: MD-GAN's simplex head under WGAN-GP), in one pass over the rows on one
// thread, differences taken directly: the same results as the tiled form (the binding's
// tiled_double_backward_cpu), without its matrix products and thread teams, whose fixed costs
// are most of the time at such sizes. Outputs that are not wanted are null.
template <typename scalar_t>
struct MixturePenaltyDirectParams {
  const scalar_t* grad_grad_x;     // (num_rows, dim): U, the cotangent of grad_x
  const scalar_t* grad;            // (num_rows,)
  const scalar_t* x;
  const scalar_t* means;
  const scalar_t* var;
  const scalar_t* log_weights;
  const scalar_t* log_likelihood;  // (num_rows,) the forward's output
  scalar_t* out_grad;              // (num_rows,)
  scalar_t* out_x;                 // (num_rows, dim)
  scalar_t* out_means;             // (num_components, dim)
  scalar_t* out_var;               // shape of var
  scalar_t* out_log_weights;       // (num_components,)
  int64_t num_rows;
  int64_t num_components;
  int64_t dim;
  bool diagonal;
};

template <typename scalar_t>
void mixture_log_likelihood_direct_cpu(const MixtureLogLikelihoodParams<scalar_t>& params);
template <typename scalar_t>
void mixture_log_likelihood_direct_backward_cpu(
    const MixtureLogLikelihoodBackwardParams<scalar_t>& params);
// running (max, sum) <- logsumexp state of the old state and this tile's exponents
template <typename scalar_t>
void mixture_tile_forward_cpu(const MixtureTileParams<scalar_t>& params);
// scores <- W_bc = grad_b exp(E_bc - log_likelihood_b) (0 where grad_b = 0, the row has
// likelihood 0, or E_bc - log_likelihood_b < log_cutoff); returns the number of nonzero W_bc.
template <typename scalar_t>
int64_t mixture_tile_backward_cpu(const MixtureTileParams<scalar_t>& params);
template <typename scalar_t>
void mixture_sparse_products_cpu(const MixtureSparseProductParams<scalar_t>& params);
template <typename scalar_t>
void mixture_penalty_tile_cpu(const MixturePenaltyTileParams<scalar_t>& params);
template <typename scalar_t>
void mixture_penalty_sparse_tile_cpu(const MixturePenaltySparseTileParams<scalar_t>& params);
template <typename scalar_t>
void mixture_penalty_direct_cpu(const MixturePenaltyDirectParams<scalar_t>& params);

// CUDA launchers (csrc/cuda/mixture_log_likelihood.cu); `stream` is a cudaStream_t, the result
// says whether every launch succeeded (cuda_status.h). The direct backward writes grad_x and
// weights_scratch, then reduces the component gradients from them.
template <typename scalar_t>
CudaStatus mixture_log_likelihood_direct_cuda(const MixtureLogLikelihoodParams<scalar_t>& params,
                                              void* stream);
template <typename scalar_t>
CudaStatus mixture_log_likelihood_direct_backward_cuda(
    const MixtureLogLikelihoodBackwardParams<scalar_t>& params, void* stream);
template <typename scalar_t>
CudaStatus mixture_tile_forward_cuda(const MixtureTileParams<scalar_t>& params, void* stream);
template <typename scalar_t>
CudaStatus mixture_tile_backward_cuda(const MixtureTileParams<scalar_t>& params, void* stream);

}  // namespace gmk

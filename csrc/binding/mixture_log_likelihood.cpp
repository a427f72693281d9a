// Tensors -> MixtureLogLikelihood params, argument checks, and the CPU/CUDA registrations of
// gmkernels::mixture_log_likelihood and gmkernels::mixture_log_likelihood_backward (schemas in
// registry.cpp).
//
// Two paths (csrc/kernels/mixture_log_likelihood.h):
// - C <= kDirectMaxComponents: the direct kernels do everything.
// - larger C: this file orchestrates tiles. The (rows x cols) inner products that dominate the
//   cost (2 B C d FLOPs) are a dense matrix product, and no hand-written loop nest comes near a
//   tuned BLAS on it, so each tile is computed with at::mm (MKL/OpenBLAS on CPU, cuBLAS on CUDA)
//   into one reused buffer and handed to the torch-free epilogue kernels (online logsumexp
//   forward; W_bc = grad_b r_bc backward). The backward's reductions over rows and components
//   are two more products per tile (W R and W^T X below), accumulated across tiles. Memory stays
//   O((B + C) d + tile), never B x C.
//   Inputs are shifted by the centre of the means first, so that the expansion
//   ||x - mu||^2 = ||x||^2 - 2 x.mu + ||mu||^2 does not cancel catastrophically in float32 for
//   data far from the origin (the squared distance is shift-invariant, so are the gradients).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <limits>

#include "../kernels/mixture_log_likelihood.h"
#include "checks.h"

#ifdef GMKERNELS_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#endif

namespace gmk {
namespace {

// Tiles of at most kTileCols components x kTileElements / kTileCols rows: wide enough for the
// BLAS product to run near its peak rate, small enough (16 MiB in float32) to stay in the last
// level cache between the product and its epilogue.
constexpr int64_t kTileCols = 1024;
constexpr int64_t kTileElements = int64_t(1) << 22;
constexpr double kLog2Pi = 1.83787706640934548356;
// A tile of W with at most 1 / kSparseRatio nonzeros takes the sparse products (CPU): a dense
// product runs ~20-40x more FLOPs per second than the scattered row updates.
constexpr int64_t kSparseRatio = 32;

void check_mixture_log_likelihood_args(const at::Tensor& x, const at::Tensor& means,
                                       const at::Tensor& var, const at::Tensor& log_weights) {
  check_float_tensor(x, "x");
  check_same_dtype_device(x, means, "x", "means");
  check_same_dtype_device(x, var, "x", "var");
  check_same_dtype_device(x, log_weights, "x", "log_weights");
  TORCH_CHECK(x.dim() == 2, "x must be (B, d), got shape ", x.sizes());
  TORCH_CHECK(means.dim() == 2 && means.size(1) == x.size(1) && means.size(0) >= 1,
              "means must be (C, d) with C >= 1 and d = ", x.size(1), ", got shape ",
              means.sizes());
  const int64_t num_components = means.size(0);
  TORCH_CHECK((var.dim() == 1 && var.size(0) == num_components) ||
                  (var.dim() == 2 && var.size(0) == num_components && var.size(1) == x.size(1)),
              "var must be (C,) or (C, d) = (", num_components, ", ", x.size(1), "), got shape ",
              var.sizes());
  TORCH_CHECK(log_weights.dim() == 1 && log_weights.size(0) == num_components,
              "log_weights must be (C,) = (", num_components, "), got shape ", log_weights.sizes());
}

bool is_diagonal(const at::Tensor& var) { return var.dim() == 2; }

// ---- direct path -------------------------------------------------------------------------

// The fields both direct-path params structs share.
template <typename scalar_t, typename Params>
void fill_inputs(Params& p, const at::Tensor& x, const at::Tensor& means, const at::Tensor& var,
                 const at::Tensor& log_weights) {
  p.x = x.data_ptr<scalar_t>();
  p.means = means.data_ptr<scalar_t>();
  p.var = var.data_ptr<scalar_t>();
  p.log_weights = log_weights.data_ptr<scalar_t>();
  p.num_rows = x.size(0);
  p.num_components = means.size(0);
  p.dim = x.size(1);
  p.diagonal = is_diagonal(var);
  p.num_threads = cpu_threads();
}

template <typename scalar_t>
MixtureLogLikelihoodParams<scalar_t> direct_params(const at::Tensor& x, const at::Tensor& means,
                                                   const at::Tensor& var,
                                                   const at::Tensor& log_weights,
                                                   const at::Tensor& out) {
  MixtureLogLikelihoodParams<scalar_t> p;
  fill_inputs<scalar_t>(p, x, means, var, log_weights);
  p.log_likelihood = out.data_ptr<scalar_t>();
  return p;
}

// The four gradients: the requested ones allocated zero (a path fills them), the others
// 0-element tensors (the schema's outputs are fixed; nobody reads those).
struct Gradients {
  at::Tensor x, means, var, log_weights;

  static at::Tensor wanted(const at::Tensor& like, bool want) {
    return want ? at::zeros_like(like) : at::empty({0}, like.options());
  }
  Gradients(const at::Tensor& x_, const at::Tensor& means_, const at::Tensor& var_,
            const at::Tensor& log_weights_, bool x_grad, bool component_grads)
      : x(wanted(x_, x_grad)),
        means(wanted(means_, component_grads)),
        var(wanted(var_, component_grads)),
        log_weights(wanted(log_weights_, component_grads)) {}

  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> tuple() const {
    return {x, means, var, log_weights};
  }
};

template <typename scalar_t>
MixtureLogLikelihoodBackwardParams<scalar_t> direct_backward_params(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& means, const at::Tensor& var,
    const at::Tensor& log_weights, const at::Tensor& log_likelihood, Gradients& out,
    bool x_grad, bool component_grads) {
  MixtureLogLikelihoodBackwardParams<scalar_t> p;
  fill_inputs<scalar_t>(p, x, means, var, log_weights);
  p.grad = grad.data_ptr<scalar_t>();
  p.log_likelihood = log_likelihood.data_ptr<scalar_t>();
  p.grad_x = out.x.data_ptr<scalar_t>();
  p.grad_means = out.means.data_ptr<scalar_t>();
  p.grad_var = out.var.data_ptr<scalar_t>();
  p.grad_log_weights = out.log_weights.data_ptr<scalar_t>();
  p.x_grad = x_grad;
  p.component_grads = component_grads;
  p.weights_scratch = nullptr;
  return p;
}

// ---- tiled path ----------------------------------------------------------------------------

// The tiled path's operands: E_bc = offset_c + scale_c * ((left right^T)_bc - row_norm_b / 2),
// from the inputs centred at the mean of the means (xc, mc).
//   isotropic: left = xc, right = mc, row_norm = ||xc_b||^2, scale = 1 / v_c,
//              offset = lw - d log(2 pi v) / 2 - ||mc||^2 / (2 v)
//   diagonal:  left = [xc^2 | xc], right = [-P / 2 | mc P] with P = 1 / v, no row_norm,
//              scale = 1, offset = lw - sum_k log(2 pi v_k) / 2 - sum_k mc_k^2 P_k / 2
struct TiledProblem {
  at::Tensor xc, mc, precision;
  at::Tensor left, right, row_norm, scale, offset;
  bool diagonal;

  TiledProblem(const at::Tensor& x, const at::Tensor& means, const at::Tensor& var,
               const at::Tensor& log_weights)
      : diagonal(is_diagonal(var)) {
    const at::Tensor centre = means.mean(0, /*keepdim=*/true);
    xc = x - centre;
    mc = means - centre;
    precision = var.reciprocal();
    const int64_t dim = x.size(1);
    if (diagonal) {
      left = at::cat({xc * xc, xc}, 1);
      right = at::cat({precision * -0.5, mc * precision}, 1);
      scale = at::ones_like(log_weights);
      offset = log_weights - 0.5 * (at::log(var).sum(1) + dim * kLog2Pi) -
               0.5 * (mc * mc * precision).sum(1);
    } else {
      left = xc;
      right = mc;
      row_norm = (xc * xc).sum(1);
      scale = precision;
      offset = log_weights - 0.5 * dim * (at::log(var) + kLog2Pi) -
               0.5 * precision * (mc * mc).sum(1);
    }
  }
};

struct TileGrid {
  int64_t rows, cols, tile_rows, tile_cols;

  TileGrid(int64_t num_rows, int64_t num_cols) : rows(num_rows), cols(num_cols) {
    tile_cols = std::min(num_cols, kTileCols);
    tile_rows = std::max<int64_t>(1, std::min(num_rows, kTileElements / tile_cols));
  }
};

template <typename scalar_t>
MixtureTileParams<scalar_t> tile_params(const TiledProblem& problem, const at::Tensor& scores,
                                        int64_t row_begin, int64_t col_begin) {
  MixtureTileParams<scalar_t> p{};
  p.scores = scores.data_ptr<scalar_t>();
  p.row_norm = problem.row_norm.defined() ? problem.row_norm.data_ptr<scalar_t>() + row_begin
                                          : nullptr;
  p.scale = problem.scale.data_ptr<scalar_t>() + col_begin;
  p.offset = problem.offset.data_ptr<scalar_t>() + col_begin;
  p.num_rows = scores.size(0);
  p.num_cols = scores.size(1);
  p.ld = scores.size(1);
  p.num_threads = cpu_threads();
  return p;
}

// Calls visit(row_begin, col_begin, scores) for every tile, scores = left[rows] right[cols]^T
// written into one reused buffer.
template <typename Visit>
void for_each_tile(const TiledProblem& problem, Visit visit) {
  const TileGrid grid(problem.left.size(0), problem.right.size(0));
  const at::Tensor buffer = at::empty({grid.tile_rows * grid.tile_cols}, problem.left.options());
  for (int64_t row_begin = 0; row_begin < grid.rows; row_begin += grid.tile_rows) {
    const int64_t rows = std::min(grid.tile_rows, grid.rows - row_begin);
    const at::Tensor left_rows = problem.left.narrow(0, row_begin, rows);
    for (int64_t col_begin = 0; col_begin < grid.cols; col_begin += grid.tile_cols) {
      const int64_t cols = std::min(grid.tile_cols, grid.cols - col_begin);
      at::Tensor scores = buffer.narrow(0, 0, rows * cols).view({rows, cols});
      at::mm_out(scores, left_rows, problem.right.narrow(0, col_begin, cols).t());
      visit(row_begin, col_begin, scores);
    }
  }
}

// The kernels of one device; the orchestration below is shared.
struct CpuKernels {
  template <typename scalar_t>
  static void direct(const MixtureLogLikelihoodParams<scalar_t>& p) {
    mixture_log_likelihood_direct_cpu(p);
  }
  template <typename scalar_t>
  static void direct_backward(MixtureLogLikelihoodBackwardParams<scalar_t>& p,
                              const at::Tensor& /*x*/, int64_t /*num_components*/) {
    mixture_log_likelihood_direct_backward_cpu(p);
  }
  template <typename scalar_t>
  static void tile_forward(const MixtureTileParams<scalar_t>& p) {
    mixture_tile_forward_cpu(p);
  }
  // Returns the number of nonzero W_bc, so that sparse tiles skip the dense products.
  template <typename scalar_t>
  static int64_t tile_backward(const MixtureTileParams<scalar_t>& p) {
    return mixture_tile_backward_cpu(p);
  }
  static constexpr bool kSparseProducts = true;
  template <typename scalar_t>
  static void sparse_products(const MixtureSparseProductParams<scalar_t>& p) {
    mixture_sparse_products_cpu(p);
  }
};

#ifdef GMKERNELS_WITH_CUDA
struct CudaKernels {
  static void* stream() { return at::cuda::getCurrentCUDAStream().stream(); }
  template <typename scalar_t>
  static void direct(const MixtureLogLikelihoodParams<scalar_t>& p) {
    mixture_log_likelihood_direct_cuda(p, stream());
  }
  // The CUDA direct backward writes W_bc into a (B, C) scratch (small: C <= 65) and reduces it
  // per component in a second kernel.
  template <typename scalar_t>
  static void direct_backward(MixtureLogLikelihoodBackwardParams<scalar_t>& p,
                              const at::Tensor& x, int64_t num_components) {
    const at::Tensor scratch = at::empty({x.size(0), num_components}, x.options());
    p.weights_scratch = scratch.data_ptr<scalar_t>();
    mixture_log_likelihood_direct_backward_cuda(p, stream());
  }
  template <typename scalar_t>
  static void tile_forward(const MixtureTileParams<scalar_t>& p) {
    mixture_tile_forward_cuda(p, stream());
  }
  // cuBLAS products are cheap next to a sparse pass on the GPU: tiles always stay dense.
  template <typename scalar_t>
  static int64_t tile_backward(const MixtureTileParams<scalar_t>& p) {
    mixture_tile_backward_cuda(p, stream());
    return -1;
  }
  static constexpr bool kSparseProducts = false;
  template <typename scalar_t>
  static void sparse_products(const MixtureSparseProductParams<scalar_t>&) {}
};
#endif

template <typename scalar_t, typename Kernels>
at::Tensor tiled_forward(const at::Tensor& x, const at::Tensor& means, const at::Tensor& var,
                         const at::Tensor& log_weights) {
  const TiledProblem problem(x, means, var, log_weights);
  at::Tensor running_max =
      at::full({x.size(0)}, -std::numeric_limits<double>::infinity(), x.options());
  at::Tensor running_sum = at::zeros({x.size(0)}, x.options());
  for_each_tile(problem, [&](int64_t row_begin, int64_t col_begin, const at::Tensor& scores) {
    MixtureTileParams<scalar_t> p = tile_params<scalar_t>(problem, scores, row_begin, col_begin);
    p.running_max = running_max.data_ptr<scalar_t>() + row_begin;
    p.running_sum = running_sum.data_ptr<scalar_t>() + row_begin;
    Kernels::tile_forward(p);
  });
  // Rows with every component off keep max = -inf, sum = 0: log-likelihood -inf.
  return running_max + running_sum.log();
}

// Per tile, the epilogue turns the inner products into W_bc; then W R accumulates
// sum_c W_bc [mc_c / v_c | 1 / v_c] (what grad_x needs) and W^T X accumulates
// sum_b W_bc [xc_b | xc_b^2 | 1 ...] (what the component gradients need): two dense products,
// or on the CPU, when at most 1 / kSparseRatio of W is nonzero (peaked responsibilities, the
// usual Parzen case), a pass over the nonzeros only.
template <typename scalar_t, typename Kernels>
void tiled_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& means,
                    const at::Tensor& var, const at::Tensor& log_weights,
                    const at::Tensor& log_likelihood, Gradients& out, bool x_grad,
                    bool component_grads) {
  const TiledProblem problem(x, means, var, log_weights);
  const at::Tensor& xc = problem.xc;
  const at::Tensor& mc = problem.mc;
  const at::Tensor& precision = problem.precision;
  const int64_t dim = x.size(1);
  at::Tensor row_factors, row_sums, col_factors, col_sums;
  if (x_grad) {
    row_factors = problem.diagonal
        ? at::cat({mc * precision, precision}, 1)                                      // (C, 2d)
        : at::cat({mc * precision.unsqueeze(1), precision.unsqueeze(1)}, 1);           // (C, d + 1)
    row_sums = at::zeros({x.size(0), row_factors.size(1)}, x.options());
  }
  if (component_grads) {
    const at::Tensor ones_rows = at::ones({x.size(0), 1}, x.options());
    col_factors = problem.diagonal
        ? at::cat({xc, xc * xc, ones_rows}, 1)                                         // (B, 2d + 1)
        : at::cat({xc, ones_rows, problem.row_norm.unsqueeze(1)}, 1);                  // (B, d + 2)
    col_sums = at::zeros({means.size(0), col_factors.size(1)}, x.options());
  }
  // Responsibilities below eps / C are dropped: together they weigh less than one rounding.
  const scalar_t log_cutoff = static_cast<scalar_t>(
      std::log(std::numeric_limits<scalar_t>::epsilon() / double(means.size(0))));
  for_each_tile(problem, [&](int64_t row_begin, int64_t col_begin, const at::Tensor& scores) {
    MixtureTileParams<scalar_t> p = tile_params<scalar_t>(problem, scores, row_begin, col_begin);
    p.grad = grad.data_ptr<scalar_t>() + row_begin;
    p.log_likelihood = log_likelihood.data_ptr<scalar_t>() + row_begin;
    p.log_cutoff = log_cutoff;
    const int64_t nonzeros = Kernels::tile_backward(p);
    const int64_t rows = scores.size(0), cols = scores.size(1);
    if (Kernels::kSparseProducts && nonzeros >= 0 && nonzeros * kSparseRatio <= rows * cols) {
      MixtureSparseProductParams<scalar_t> s{};
      s.weights = scores.data_ptr<scalar_t>();
      if (x_grad) {
        s.row_factors = row_factors.data_ptr<scalar_t>() + col_begin * row_factors.size(1);
        s.row_sums = row_sums.data_ptr<scalar_t>() + row_begin * row_sums.size(1);
        s.row_width = row_factors.size(1);
      }
      if (component_grads) {
        s.col_factors = col_factors.data_ptr<scalar_t>() + row_begin * col_factors.size(1);
        s.col_sums = col_sums.data_ptr<scalar_t>() + col_begin * col_sums.size(1);
        s.col_width = col_factors.size(1);
      }
      s.num_rows = rows;
      s.num_cols = cols;
      s.ld = cols;
      s.num_threads = cpu_threads();
      Kernels::sparse_products(s);
      return;
    }
    if (x_grad)
      row_sums.narrow(0, row_begin, rows).addmm_(scores, row_factors.narrow(0, col_begin, cols));
    if (component_grads)
      col_sums.narrow(0, col_begin, cols).addmm_(scores.t(), col_factors.narrow(0, row_begin, rows));
  });
  if (x_grad) {
    // grad_x_b = sum_c W_bc P_c (mu_c - x_b) = (W [mc P])_b - x_b (W [P])_b
    const at::Tensor toward_means = row_sums.narrow(1, 0, dim);
    const at::Tensor precision_sum = row_sums.narrow(1, dim, row_sums.size(1) - dim);
    out.x.copy_(toward_means - xc * precision_sum);
  }
  if (component_grads) {
    const at::Tensor weighted_x = col_sums.narrow(1, 0, dim);               // sum_b W xc_b
    if (problem.diagonal) {
      const at::Tensor weighted_x2 = col_sums.narrow(1, dim, dim);          // sum_b W xc_b^2
      const at::Tensor weight_sum = col_sums.narrow(1, 2 * dim, 1);         // sum_b W
      out.means.copy_(precision * (weighted_x - mc * weight_sum));
      const at::Tensor weighted_squared = weighted_x2 - 2 * mc * weighted_x + mc * mc * weight_sum;
      out.var.copy_(0.5 * precision * (precision * weighted_squared - weight_sum));
      out.log_weights.copy_(weight_sum.squeeze(1));
    } else {
      const at::Tensor weight_sum = col_sums.select(1, dim);
      const at::Tensor weighted_norm = col_sums.select(1, dim + 1);        // sum_b W ||xc_b||^2
      out.means.copy_(precision.unsqueeze(1) * (weighted_x - mc * weight_sum.unsqueeze(1)));
      const at::Tensor weighted_squared =
          weighted_norm - 2 * (weighted_x * mc).sum(1) + (mc * mc).sum(1) * weight_sum;
      out.var.copy_(0.5 * precision * (precision * weighted_squared - dim * weight_sum));
      out.log_weights.copy_(weight_sum);
    }
  }
}

struct Contiguous {
  at::Tensor x, means, var, log_weights;
  Contiguous(const at::Tensor& x_, const at::Tensor& means_, const at::Tensor& var_,
             const at::Tensor& log_weights_)
      : x(x_.contiguous()),
        means(means_.contiguous()),
        var(var_.contiguous()),
        log_weights(log_weights_.contiguous()) {}
};

template <typename Kernels>
at::Tensor forward(const at::Tensor& x, const at::Tensor& means, const at::Tensor& var,
                   const at::Tensor& log_weights) {
  const Contiguous in(x, means, var, log_weights);
  if (x.size(0) == 0) return at::empty({0}, x.options());
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mixture_log_likelihood", [&] {
    if (means.size(0) <= kDirectMaxComponents) {
      out = at::empty({x.size(0)}, x.options());
      Kernels::direct(direct_params<scalar_t>(in.x, in.means, in.var, in.log_weights, out));
    } else {
      out = tiled_forward<scalar_t, Kernels>(in.x, in.means, in.var, in.log_weights);
    }
  });
  return out;
}

template <typename Kernels>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& means, const at::Tensor& var,
    const at::Tensor& log_weights, const at::Tensor& log_likelihood, bool x_grad,
    bool component_grads) {
  check_same_dtype_device(x, grad, "x", "grad");
  check_same_dtype_device(x, log_likelihood, "x", "log_likelihood");
  TORCH_CHECK(grad.dim() == 1 && grad.size(0) == x.size(0) &&
                  log_likelihood.sizes() == grad.sizes(),
              "grad and log_likelihood must be (B,) = (", x.size(0), "), got ", grad.sizes(),
              " and ", log_likelihood.sizes());
  const Contiguous in(x, means, var, log_weights);
  const at::Tensor grad_c = grad.contiguous(), log_likelihood_c = log_likelihood.contiguous();
  Gradients out(in.x, in.means, in.var, in.log_weights, x_grad, component_grads);
  if (x.size(0) == 0 || !(x_grad || component_grads)) return out.tuple();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mixture_log_likelihood_backward", [&] {
    if (means.size(0) <= kDirectMaxComponents) {
      MixtureLogLikelihoodBackwardParams<scalar_t> p = direct_backward_params<scalar_t>(
          grad_c, in.x, in.means, in.var, in.log_weights, log_likelihood_c, out, x_grad,
          component_grads);
      Kernels::direct_backward(p, in.x, means.size(0));
    } else {
      tiled_backward<scalar_t, Kernels>(grad_c, in.x, in.means, in.var, in.log_weights,
                                        log_likelihood_c, out, x_grad, component_grads);
    }
  });
  return out.tuple();
}

at::Tensor cpu_mixture_log_likelihood(const at::Tensor& x, const at::Tensor& means,
                                      const at::Tensor& var, const at::Tensor& log_weights) {
  check_mixture_log_likelihood_args(x, means, var, log_weights);
  return forward<CpuKernels>(x, means, var, log_weights);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> cpu_mixture_log_likelihood_backward(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& means, const at::Tensor& var,
    const at::Tensor& log_weights, const at::Tensor& log_likelihood, bool x_grad,
    bool component_grads) {
  check_mixture_log_likelihood_args(x, means, var, log_weights);
  return backward<CpuKernels>(grad, x, means, var, log_weights, log_likelihood, x_grad,
                              component_grads);
}

#ifdef GMKERNELS_WITH_CUDA
at::Tensor cuda_mixture_log_likelihood(const at::Tensor& x, const at::Tensor& means,
                                       const at::Tensor& var, const at::Tensor& log_weights) {
  check_mixture_log_likelihood_args(x, means, var, log_weights);
  const c10::cuda::CUDAGuard guard(x.device());
  return forward<CudaKernels>(x, means, var, log_weights);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> cuda_mixture_log_likelihood_backward(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& means, const at::Tensor& var,
    const at::Tensor& log_weights, const at::Tensor& log_likelihood, bool x_grad,
    bool component_grads) {
  check_mixture_log_likelihood_args(x, means, var, log_weights);
  const c10::cuda::CUDAGuard guard(x.device());
  return backward<CudaKernels>(grad, x, means, var, log_weights, log_likelihood, x_grad,
                               component_grads);
}
#endif

}  // namespace

TORCH_LIBRARY_IMPL(gmkernels, CPU, m) {
  m.impl("mixture_log_likelihood", &cpu_mixture_log_likelihood);
  m.impl("mixture_log_likelihood_backward", &cpu_mixture_log_likelihood_backward);
}

#ifdef GMKERNELS_WITH_CUDA
TORCH_LIBRARY_IMPL(gmkernels, CUDA, m) {
  m.impl("mixture_log_likelihood", &cuda_mixture_log_likelihood);
  m.impl("mixture_log_likelihood_backward", &cuda_mixture_log_likelihood_backward);
}
#endif

}  // namespace gmk

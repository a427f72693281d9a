// The tiled path of mixture_log_likelihood (C > kDirectMaxComponents: Parzen windows), called by
// csrc/binding/mixture_log_likelihood.cpp. It is built on ATen (BLAS products, tensor algebra),
// so it lives beside the binding rather than among the torch-free kernels; its epilogues are the
// torch-free kernels of csrc/kernels/mixture_log_likelihood.h.
#pragma once
#include <ATen/ATen.h>

#include <tuple>

#include "output_memory.h"

namespace gmk {

// The four gradients of mixture_log_likelihood_backward: the requested ones allocated zero (a
// path fills them), the others 0-element tensors (the schema's outputs are fixed; nobody reads
// those).
struct MixtureGradients {
  at::Tensor x, means, var, log_weights;
  // Whether var's gradient is returned. With the component gradients it is allocated either way
  // (the direct kernels write all three); the tiled CPU path skips its sums when not wanted.
  bool var_grad;

  MixtureGradients(const at::Tensor& x_, const at::Tensor& means_, const at::Tensor& var_,
                   const at::Tensor& log_weights_, bool x_grad, bool component_grads,
                   bool var_grad_)
      : x(wanted(x_, x_grad)),
        means(wanted(means_, component_grads)),
        var(wanted(var_, component_grads)),
        log_weights(wanted(log_weights_, component_grads)),
        var_grad(component_grads && var_grad_) {}

  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> tuple() const {
    return {x, means, var_grad ? var : at::empty({0}, var.options()), log_weights};
  }

 private:
  static at::Tensor wanted(const at::Tensor& like, bool want) {
    return want ? empty_output_like(like).zero_() : at::empty({0}, like.options());
  }
};

// The five results of mixture_log_likelihood_double_backward, the derivatives of
// <grad_x, U> in (grad, x, means, var, log_weights): the wanted ones allocated zero (filled by
// mixture_log_likelihood_tiled_double_backward), the others 0-element tensors.
struct MixturePenaltyGradients {
  at::Tensor grad, x, means, var, log_weights;
  bool need_grad, need_x, need_means, need_var, need_log_weights;

  MixturePenaltyGradients(const at::Tensor& grad_, const at::Tensor& x_, const at::Tensor& means_,
                          const at::Tensor& var_, const at::Tensor& log_weights_, bool need_grad,
                          bool need_x, bool need_means, bool need_var, bool need_log_weights)
      : grad(wanted(grad_, need_grad)),
        x(wanted(x_, need_x)),
        means(wanted(means_, need_means)),
        var(wanted(var_, need_var)),
        log_weights(wanted(log_weights_, need_log_weights)),
        need_grad(need_grad),
        need_x(need_x),
        need_means(need_means),
        need_var(need_var),
        need_log_weights(need_log_weights) {}

  bool component_grads() const { return need_means || need_var || need_log_weights; }

  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> tuple() const {
    return {grad, x, means, var, log_weights};
  }

 private:
  static at::Tensor wanted(const at::Tensor& like, bool want) {
    return want ? empty_output_like(like).zero_() : at::empty({0}, like.options());
  }
};

// The row stride (in elements) of a CPU tile of `cols` columns, and of the (B, C) tables the
// Python wrapper allocates for the kernels to keep (gmkernels._C.mixture_tile_row_stride).
int64_t padded_row_stride(int64_t cols);

// log p(x_b) for every row. The inputs are checked, contiguous, float32 or float64, on one CPU
// or CUDA device (the caller holds the device guard), with B >= 1. With `kept` given (a
// contiguous (B, C) tensor of x's dtype and device), the exponents E_bc are left in it.
at::Tensor mixture_log_likelihood_tiled(const at::Tensor& x, const at::Tensor& means,
                                        const at::Tensor& var, const at::Tensor& log_weights,
                                        const at::Tensor& kept = at::Tensor());

// What the backward does with a (B, C) table given beside its inputs (CPU only but kNone).
enum class BackwardTable {
  kNone,              // no table: the tiles are recomputed in scratch memory
  kExponents,         // the forward's kept exponents E_bc, read instead of recomputed and
                      // overwritten with W_bc = grad_b r_bc
  kExponentsToResponsibilities,  // the forward's kept exponents, left as the responsibilities
                                 // r_bc for the double backward
  kResponsibilities,  // recomputed into the table, which is left holding r_bc
};

// Fills the wanted gradients of `out` from the incoming gradient and the forward's output; with
// a table (see BackwardTable), reads or leaves it as `table_use` says.
void mixture_log_likelihood_tiled_backward(const at::Tensor& grad, const at::Tensor& x,
                                           const at::Tensor& means, const at::Tensor& var,
                                           const at::Tensor& log_weights,
                                           const at::Tensor& log_likelihood,
                                           MixtureGradients& out, bool x_grad,
                                           bool component_grads,
                                           const at::Tensor& table = at::Tensor(),
                                           BackwardTable table_use = BackwardTable::kNone);
// The double backward of a gradient penalty in x on the CPU: fills the wanted results of `out`
// from U = grad_grad_x (B, d), the first-order backward's inputs and the forward's output.
// Tiles of whole rows (every component), so B >= 1 and out has at least one wanted result.
// With `responsibilities` given (the (B, C) r_bc a first backward left, see BackwardTable), its
// rows are read instead of recomputed, and overwritten.
void mixture_log_likelihood_tiled_double_backward(const at::Tensor& grad_grad_x,
                                                  const at::Tensor& grad, const at::Tensor& x,
                                                  const at::Tensor& means, const at::Tensor& var,
                                                  const at::Tensor& log_weights,
                                                  const at::Tensor& log_likelihood,
                                                  MixturePenaltyGradients& out,
                                                  const at::Tensor& responsibilities = {});

}  // namespace gmk

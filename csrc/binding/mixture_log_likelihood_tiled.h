// The tiled path of mixture_log_likelihood (C > kDirectMaxComponents: Parzen windows), called by
// csrc/binding/mixture_log_likelihood.cpp. It is built on ATen (BLAS products, tensor algebra),
// so it lives beside the binding rather than among the torch-free kernels; its epilogues are the
// torch-free kernels of csrc/kernels/mixture_log_likelihood.h.
#pragma once
#include <ATen/ATen.h>

#include <tuple>

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
    return want ? at::zeros_like(like) : at::empty({0}, like.options());
  }
};

// log p(x_b) for every row. The inputs are checked, contiguous, float32 or float64, on one CPU
// or CUDA device (the caller holds the device guard), with B >= 1.
at::Tensor mixture_log_likelihood_tiled(const at::Tensor& x, const at::Tensor& means,
                                        const at::Tensor& var, const at::Tensor& log_weights);

// Fills the wanted gradients of `out` from the incoming gradient and the forward's output.
void mixture_log_likelihood_tiled_backward(const at::Tensor& grad, const at::Tensor& x,
                                           const at::Tensor& means, const at::Tensor& var,
                                           const at::Tensor& log_weights,
                                           const at::Tensor& log_likelihood,
                                           MixtureGradients& out, bool x_grad,
                                           bool component_grads);

}  // namespace gmk

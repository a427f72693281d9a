// The op schemas of the gmkernels library and the pybind11 module gmkernels._C.
// Kernels register per device in csrc/binding/<op>.cpp; fake tensors and autograd are
// registered from Python (gmkernels/ops/<op>.py).
#include <torch/extension.h>
#include <torch/library.h>

#ifndef GMKERNELS_VERSION
#define GMKERNELS_VERSION "0.0.0"
#endif
#ifndef GMKERNELS_TORCH_VERSION
#define GMKERNELS_TORCH_VERSION "unknown"
#endif
#ifndef GMKERNELS_CUDA_ARCHS
#define GMKERNELS_CUDA_ARCHS ""
#endif

TORCH_LIBRARY(gmkernels, m) {
  m.def("mixture_sample(Tensor mu, Tensor scale, Tensor component, Tensor seed) -> Tensor");
  m.def(
      "mixture_sample_backward(Tensor grad_z, Tensor scale, Tensor component, Tensor seed)"
      " -> (Tensor, Tensor)");
  m.def("mixture_log_likelihood(Tensor x, Tensor means, Tensor var, Tensor log_weights) -> Tensor");
  m.def(
      "mixture_log_likelihood_backward(Tensor grad, Tensor x, Tensor means, Tensor var,"
      " Tensor log_weights, Tensor log_likelihood, bool x_grad, bool component_grads)"
      " -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "class_pairwise_kl(Tensor probs, Tensor labels, float eps, int num_classes)"
      " -> (Tensor, Tensor)");
  m.def(
      "class_pairwise_kl_backward(Tensor grad_kl, Tensor probs, Tensor labels,"
      " Tensor class_mean_log, float eps) -> Tensor");
  m.def("minibatch_discrimination(Tensor M) -> Tensor");
  m.def("minibatch_discrimination_backward(Tensor grad_out, Tensor M) -> Tensor");
}

namespace {

pybind11::dict build_info() {
  pybind11::dict info;
  info["version"] = GMKERNELS_VERSION;
#ifdef GMKERNELS_WITH_CUDA
  info["cuda"] = true;
  info["cuda_archs"] = GMKERNELS_CUDA_ARCHS;
#else
  info["cuda"] = false;
  info["cuda_archs"] = "";
#endif
#ifdef _OPENMP
  info["openmp"] = static_cast<int>(_OPENMP);
#else
  info["openmp"] = pybind11::none();
#endif
#if defined(__clang__)
  info["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  info["compiler"] = std::string("gcc ") + __VERSION__;
#else
  info["compiler"] = "unknown";
#endif
  info["torch"] = GMKERNELS_TORCH_VERSION;
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "gmkernels compiled kernels (CPU always, CUDA when built with it)";
  m.def("build_info", &build_info, "Facts about how this extension was built.");
}

// Tensors -> MixtureSampleParams, argument checks, and the CPU/CUDA registrations of
// gmkernels::mixture_sample and gmkernels::mixture_sample_backward (schemas in registry.cpp).
#include <torch/library.h>

#include <algorithm>

#include "../kernels/mixture_sample.h"
#include "checks.h"

#ifdef GMKERNELS_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#endif

namespace gmk {
namespace {

void check_mixture_sample_args(const at::Tensor& mu, const at::Tensor& scale,
                               const at::Tensor& component) {
  check_float_tensor(mu, "mu");
  check_same_dtype_device(mu, scale, "mu", "scale");
  TORCH_CHECK(mu.dim() == 2, "mu must be (N, K), got shape ", mu.sizes());
  const bool full = scale.dim() == 3;
  TORCH_CHECK(scale.dim() == 2 || full, "scale must be (N, K) or (N, K, K), got shape ",
              scale.sizes());
  TORCH_CHECK(scale.size(0) == mu.size(0) && scale.size(1) == mu.size(1) &&
                  (!full || scale.size(2) == mu.size(1)),
              "scale must match mu (", mu.sizes(), "), got shape ", scale.sizes());
  TORCH_CHECK(component.scalar_type() == at::kLong && component.dim() == 1,
              "component must be a 1-d int64 tensor, got ", component.scalar_type(), " shape ",
              component.sizes());
  TORCH_CHECK(component.device() == mu.device(), "component must be on ", mu.device());
}

template <typename scalar_t>
MixtureSampleParams<scalar_t> forward_params(const at::Tensor& mu, const at::Tensor& scale,
                                             const at::Tensor& component, const at::Tensor& z,
                                             uint64_t seed) {
  MixtureSampleParams<scalar_t> p;
  p.mu = mu.data_ptr<scalar_t>();
  p.scale = scale.data_ptr<scalar_t>();
  p.component = component.data_ptr<int64_t>();
  p.z = z.data_ptr<scalar_t>();
  p.num_samples = component.size(0);
  p.num_components = mu.size(0);
  p.dim = mu.size(1);
  p.full_scale = scale.dim() == 3;
  p.seed = seed;
  p.num_threads = cpu_threads();
  return p;
}

template <typename scalar_t>
MixtureSampleBackwardParams<scalar_t> backward_params(const at::Tensor& grad_z,
                                                      const at::Tensor& scale,
                                                      const at::Tensor& component,
                                                      const at::Tensor& grad_mu,
                                                      const at::Tensor& grad_scale,
                                                      uint64_t seed) {
  MixtureSampleBackwardParams<scalar_t> p;
  p.grad_z = grad_z.data_ptr<scalar_t>();
  p.scale = scale.data_ptr<scalar_t>();
  p.component = component.data_ptr<int64_t>();
  p.grad_mu = grad_mu.data_ptr<scalar_t>();
  p.grad_scale = grad_scale.data_ptr<scalar_t>();
  p.num_samples = component.size(0);
  p.num_components = scale.size(0);
  p.dim = scale.size(1);
  p.full_scale = scale.dim() == 3;
  p.seed = seed;
  p.num_threads = cpu_threads();
  // The CPU kernels are deterministic whatever this says; the CUDA ones read it.
  p.deterministic = at::globalContext().deterministicAlgorithms();
  p.splits = 1;
  return p;
}

at::Tensor cpu_mixture_sample(const at::Tensor& mu, const at::Tensor& scale,
                              const at::Tensor& component, const at::Tensor& seed) {
  check_mixture_sample_args(mu, scale, component);
  const uint64_t seed_bits = read_seed(seed);
  const at::Tensor mu_c = mu.contiguous(), scale_c = scale.contiguous();
  const at::Tensor component_c = component.contiguous();
  at::Tensor z = at::empty({component.size(0), mu.size(1)}, mu.options());
  if (z.numel() == 0) return z;
  AT_DISPATCH_FLOATING_TYPES(mu.scalar_type(), "mixture_sample_cpu", [&] {
    mixture_sample_forward_cpu(forward_params<scalar_t>(mu_c, scale_c, component_c, z, seed_bits));
  });
  return z;
}

std::tuple<at::Tensor, at::Tensor> cpu_mixture_sample_backward(const at::Tensor& grad_z,
                                                               const at::Tensor& scale,
                                                               const at::Tensor& component,
                                                               const at::Tensor& seed) {
  check_float_tensor(grad_z, "grad_z");
  check_same_dtype_device(grad_z, scale, "grad_z", "scale");
  const uint64_t seed_bits = read_seed(seed);
  const at::Tensor grad_z_c = grad_z.contiguous(), scale_c = scale.contiguous();
  const at::Tensor component_c = component.contiguous();
  at::Tensor grad_mu = at::zeros({scale.size(0), scale.size(1)}, scale.options());
  at::Tensor grad_scale = at::zeros_like(scale_c);
  if (component.size(0) == 0 || scale.size(1) == 0) return {grad_mu, grad_scale};
  AT_DISPATCH_FLOATING_TYPES(grad_z.scalar_type(), "mixture_sample_backward_cpu", [&] {
    mixture_sample_backward_cpu(backward_params<scalar_t>(grad_z_c, scale_c, component_c, grad_mu,
                                                          grad_scale, seed_bits));
  });
  return {grad_mu, grad_scale};
}

#ifdef GMKERNELS_WITH_CUDA
// Samples grouped by component on the device (see ComponentGrouping): a stable sort keeps sample
// order inside a component, which fixes the order of the deterministic backward's sums.
struct DeviceGrouping {
  at::Tensor sorted_samples;
  at::Tensor component_begin;

  ComponentGrouping view() const {
    ComponentGrouping grouping;
    grouping.sorted_samples = sorted_samples.data_ptr<int64_t>();
    grouping.component_begin = component_begin.data_ptr<int64_t>();
    return grouping;
  }
};

DeviceGrouping group_by_component(const at::Tensor& component, int64_t num_components) {
  const auto sorted = at::sort(component, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  DeviceGrouping grouping;
  grouping.sorted_samples = std::get<1>(sorted).contiguous();
  const at::Tensor boundaries = at::arange(num_components + 1, component.options());
  grouping.component_begin = at::searchsorted(std::get<0>(sorted), boundaries).contiguous();
  return grouping;
}

// Blocks per component on the atomic path: about 1024 samples each, so that a few large
// components still fill the GPU.
int atomic_splits(int64_t num_samples, int64_t num_components) {
  const int64_t per_component = (num_samples + num_components - 1) / num_components;
  return static_cast<int>(std::min<int64_t>(64, std::max<int64_t>(1, per_component / 1024)));
}

at::Tensor cuda_mixture_sample(const at::Tensor& mu, const at::Tensor& scale,
                               const at::Tensor& component, const at::Tensor& seed) {
  check_mixture_sample_args(mu, scale, component);
  const c10::cuda::CUDAGuard guard(mu.device());
  const uint64_t seed_bits = read_seed(seed);
  const at::Tensor mu_c = mu.contiguous(), scale_c = scale.contiguous();
  const at::Tensor component_c = component.contiguous();
  at::Tensor z = at::empty({component.size(0), mu.size(1)}, mu.options());
  if (z.numel() == 0) return z;
  // Only the full-scale kernel works on samples grouped by component.
  DeviceGrouping grouping;
  if (scale.dim() == 3) grouping = group_by_component(component_c, mu.size(0));
  AT_DISPATCH_FLOATING_TYPES(mu.scalar_type(), "mixture_sample_cuda", [&] {
    auto params = forward_params<scalar_t>(mu_c, scale_c, component_c, z, seed_bits);
    if (scale.dim() == 3) params.grouping = grouping.view();
    mixture_sample_forward_cuda(params, at::cuda::getCurrentCUDAStream().stream());
  });
  return z;
}

std::tuple<at::Tensor, at::Tensor> cuda_mixture_sample_backward(const at::Tensor& grad_z,
                                                                const at::Tensor& scale,
                                                                const at::Tensor& component,
                                                                const at::Tensor& seed) {
  check_float_tensor(grad_z, "grad_z");
  check_same_dtype_device(grad_z, scale, "grad_z", "scale");
  const c10::cuda::CUDAGuard guard(grad_z.device());
  const uint64_t seed_bits = read_seed(seed);
  const at::Tensor grad_z_c = grad_z.contiguous(), scale_c = scale.contiguous();
  const at::Tensor component_c = component.contiguous();
  at::Tensor grad_mu = at::zeros({scale.size(0), scale.size(1)}, scale.options());
  at::Tensor grad_scale = at::zeros_like(scale_c);
  if (component.size(0) == 0 || scale.size(1) == 0) return {grad_mu, grad_scale};
  const bool deterministic = at::globalContext().deterministicAlgorithms();
  const DeviceGrouping grouping = group_by_component(component_c, scale.size(0));
  AT_DISPATCH_FLOATING_TYPES(grad_z.scalar_type(), "mixture_sample_backward_cuda", [&] {
    auto params = backward_params<scalar_t>(grad_z_c, scale_c, component_c, grad_mu, grad_scale,
                                            seed_bits);
    params.deterministic = deterministic;
    params.splits = deterministic ? 1 : atomic_splits(component.size(0), scale.size(0));
    params.grouping = grouping.view();
    mixture_sample_backward_cuda(params, at::cuda::getCurrentCUDAStream().stream());
  });
  return {grad_mu, grad_scale};
}
#endif

}  // namespace

TORCH_LIBRARY_IMPL(gmkernels, CPU, m) {
  m.impl("mixture_sample", &cpu_mixture_sample);
  m.impl("mixture_sample_backward", &cpu_mixture_sample_backward);
}

#ifdef GMKERNELS_WITH_CUDA
TORCH_LIBRARY_IMPL(gmkernels, CUDA, m) {
  m.impl("mixture_sample", &cuda_mixture_sample);
  m.impl("mixture_sample_backward", &cuda_mixture_sample_backward);
}
#endif

}  // namespace gmk

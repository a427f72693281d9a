// Tensors -> MixtureSampleParams, argument checks, and the schemas and CPU/CUDA registrations of
// gmkernels::mixture_sample and gmkernels::mixture_sample_backward.
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <utility>

#include "../kernels/mixture_sample.h"
#include "checks.h"
#include "output_memory.h"

#ifdef GMKERNELS_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace gmk {
namespace {

// scale (N, K) or (N, K, K) for N components in K dimensions, component (n,) int64 on its device.
void check_scale_and_component(const at::Tensor& scale, const at::Tensor& component,
                               int64_t num_components, int64_t dim) {
  const bool full = scale.dim() == 3;
  TORCH_CHECK(scale.dim() == 2 || full, "scale must be (N, K) or (N, K, K), got shape ",
              scale.sizes());
  TORCH_CHECK(scale.size(0) == num_components && scale.size(1) == dim &&
                  (!full || scale.size(2) == dim),
              "scale must be (N, K) = (", num_components, ", ", dim, ") or (N, K, K), got shape ",
              scale.sizes());
  TORCH_CHECK(component.scalar_type() == at::kLong && component.dim() == 1,
              "component must be a 1-d int64 tensor, got ", component.scalar_type(), " shape ",
              component.sizes());
  TORCH_CHECK(component.device() == scale.device(), "component must be on ", scale.device(),
              ", got ", component.device());
  // Every sample belongs to a component: without one there is nothing to index (and the CUDA
  // backward would divide the samples among zero components).
  TORCH_CHECK(num_components >= 1 || component.size(0) == 0,
              "mixture_sample needs at least one component (N >= 1) for n = ", component.size(0),
              " samples, got N = 0");
}

void check_mixture_sample_args(const at::Tensor& mu, const at::Tensor& scale,
                               const at::Tensor& component) {
  check_float_tensor(mu, "mu");
  check_same_dtype_device(mu, scale, "mu", "scale");
  TORCH_CHECK(mu.dim() == 2, "mu must be (N, K), got shape ", mu.sizes());
  check_scale_and_component(scale, component, mu.size(0), mu.size(1));
}

void check_mixture_sample_backward_args(const at::Tensor& grad_z, const at::Tensor& scale,
                                        const at::Tensor& component) {
  check_float_tensor(grad_z, "grad_z");
  check_same_dtype_device(grad_z, scale, "grad_z", "scale");
  TORCH_CHECK(scale.dim() == 2 || scale.dim() == 3, "scale must be (N, K) or (N, K, K), got shape ",
              scale.sizes());
  check_scale_and_component(scale, component, scale.size(0), scale.size(1));
  TORCH_CHECK(grad_z.dim() == 2 && grad_z.size(0) == component.size(0) &&
                  grad_z.size(1) == scale.size(1),
              "grad_z must be (n, K) = (", component.size(0), ", ", scale.size(1),
              "), got shape ", grad_z.sizes());
}

// The CPU kernels index mu, scale and their buckets by component: an out-of-range value would
// read and write outside them. (The CUDA kernels never index with such a value and give its
// sample a NaN row instead: a check here would cost a device sync per call.)
void check_components_in_range_cpu(const at::Tensor& component, int64_t num_components) {
  if (component.numel() == 0) return;
  // One pass for both ends (min() then max() read the components twice: 227 against 138 us at
  // n = 10^6 on 2 threads).
  const auto [lowest, highest] = at::aminmax(component);
  const int64_t low = lowest.item<int64_t>(), high = highest.item<int64_t>();
  TORCH_CHECK(low >= 0 && high < num_components, "component must lie in [0, ", num_components,
              "), got values in [", low, ", ", high, "]");
}

// The rows of grad_z as the kernels read them: one row when every row is the same (stride 0
// over samples: the expanded upstream gradient of z.sum(), or a row of shape (K,) expanded over
// the samples), read again for every sample instead of being copied n times; otherwise a
// contiguous (n, K) tensor. Returns the tensor and its row stride.
std::pair<at::Tensor, int64_t> grad_rows(const at::Tensor& grad_z) {
  if (grad_z.size(0) > 1 && grad_z.stride(0) == 0)
    return {grad_z.select(0, 0).contiguous(), 0};
  return {grad_z.contiguous(), grad_z.size(1)};
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
                                                      int64_t grad_row_stride,
                                                      const at::Tensor& scale,
                                                      const at::Tensor& component,
                                                      const at::Tensor& grad_mu,
                                                      const at::Tensor& grad_scale,
                                                      uint64_t seed) {
  MixtureSampleBackwardParams<scalar_t> p;
  p.grad_z = grad_z.data_ptr<scalar_t>();
  p.grad_row_stride = grad_row_stride;
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
  check_components_in_range_cpu(component, mu.size(0));
  const uint64_t seed_bits = read_seed(seed);
  const at::Tensor mu_c = mu.contiguous(), scale_c = scale.contiguous();
  const at::Tensor component_c = component.contiguous();
  at::Tensor z = empty_output({component.size(0), mu.size(1)}, mu.options());
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
  check_mixture_sample_backward_args(grad_z, scale, component);
  check_components_in_range_cpu(component, scale.size(0));
  const uint64_t seed_bits = read_seed(seed);
  const std::pair<at::Tensor, int64_t> rows = grad_rows(grad_z);
  const at::Tensor& grad_z_c = rows.first;
  const int64_t grad_row_stride = rows.second;
  const at::Tensor scale_c = scale.contiguous();
  const at::Tensor component_c = component.contiguous();
  at::Tensor grad_mu = at::zeros({scale.size(0), scale.size(1)}, scale.options());
  at::Tensor grad_scale = at::zeros_like(scale_c);
  if (component.size(0) == 0 || scale.size(1) == 0) return {grad_mu, grad_scale};
  AT_DISPATCH_FLOATING_TYPES(grad_z.scalar_type(), "mixture_sample_backward_cpu", [&] {
    mixture_sample_backward_cpu(backward_params<scalar_t>(grad_z_c, grad_row_stride, scale_c,
                                                          component_c, grad_mu, grad_scale,
                                                          seed_bits));
  });
  return {grad_mu, grad_scale};
}

// The CPU backward of the diagonal case from the forward's samples z (and mu) instead of the
// seed: eps = (z - mu_c) / scale_c is read, not drawn. Where that recovery would be inaccurate
// (mixture_sample_recoverable_cpu: some |mu| large against its |scale|, or a zero scale) and for a
// full scale, it regenerates eps from the seed as mixture_sample_backward does. Eager CPU calls
// only (gmkernels/ops/mixture_sample.py): the regenerating op stays the backward of every
// backend and of the compiled graphs.
std::tuple<at::Tensor, at::Tensor> cpu_mixture_sample_backward_from_samples(
    const at::Tensor& grad_z, const at::Tensor& z, const at::Tensor& mu, const at::Tensor& scale,
    const at::Tensor& component, const at::Tensor& seed) {
  check_mixture_sample_backward_args(grad_z, scale, component);
  check_same_dtype_device(grad_z, z, "grad_z", "z");
  check_same_dtype_device(grad_z, mu, "grad_z", "mu");
  TORCH_CHECK(z.sizes() == grad_z.sizes(), "z must have grad_z's shape ", grad_z.sizes(), ", got ",
              z.sizes());
  TORCH_CHECK(mu.dim() == 2 && mu.size(0) == scale.size(0) && mu.size(1) == scale.size(1),
              "mu must be (N, K) = (", scale.size(0), ", ", scale.size(1), "), got shape ",
              mu.sizes());
  if (scale.dim() == 3) return cpu_mixture_sample_backward(grad_z, scale, component, seed);
  const at::Tensor mu_c = mu.contiguous(), scale_c = scale.contiguous();
  bool recoverable = false;
  AT_DISPATCH_FLOATING_TYPES(grad_z.scalar_type(), "mixture_sample_recoverable_cpu", [&] {
    recoverable = mixture_sample_recoverable_cpu(mu_c.data_ptr<scalar_t>(),
                                                 scale_c.data_ptr<scalar_t>(), mu_c.numel());
  });
  if (!recoverable) return cpu_mixture_sample_backward(grad_z, scale, component, seed);
  check_components_in_range_cpu(component, scale.size(0));
  const std::pair<at::Tensor, int64_t> rows = grad_rows(grad_z);
  const at::Tensor z_c = z.contiguous(), component_c = component.contiguous();
  at::Tensor grad_mu = at::zeros({scale.size(0), scale.size(1)}, scale.options());
  at::Tensor grad_scale = at::zeros_like(scale_c);
  if (component.size(0) == 0 || scale.size(1) == 0) return {grad_mu, grad_scale};
  AT_DISPATCH_FLOATING_TYPES(grad_z.scalar_type(), "mixture_sample_backward_from_samples_cpu", [&] {
    auto params = backward_params<scalar_t>(rows.first, rows.second, scale_c, component_c, grad_mu,
                                            grad_scale, 0);
    params.z = z_c.data_ptr<scalar_t>();
    params.mu = mu_c.data_ptr<scalar_t>();
    mixture_sample_backward_from_samples_cpu(params);
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
// components still fill the GPU. num_components >= 1 (check_scale_and_component).
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
  // The full-scale kernel writes the rows of samples with a valid component only (it works on
  // samples grouped by component): the others stay NaN.
  at::Tensor z = scale.dim() == 3
                     ? at::full({component.size(0), mu.size(1)}, NAN, mu.options())
                     : at::empty({component.size(0), mu.size(1)}, mu.options());
  if (z.numel() == 0) return z;
  DeviceGrouping grouping;
  if (scale.dim() == 3) grouping = group_by_component(component_c, mu.size(0));
  AT_DISPATCH_FLOATING_TYPES(mu.scalar_type(), "mixture_sample_cuda", [&] {
    auto params = forward_params<scalar_t>(mu_c, scale_c, component_c, z, seed_bits);
    if (scale.dim() == 3) params.grouping = grouping.view();
    check_cuda_status(
        mixture_sample_forward_cuda(params, c10::cuda::getCurrentCUDAStream().stream()),
        "mixture_sample");
  });
  return z;
}

std::tuple<at::Tensor, at::Tensor> cuda_mixture_sample_backward(const at::Tensor& grad_z,
                                                                const at::Tensor& scale,
                                                                const at::Tensor& component,
                                                                const at::Tensor& seed) {
  check_mixture_sample_backward_args(grad_z, scale, component);
  const c10::cuda::CUDAGuard guard(grad_z.device());
  const uint64_t seed_bits = read_seed(seed);
  const std::pair<at::Tensor, int64_t> rows = grad_rows(grad_z);
  const at::Tensor& grad_z_c = rows.first;
  const int64_t grad_row_stride = rows.second;
  const at::Tensor scale_c = scale.contiguous();
  const at::Tensor component_c = component.contiguous();
  at::Tensor grad_mu = at::zeros({scale.size(0), scale.size(1)}, scale.options());
  at::Tensor grad_scale = at::zeros_like(scale_c);
  if (component.size(0) == 0 || scale.size(1) == 0) return {grad_mu, grad_scale};
  const bool deterministic = at::globalContext().deterministicAlgorithms();
  const DeviceGrouping grouping = group_by_component(component_c, scale.size(0));
  AT_DISPATCH_FLOATING_TYPES(grad_z.scalar_type(), "mixture_sample_backward_cuda", [&] {
    auto params = backward_params<scalar_t>(grad_z_c, grad_row_stride, scale_c, component_c,
                                            grad_mu, grad_scale, seed_bits);
    params.deterministic = deterministic;
    params.splits = deterministic ? 1 : atomic_splits(component.size(0), scale.size(0));
    params.grouping = grouping.view();
    check_cuda_status(
        mixture_sample_backward_cuda(params, c10::cuda::getCurrentCUDAStream().stream()),
        "mixture_sample_backward");
  });
  return {grad_mu, grad_scale};
}
#endif

}  // namespace

TORCH_LIBRARY_FRAGMENT(gmkernels, m) {
  m.def("mixture_sample(Tensor mu, Tensor scale, Tensor component, Tensor seed) -> Tensor");
  m.def(
      "mixture_sample_backward(Tensor grad_z, Tensor scale, Tensor component, Tensor seed)"
      " -> (Tensor, Tensor)");
  m.def(
      "mixture_sample_backward_from_samples(Tensor grad_z, Tensor z, Tensor mu, Tensor scale,"
      " Tensor component, Tensor seed) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(gmkernels, CPU, m) {
  m.impl("mixture_sample", &cpu_mixture_sample);
  m.impl("mixture_sample_backward", &cpu_mixture_sample_backward);
  m.impl("mixture_sample_backward_from_samples", &cpu_mixture_sample_backward_from_samples);
}

#ifdef GMKERNELS_WITH_CUDA
TORCH_LIBRARY_IMPL(gmkernels, CUDA, m) {
  m.impl("mixture_sample", &cuda_mixture_sample);
  m.impl("mixture_sample_backward", &cuda_mixture_sample_backward);
}
#endif

}  // namespace gmk

// Tensors -> ClassPairwiseKlParams, argument checks, and the schemas and CPU/CUDA registrations
// of gmkernels::class_pairwise_kl, gmkernels::class_pairwise_kl_backward and (CPU only)
// gmkernels::class_pairwise_kl_double_backward. The forward returns
// (kl, class_mean_log, rows): the compact class table and each sample's row in it; the backward
// takes those rows as its labels (any labels indexing class_mean_log's rows will do).
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "../kernels/class_pairwise_kl.h"
#include "checks.h"
#include "output_memory.h"

#ifdef GMKERNELS_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace gmk {
namespace {

void check_class_pairwise_kl_args(const at::Tensor& probs, const at::Tensor& labels, double eps,
                                  int64_t num_classes) {
  check_float_tensor(probs, "probs");
  TORCH_CHECK(probs.dim() == 2 && probs.size(1) >= 1, "probs must be (N, C) with C >= 1, got shape ",
              probs.sizes());
  TORCH_CHECK(labels.scalar_type() == at::kLong && labels.dim() == 1 &&
                  labels.size(0) == probs.size(0),
              "labels must be a (N,) int64 tensor with N = ", probs.size(0), ", got ",
              labels.scalar_type(), " shape ", labels.sizes());
  TORCH_CHECK(labels.device() == probs.device(), "labels must be on ", probs.device());
  // The CUDA kernels index sorted rows and chunks with 32-bit integers.
  TORCH_CHECK(num_classes >= 1 && num_classes < (int64_t(1) << 30),
              "num_classes must be in [1, 2^30), got ", num_classes);
  TORCH_CHECK(probs.size(0) < (int64_t(1) << 30), "class_pairwise_kl supports N < 2^30 samples, got ",
              probs.size(0));
  const double smallest = probs.scalar_type() == at::kFloat
                              ? static_cast<double>(std::numeric_limits<float>::min())
                              : std::numeric_limits<double>::min();
  TORCH_CHECK(eps >= smallest, "eps must be >= ", smallest, " (the dtype's smallest normal), got ",
              eps);
}

// The CPU kernels index tables by label: an out-of-range label would write outside them.
// `labels` contiguous; one plain loop (two ATen reductions and their item() calls cost more than
// the kernel at N = 10^4, C = 2).
void check_labels_in_range_cpu(const at::Tensor& labels, int64_t num_classes) {
  const int64_t count = labels.numel();
  if (count == 0) return;
  const int64_t* data = labels.data_ptr<int64_t>();
  int64_t low = data[0], high = data[0];
  for (int64_t i = 1; i < count; ++i) {
    low = std::min(low, data[i]);
    high = std::max(high, data[i]);
  }
  TORCH_CHECK(low >= 0 && high < num_classes, "labels must lie in [0, ", num_classes,
              "), got values in [", low, ", ", high, "]");
}

void check_backward_args(const at::Tensor& grad_kl, const at::Tensor& probs,
                         const at::Tensor& labels, const at::Tensor& class_mean_log, double eps) {
  TORCH_CHECK(class_mean_log.dim() == 2 && probs.dim() == 2 &&
                  class_mean_log.size(1) == probs.size(1),
              "class_mean_log must be (K, C) with C = probs.size(1), got shape ",
              class_mean_log.sizes(), " for probs ", probs.sizes());
  check_class_pairwise_kl_args(probs, labels, eps, class_mean_log.size(0));
  check_same_dtype_device(probs, grad_kl, "probs", "grad_kl");
  check_same_dtype_device(probs, class_mean_log, "probs", "class_mean_log");
  TORCH_CHECK(grad_kl.dim() == 1 && grad_kl.size(0) == probs.size(0),
              "grad_kl must be (N,) with N = ", probs.size(0), ", got shape ", grad_kl.sizes());
}

// The fields forward and backward params share.
template <typename Params>
void fill_common(Params& p, const at::Tensor& probs, const at::Tensor& labels,
                 const at::Tensor& class_mean_log, double eps, void* workspace) {
  using scalar_t = std::remove_const_t<std::remove_pointer_t<decltype(p.probs)>>;
  p.probs = probs.data_ptr<scalar_t>();
  p.labels = labels.data_ptr<int64_t>();
  p.class_mean_log = class_mean_log.data_ptr<scalar_t>();
  p.num_samples = probs.size(0);
  p.num_categories = probs.size(1);
  p.num_classes = class_mean_log.size(0);
  p.eps = eps;
  p.num_threads = cpu_threads();
  p.workspace = workspace;
}

template <typename scalar_t>
ClassPairwiseKlParams<scalar_t> forward_params(const at::Tensor& probs, const at::Tensor& labels,
                                               const at::Tensor& kl,
                                               const at::Tensor& class_mean_log, double eps,
                                               void* workspace) {
  ClassPairwiseKlParams<scalar_t> p;
  fill_common(p, probs, labels, class_mean_log, eps, workspace);
  p.kl = kl.data_ptr<scalar_t>();
  return p;
}

template <typename scalar_t>
ClassPairwiseKlBackwardParams<scalar_t> backward_params(const at::Tensor& grad_kl,
                                                        const at::Tensor& probs,
                                                        const at::Tensor& labels,
                                                        const at::Tensor& class_mean_log,
                                                        const at::Tensor& grad_probs, double eps,
                                                        void* workspace) {
  ClassPairwiseKlBackwardParams<scalar_t> p;
  fill_common(p, probs, labels, class_mean_log, eps, workspace);
  p.grad_kl = grad_kl.data_ptr<scalar_t>();
  p.grad_probs = grad_probs.data_ptr<scalar_t>();
  return p;
}

// The rows of the compact class table (csrc/kernels/class_pairwise_kl.h): every class when
// K <= N, else one per class present (at most N); at least one, so that the backward's table is
// never empty.
int64_t table_rows_bound(int64_t num_samples, int64_t num_classes) {
  return std::min(std::max<int64_t>(num_samples, 1), num_classes);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cpu_class_pairwise_kl(const at::Tensor& probs,
                                                                     const at::Tensor& labels,
                                                                     double eps,
                                                                     int64_t num_classes) {
  check_class_pairwise_kl_args(probs, labels, eps, num_classes);
  const at::Tensor probs_c = probs.contiguous(), labels_c = labels.contiguous();
  check_labels_in_range_cpu(labels_c, num_classes);
  const int64_t num_samples = probs.size(0);
  at::Tensor kl = at::empty({num_samples}, probs.options());
  at::Tensor rows = at::empty({num_samples}, labels.options());
  // Written in full by the kernels (empty rows as zeros): no zero fill up front.
  at::Tensor class_mean_log =
      at::empty({table_rows_bound(num_samples, num_classes), probs.size(1)}, probs.options());
  if (num_samples == 0) return {kl, class_mean_log.zero_(), rows};
  class_pairwise_kl_table_rows_cpu(labels_c.data_ptr<int64_t>(), num_samples, num_classes,
                                   rows.data_ptr<int64_t>());
  AT_DISPATCH_FLOATING_TYPES(probs.scalar_type(), "class_pairwise_kl_cpu", [&] {
    class_pairwise_kl_forward_cpu(
        forward_params<scalar_t>(probs_c, rows, kl, class_mean_log, eps, nullptr));
  });
  return {kl, class_mean_log, rows};
}

at::Tensor cpu_class_pairwise_kl_backward(const at::Tensor& grad_kl, const at::Tensor& probs,
                                          const at::Tensor& labels,
                                          const at::Tensor& class_mean_log, double eps) {
  check_backward_args(grad_kl, probs, labels, class_mean_log, eps);
  const at::Tensor grad_c = grad_kl.contiguous(), probs_c = probs.contiguous();
  const at::Tensor labels_c = labels.contiguous(), mean_c = class_mean_log.contiguous();
  check_labels_in_range_cpu(labels_c, class_mean_log.size(0));
  at::Tensor grad_probs = empty_output_like(probs_c);
  if (probs.size(0) == 0) return grad_probs;
  AT_DISPATCH_FLOATING_TYPES(probs.scalar_type(), "class_pairwise_kl_backward_cpu", [&] {
    class_pairwise_kl_backward_cpu(backward_params<scalar_t>(grad_c, probs_c, labels_c, mean_c,
                                                             grad_probs, eps, nullptr));
  });
  return grad_probs;
}

// The double backward's kernel, CPU only: the Python double backward calls it when it records no
// graph (a gradient penalty's backward), and otherwise, and on other devices, differentiates its
// closed form in torch ops. Each output is computed only when its need_* flag is set, else it
// is returned with 0 elements.
std::tuple<at::Tensor, at::Tensor> cpu_class_pairwise_kl_double_backward(
    const at::Tensor& grad_grad_probs, const at::Tensor& grad_kl, const at::Tensor& probs,
    const at::Tensor& labels, const at::Tensor& class_mean_log, double eps, bool need_grad_kl,
    bool need_probs) {
  check_backward_args(grad_kl, probs, labels, class_mean_log, eps);
  check_same_dtype_device(probs, grad_grad_probs, "probs", "grad_grad_probs");
  TORCH_CHECK(grad_grad_probs.sizes() == probs.sizes(), "grad_grad_probs must have probs' shape ",
              probs.sizes(), ", got ", grad_grad_probs.sizes());
  const at::Tensor upstream_c = grad_grad_probs.contiguous(), grad_c = grad_kl.contiguous();
  const at::Tensor probs_c = probs.contiguous(), labels_c = labels.contiguous();
  const at::Tensor mean_c = class_mean_log.contiguous();
  check_labels_in_range_cpu(labels_c, class_mean_log.size(0));
  at::Tensor grad_grad_kl = at::empty({need_grad_kl ? probs.size(0) : 0}, probs.options());
  at::Tensor grad_probs = need_probs ? empty_output_like(probs_c) : at::empty({0}, probs.options());
  if (probs.size(0) == 0 || !(need_grad_kl || need_probs)) return {grad_grad_kl, grad_probs};
  AT_DISPATCH_FLOATING_TYPES(probs.scalar_type(), "class_pairwise_kl_double_backward_cpu", [&] {
    ClassPairwiseKlDoubleBackwardParams<scalar_t> p;
    p.grad_grad_probs = upstream_c.data_ptr<scalar_t>();
    p.grad_kl = grad_c.data_ptr<scalar_t>();
    p.probs = probs_c.data_ptr<scalar_t>();
    p.labels = labels_c.data_ptr<int64_t>();
    p.class_mean_log = mean_c.data_ptr<scalar_t>();
    p.grad_grad_kl = need_grad_kl ? grad_grad_kl.data_ptr<scalar_t>() : nullptr;
    p.grad_probs = need_probs ? grad_probs.data_ptr<scalar_t>() : nullptr;
    p.num_samples = probs.size(0);
    p.num_categories = probs.size(1);
    p.num_classes = class_mean_log.size(0);
    p.eps = eps;
    p.num_threads = cpu_threads();
    class_pairwise_kl_double_backward_cpu(p);
  });
  return {grad_grad_kl, grad_probs};
}

#ifdef GMKERNELS_WITH_CUDA
at::Tensor cuda_workspace(const at::Tensor& probs, int64_t num_classes) {
  const size_t bytes = class_pairwise_kl_cuda_workspace_bytes(
      probs.size(0), probs.size(1), num_classes, probs.element_size());
  return at::empty({static_cast<int64_t>(bytes)}, probs.options().dtype(at::kByte));
}

// The compact table row of each sample's class, on the device: its label when the table holds
// every class, else the rank of its label among the distinct labels (a sort, deterministic).
// Labels outside [0, num_classes) (the binding leaves range checks to the Python wrapper) stay
// out of the table's range (ranked past every class, row `table_rows`), so the kernels give them
// NaN as before.
at::Tensor table_rows_cuda(const at::Tensor& labels, int64_t num_classes, int64_t table_rows) {
  if (table_rows == num_classes) return labels.clone();
  const at::Tensor valid = labels.ge(0).logical_and(labels.lt(num_classes));
  const at::Tensor keys = at::where(valid, labels, num_classes);
  const at::Tensor rank = std::get<1>(at::_unique(keys, /*sorted=*/true, /*return_inverse=*/true));
  return at::where(valid, rank, table_rows);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cuda_class_pairwise_kl(const at::Tensor& probs,
                                                                      const at::Tensor& labels,
                                                                      double eps,
                                                                      int64_t num_classes) {
  check_class_pairwise_kl_args(probs, labels, eps, num_classes);
  const c10::cuda::CUDAGuard guard(probs.device());
  const at::Tensor probs_c = probs.contiguous(), labels_c = labels.contiguous();
  const int64_t num_samples = probs.size(0), table_rows = table_rows_bound(num_samples, num_classes);
  at::Tensor kl = at::empty({num_samples}, probs.options());
  at::Tensor class_mean_log = at::zeros({table_rows, probs.size(1)}, probs.options());
  if (num_samples == 0) return {kl, class_mean_log, at::empty({0}, labels.options())};
  const at::Tensor rows = table_rows_cuda(labels_c, num_classes, table_rows);
  at::Tensor workspace = cuda_workspace(probs_c, table_rows);
  AT_DISPATCH_FLOATING_TYPES(probs.scalar_type(), "class_pairwise_kl_cuda", [&] {
    check_cuda_status(
        class_pairwise_kl_forward_cuda(forward_params<scalar_t>(probs_c, rows, kl,
                                                                class_mean_log, eps,
                                                                workspace.data_ptr()),
                                       c10::cuda::getCurrentCUDAStream().stream()),
        "class_pairwise_kl");
  });
  return {kl, class_mean_log, rows};
}

at::Tensor cuda_class_pairwise_kl_backward(const at::Tensor& grad_kl, const at::Tensor& probs,
                                           const at::Tensor& labels,
                                           const at::Tensor& class_mean_log, double eps) {
  check_backward_args(grad_kl, probs, labels, class_mean_log, eps);
  const c10::cuda::CUDAGuard guard(probs.device());
  const at::Tensor grad_c = grad_kl.contiguous(), probs_c = probs.contiguous();
  const at::Tensor labels_c = labels.contiguous(), mean_c = class_mean_log.contiguous();
  at::Tensor grad_probs = at::empty_like(probs_c);
  if (probs.size(0) == 0) return grad_probs;
  at::Tensor workspace = cuda_workspace(probs_c, class_mean_log.size(0));
  AT_DISPATCH_FLOATING_TYPES(probs.scalar_type(), "class_pairwise_kl_backward_cuda", [&] {
    check_cuda_status(
        class_pairwise_kl_backward_cuda(
            backward_params<scalar_t>(grad_c, probs_c, labels_c, mean_c, grad_probs, eps,
                                      workspace.data_ptr()),
            c10::cuda::getCurrentCUDAStream().stream()),
        "class_pairwise_kl_backward");
  });
  return grad_probs;
}
#endif

}  // namespace

TORCH_LIBRARY_FRAGMENT(gmkernels, m) {
  m.def(
      "class_pairwise_kl(Tensor probs, Tensor labels, float eps, int num_classes)"
      " -> (Tensor, Tensor, Tensor)");
  m.def(
      "class_pairwise_kl_backward(Tensor grad_kl, Tensor probs, Tensor labels,"
      " Tensor class_mean_log, float eps) -> Tensor");
  m.def(
      "class_pairwise_kl_double_backward(Tensor grad_grad_probs, Tensor grad_kl, Tensor probs,"
      " Tensor labels, Tensor class_mean_log, float eps, bool need_grad_kl, bool need_probs)"
      " -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(gmkernels, CPU, m) {
  m.impl("class_pairwise_kl", &cpu_class_pairwise_kl);
  m.impl("class_pairwise_kl_backward", &cpu_class_pairwise_kl_backward);
  m.impl("class_pairwise_kl_double_backward", &cpu_class_pairwise_kl_double_backward);
}

#ifdef GMKERNELS_WITH_CUDA
TORCH_LIBRARY_IMPL(gmkernels, CUDA, m) {
  m.impl("class_pairwise_kl", &cuda_class_pairwise_kl);
  m.impl("class_pairwise_kl_backward", &cuda_class_pairwise_kl_backward);
}
#endif

}  // namespace gmk

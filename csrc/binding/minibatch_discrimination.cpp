// Tensors -> MinibatchDiscrimination*Params, argument checks, and the schemas and CPU/CUDA
// registrations of gmkernels::minibatch_discrimination,
// gmkernels::minibatch_discrimination_backward and (CPU only)
// gmkernels::minibatch_discrimination_double_backward. CPU takes float32/float64; CUDA also
// float16/bfloat16 (float accumulation).
#include <torch/library.h>

#include "../kernels/minibatch_discrimination.h"
#include "checks.h"

#ifdef GMKERNELS_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace gmk {
namespace {

void check_M(const at::Tensor& M) {
  TORCH_CHECK(M.dim() == 3, "M must be (N, B, C), got shape ", M.sizes());
}

void check_grad_out(const at::Tensor& grad_out, const at::Tensor& M) {
  check_same_dtype_device(grad_out, M, "grad_out", "M");
  TORCH_CHECK(grad_out.dim() == 2 && grad_out.size(0) == M.size(0) &&
                  grad_out.size(1) == M.size(1),
              "grad_out must be (N, B) = (", M.size(0), ", ", M.size(1), "), got shape ",
              grad_out.sizes());
}

// at::Half / at::BFloat16 memory handed to the CUDA kernels as their bit patterns.
template <typename scalar_t>
struct KernelType {
  using type = scalar_t;
};
template <>
struct KernelType<at::Half> {
  using type = Float16Bits;
};
template <>
struct KernelType<at::BFloat16> {
  using type = BFloat16Bits;
};

template <typename scalar_t>
using kernel_t = typename KernelType<scalar_t>::type;

template <typename scalar_t>
MinibatchDiscriminationParams<kernel_t<scalar_t>> forward_params(const at::Tensor& M,
                                                                 const at::Tensor& out) {
  MinibatchDiscriminationParams<kernel_t<scalar_t>> p;
  p.M = reinterpret_cast<const kernel_t<scalar_t>*>(M.data_ptr<scalar_t>());
  p.out = reinterpret_cast<kernel_t<scalar_t>*>(out.data_ptr<scalar_t>());
  p.num_samples = M.size(0);
  p.num_kernels = M.size(1);
  p.kernel_dim = M.size(2);
  p.num_threads = cpu_threads();
  return p;
}

template <typename scalar_t>
MinibatchDiscriminationBackwardParams<kernel_t<scalar_t>> backward_params(
    const at::Tensor& grad_out, const at::Tensor& M, const at::Tensor& grad_M) {
  MinibatchDiscriminationBackwardParams<kernel_t<scalar_t>> p;
  p.grad_out = reinterpret_cast<const kernel_t<scalar_t>*>(grad_out.data_ptr<scalar_t>());
  p.M = reinterpret_cast<const kernel_t<scalar_t>*>(M.data_ptr<scalar_t>());
  p.grad_M = reinterpret_cast<kernel_t<scalar_t>*>(grad_M.data_ptr<scalar_t>());
  p.num_samples = M.size(0);
  p.num_kernels = M.size(1);
  p.kernel_dim = M.size(2);
  p.num_threads = cpu_threads();
  return p;
}

at::Tensor cpu_minibatch_discrimination(const at::Tensor& M) {
  check_float_tensor(M, "M");
  check_M(M);
  const at::Tensor M_c = M.contiguous();
  at::Tensor out = at::empty({M.size(0), M.size(1)}, M.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(M.scalar_type(), "minibatch_discrimination_cpu", [&] {
    minibatch_discrimination_forward_cpu(forward_params<scalar_t>(M_c, out));
  });
  return out;
}

at::Tensor cpu_minibatch_discrimination_backward(const at::Tensor& grad_out, const at::Tensor& M) {
  check_float_tensor(M, "M");
  check_M(M);
  check_grad_out(grad_out, M);
  const at::Tensor grad_out_c = grad_out.contiguous(), M_c = M.contiguous();
  at::Tensor grad_M = at::empty_like(M_c);
  if (grad_M.numel() == 0) return grad_M;
  AT_DISPATCH_FLOATING_TYPES(M.scalar_type(), "minibatch_discrimination_backward_cpu", [&] {
    minibatch_discrimination_backward_cpu(backward_params<scalar_t>(grad_out_c, M_c, grad_M));
  });
  return grad_M;
}

// The double backward's kernel, CPU only: the Python double backward calls it when it records no
// graph (a gradient penalty's backward), and otherwise, and on other devices, differentiates a
// recomputed gradient in torch ops. Each output is computed only when its need_* flag is set,
// else it is returned with 0 elements.
std::tuple<at::Tensor, at::Tensor> cpu_minibatch_discrimination_double_backward(
    const at::Tensor& grad_grad_M, const at::Tensor& grad_out, const at::Tensor& M,
    bool need_grad_out, bool need_M) {
  check_float_tensor(M, "M");
  check_M(M);
  check_grad_out(grad_out, M);
  check_same_dtype_device(grad_grad_M, M, "grad_grad_M", "M");
  TORCH_CHECK(grad_grad_M.sizes() == M.sizes(), "grad_grad_M must have M's shape ", M.sizes(),
              ", got ", grad_grad_M.sizes());
  const at::Tensor upstream_c = grad_grad_M.contiguous(), grad_out_c = grad_out.contiguous();
  const at::Tensor M_c = M.contiguous();
  at::Tensor grad_grad_out = need_grad_out ? at::empty_like(grad_out_c)
                                           : at::empty({0}, M.options());
  at::Tensor grad_M = need_M ? at::empty_like(M_c) : at::empty({0}, M.options());
  if (M.numel() == 0 || !(need_grad_out || need_M)) {
    if (need_grad_out) grad_grad_out.zero_();   // C = 0: o = N - 1 whatever M
    return {grad_grad_out, grad_M};
  }
  AT_DISPATCH_FLOATING_TYPES(M.scalar_type(), "minibatch_discrimination_double_backward_cpu", [&] {
    MinibatchDiscriminationDoubleBackwardParams<scalar_t> p;
    p.grad_grad_M = upstream_c.data_ptr<scalar_t>();
    p.grad_out = grad_out_c.data_ptr<scalar_t>();
    p.M = M_c.data_ptr<scalar_t>();
    p.grad_grad_out = need_grad_out ? grad_grad_out.data_ptr<scalar_t>() : nullptr;
    p.grad_M = need_M ? grad_M.data_ptr<scalar_t>() : nullptr;
    p.num_samples = M.size(0);
    p.num_kernels = M.size(1);
    p.kernel_dim = M.size(2);
    p.num_threads = cpu_threads();
    minibatch_discrimination_double_backward_cpu(p);
  });
  return {grad_grad_out, grad_M};
}

#ifdef GMKERNELS_WITH_CUDA
void check_cuda_float_tensor(const at::Tensor& t, const char* name) {
  const auto dtype = t.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf ||
                  dtype == at::kBFloat16,
              name, " must be float32, float64, float16 or bfloat16, got ", dtype);
}

at::Tensor cuda_minibatch_discrimination(const at::Tensor& M) {
  check_cuda_float_tensor(M, "M");
  check_M(M);
  const c10::cuda::CUDAGuard guard(M.device());
  const at::Tensor M_c = M.contiguous();
  at::Tensor out = at::empty({M.size(0), M.size(1)}, M.options());
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, M.scalar_type(),
                                  "minibatch_discrimination_cuda", [&] {
    check_cuda_status(
        minibatch_discrimination_forward_cuda(forward_params<scalar_t>(M_c, out),
                                              c10::cuda::getCurrentCUDAStream().stream()),
        "minibatch_discrimination");
  });
  return out;
}

at::Tensor cuda_minibatch_discrimination_backward(const at::Tensor& grad_out,
                                                  const at::Tensor& M) {
  check_cuda_float_tensor(M, "M");
  check_M(M);
  check_grad_out(grad_out, M);
  const c10::cuda::CUDAGuard guard(M.device());
  const at::Tensor grad_out_c = grad_out.contiguous(), M_c = M.contiguous();
  at::Tensor grad_M = at::empty_like(M_c);
  if (grad_M.numel() == 0) return grad_M;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, M.scalar_type(),
                                  "minibatch_discrimination_backward_cuda", [&] {
    check_cuda_status(
        minibatch_discrimination_backward_cuda(backward_params<scalar_t>(grad_out_c, M_c, grad_M),
                                               c10::cuda::getCurrentCUDAStream().stream()),
        "minibatch_discrimination_backward");
  });
  return grad_M;
}
#endif

}  // namespace

TORCH_LIBRARY_FRAGMENT(gmkernels, m) {
  m.def("minibatch_discrimination(Tensor M) -> Tensor");
  m.def("minibatch_discrimination_backward(Tensor grad_out, Tensor M) -> Tensor");
  m.def(
      "minibatch_discrimination_double_backward(Tensor grad_grad_M, Tensor grad_out, Tensor M,"
      " bool need_grad_out, bool need_M) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(gmkernels, CPU, m) {
  m.impl("minibatch_discrimination", &cpu_minibatch_discrimination);
  m.impl("minibatch_discrimination_backward", &cpu_minibatch_discrimination_backward);
  m.impl("minibatch_discrimination_double_backward",
         &cpu_minibatch_discrimination_double_backward);
}

#ifdef GMKERNELS_WITH_CUDA
TORCH_LIBRARY_IMPL(gmkernels, CUDA, m) {
  m.impl("minibatch_discrimination", &cuda_minibatch_discrimination);
  m.impl("minibatch_discrimination_backward", &cuda_minibatch_discrimination_backward);
}
#endif

}  // namespace gmk

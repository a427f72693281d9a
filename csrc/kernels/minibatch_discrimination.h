// minibatch_discrimination (Salimans et al. 2016), M (N, B, C) row-major:
//   e_ijb = exp(-sum_c |M_ibc - M_jbc|),   out_ib = sum_{j != i} e_ijb
// Backward, with g = grad_out: e_ijb appears in out_ib and out_jb, so
//   grad_M_ibc = sum_{j != i} (g_ib + g_jb) e_ijb sign(M_jbc - M_ibc)     (sign(0) = 0)
// Double backward (CPU), V the incoming gradient of grad_M, s_ijbc = sign(M_jbc - M_ibc) and
// h_ijb = sum_c (V_ibc - V_jbc) s_ijbc (the sign's derivative is 0 a.e., e's is e s):
//   d<grad_M, V>/dg_ib    = sum_{j != i} e_ijb h_ijb,
//   d<grad_M, V>/dM_ibc   = sum_{j != i} (g_ib + g_jb) e_ijb h_ijb s_ijbc.
// Nothing of size N x N is stored: the backward recomputes e from M.
// All tensors are contiguous row-major; no torch types appear here.
#pragma once
#include <cstdint>
#include <type_traits>

#include "cuda_status.h"

namespace gmk {

// 16-bit float storage for the CUDA launchers (bit patterns of IEEE half and bfloat16); the
// kernels convert to float on load, so the binding can pass at::Half / at::BFloat16 memory as is.
struct Float16Bits {
  uint16_t bits;
};
struct BFloat16Bits {
  uint16_t bits;
};

// Kernel dimensions C up to this are compile-time constants in the kernels (unrolled, the own
// row and the gradient accumulators in registers); a larger C is handled at run time.
constexpr int kMaxFixedKernelDim = 8;

// body(std::integral_constant<int, K>) with K = dim for 1 <= dim <= kMaxFixedKernelDim, else
// K = 0 (dimension known only at run time). Shared by the CPU and CUDA launchers.
template <typename Body>
void dispatch_kernel_dim(int64_t dim, Body&& body) {
  switch (dim) {
    case 1: body(std::integral_constant<int, 1>{}); break;
    case 2: body(std::integral_constant<int, 2>{}); break;
    case 3: body(std::integral_constant<int, 3>{}); break;
    case 4: body(std::integral_constant<int, 4>{}); break;
    case 5: body(std::integral_constant<int, 5>{}); break;
    case 6: body(std::integral_constant<int, 6>{}); break;
    case 7: body(std::integral_constant<int, 7>{}); break;
    case 8: body(std::integral_constant<int, 8>{}); break;
    default: body(std::integral_constant<int, 0>{}); break;
  }
}
static_assert(kMaxFixedKernelDim == 8, "dispatch_kernel_dim lists the fixed dimensions");

template <typename scalar_t>
struct MinibatchDiscriminationParams {
  const scalar_t* M;      // (num_samples, num_kernels, kernel_dim)
  scalar_t* out;          // (num_samples, num_kernels), written
  int64_t num_samples;    // N
  int64_t num_kernels;    // B
  int64_t kernel_dim;     // C
  int num_threads;
};

template <typename scalar_t>
struct MinibatchDiscriminationBackwardParams {
  const scalar_t* grad_out;  // (num_samples, num_kernels)
  const scalar_t* M;         // (num_samples, num_kernels, kernel_dim)
  scalar_t* grad_M;          // (num_samples, num_kernels, kernel_dim), written
  int64_t num_samples;
  int64_t num_kernels;
  int64_t kernel_dim;
  int num_threads;
};

template <typename scalar_t>
struct MinibatchDiscriminationDoubleBackwardParams {
  const scalar_t* grad_grad_M;  // (num_samples, num_kernels, kernel_dim): V
  const scalar_t* grad_out;     // (num_samples, num_kernels)
  const scalar_t* M;            // (num_samples, num_kernels, kernel_dim)
  scalar_t* grad_grad_out;      // (num_samples, num_kernels), written; null when not wanted
  scalar_t* grad_M;             // (num_samples, num_kernels, kernel_dim), written; null when not wanted
  int64_t num_samples;
  int64_t num_kernels;
  int64_t kernel_dim;
  int num_threads;
};

template <typename scalar_t>
void minibatch_discrimination_forward_cpu(const MinibatchDiscriminationParams<scalar_t>& params);
template <typename scalar_t>
void minibatch_discrimination_backward_cpu(
    const MinibatchDiscriminationBackwardParams<scalar_t>& params);
template <typename scalar_t>
void minibatch_discrimination_double_backward_cpu(
    const MinibatchDiscriminationDoubleBackwardParams<scalar_t>& params);

// CUDA launchers (csrc/cuda/minibatch_discrimination.cu) for float, double, Float16Bits and
// BFloat16Bits; 16-bit inputs accumulate in float. `stream` is a cudaStream_t, the result says
// whether every launch succeeded (cuda_status.h).
template <typename scalar_t>
CudaStatus minibatch_discrimination_forward_cuda(
    const MinibatchDiscriminationParams<scalar_t>& params, void* stream);
template <typename scalar_t>
CudaStatus minibatch_discrimination_backward_cuda(
    const MinibatchDiscriminationBackwardParams<scalar_t>& params, void* stream);

}  // namespace gmk

// CUDA kernels of minibatch_discrimination (math in csrc/kernels/minibatch_discrimination.h).
// One thread owns one row i of one kernel b and sweeps every j != i itself: the N x N pairs of
// a kernel are never stored, each output is accumulated by one thread in a fixed order
// (deterministic, no atomics), and the doubled arithmetic of not using e_ij = e_ji is what a GPU
// has to spare. All threads of a block read the same M[j, b, :] in the same iteration, so those
// loads are broadcasts served by L1. float16/bfloat16 are read and written as such and
// accumulated in float; float64 in double.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <climits>

#include "../kernels/minibatch_discrimination.h"
#include "cuda_status.cuh"

namespace gmk {
namespace {

constexpr int kThreads = 128;

template <typename T>
struct Accumulate {
  using type = float;
};
template <>
struct Accumulate<double> {
  using type = double;
};

__device__ __forceinline__ float load(const float* p) { return __ldg(p); }
__device__ __forceinline__ double load(const double* p) { return __ldg(p); }
__device__ __forceinline__ float load(const Float16Bits* p) {
  return __half2float(__ushort_as_half(__ldg(reinterpret_cast<const unsigned short*>(p))));
}
__device__ __forceinline__ float load(const BFloat16Bits* p) {
  return __bfloat162float(
      __ushort_as_bfloat16(__ldg(reinterpret_cast<const unsigned short*>(p))));
}

__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(double* p, double v) { *p = v; }
__device__ __forceinline__ void store(Float16Bits* p, float v) {
  p->bits = __half_as_ushort(__float2half_rn(v));
}
__device__ __forceinline__ void store(BFloat16Bits* p, float v) {
  p->bits = __bfloat16_as_ushort(__float2bfloat16_rn(v));
}

__device__ __forceinline__ float exp_of(float x) { return expf(x); }
__device__ __forceinline__ double exp_of(double x) { return exp(x); }

// The thread's own row M[i, b, :] (kDim > 0: registers; kDim == 0: read from memory each use).
template <typename T, int kDim>
struct OwnRow {
  using Acc = typename Accumulate<T>::type;
  Acc values[kDim > 0 ? kDim : 1];
  const T* row;

  __device__ OwnRow(const T* row_pointer, bool active) : row(row_pointer) {
    if constexpr (kDim > 0) {
#pragma unroll
      for (int c = 0; c < kDim; ++c) values[c] = active ? load(row + c) : Acc(0);
    }
  }
  __device__ Acc operator()(int64_t c) const {
    if constexpr (kDim > 0) {
      return values[c];
    } else {
      return load(row + c);
    }
  }
};

template <typename T, int kDim>
__device__ __forceinline__ typename Accumulate<T>::type l1_distance(const OwnRow<T, kDim>& own,
                                                                    const T* other,
                                                                    int64_t dim) {
  using Acc = typename Accumulate<T>::type;
  Acc distance = 0;
  if constexpr (kDim > 0) {
#pragma unroll
    for (int c = 0; c < kDim; ++c) distance += fabs(load(other + c) - own(c));
  } else {
    for (int64_t c = 0; c < dim; ++c) distance += fabs(load(other + c) - own(c));
  }
  return distance;
}

template <typename T, int kDim>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(MinibatchDiscriminationParams<T> p, int64_t row_blocks) {
  using Acc = typename Accumulate<T>::type;
  const int64_t n = p.num_samples, kernels = p.num_kernels, dim = p.kernel_dim;
  const int64_t b = blockIdx.x / row_blocks;
  const int64_t i = (blockIdx.x % row_blocks) * kThreads + threadIdx.x;
  // Threads past the last row still walk the j loop (uniform control flow) but never store.
  const bool active = i < n;
  const OwnRow<T, kDim> own(p.M + ((active ? i : 0) * kernels + b) * dim, active);
  Acc total = 0;
  for (int64_t j = 0; j < n; ++j) {
    const Acc distance = l1_distance<T, kDim>(own, p.M + (j * kernels + b) * dim, dim);
    if (j != i) total += exp_of(-distance);
  }
  if (active) store(p.out + i * kernels + b, total);
}

// Gradient coordinates c0 .. c0 + kGradDims - 1 of row i:
//   grad_M[i, b, c] = sum_{j != i} (g_i + g_j) e_ij sign(M_jbc - M_ibc), sign(0) = 0.
template <typename T, int kDim, int kGradDims>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(MinibatchDiscriminationBackwardParams<T> p, int64_t row_blocks, int64_t c0) {
  using Acc = typename Accumulate<T>::type;
  const int64_t n = p.num_samples, kernels = p.num_kernels, dim = p.kernel_dim;
  const int64_t b = blockIdx.x / row_blocks;
  const int64_t i = (blockIdx.x % row_blocks) * kThreads + threadIdx.x;
  const bool active = i < n;
  const int64_t own_index = (active ? i : 0) * kernels + b;
  const OwnRow<T, kDim> own(p.M + own_index * dim, active);
  const Acc grad_i = active ? Acc(load(p.grad_out + own_index)) : Acc(0);
  Acc own_coords[kGradDims];
  Acc grad[kGradDims];
#pragma unroll
  for (int cc = 0; cc < kGradDims; ++cc) {
    own_coords[cc] = active ? Acc(load(p.M + own_index * dim + c0 + cc)) : Acc(0);
    grad[cc] = 0;
  }
  for (int64_t j = 0; j < n; ++j) {
    const T* other = p.M + (j * kernels + b) * dim;
    const Acc distance = l1_distance<T, kDim>(own, other, dim);
    const Acc weight =
        j != i ? (grad_i + Acc(load(p.grad_out + j * kernels + b))) * exp_of(-distance) : Acc(0);
#pragma unroll
    for (int cc = 0; cc < kGradDims; ++cc) {
      const Acc difference = Acc(load(other + c0 + cc)) - own_coords[cc];
      grad[cc] += difference > 0 ? weight : (difference < 0 ? -weight : Acc(0));
    }
  }
  if (active) {
#pragma unroll
    for (int cc = 0; cc < kGradDims; ++cc) store(p.grad_M + own_index * dim + c0 + cc, grad[cc]);
  }
}

// One block per (kernel, 128 rows), on a 1-d grid: at most 2^31 - 1 blocks.
bool grid_fits(int64_t blocks) { return blocks <= int64_t(INT_MAX); }

}  // namespace

template <typename T>
CudaStatus minibatch_discrimination_forward_cuda(const MinibatchDiscriminationParams<T>& p,
                                                 void* stream) {
  if (p.num_samples == 0 || p.num_kernels == 0) return {};
  const int64_t row_blocks = (p.num_samples + kThreads - 1) / kThreads;
  if (!grid_fits(p.num_kernels * row_blocks))
    return cuda_status(cudaErrorInvalidConfiguration, "forward_kernel grid (B * N / 128 blocks)");
  const unsigned blocks = static_cast<unsigned>(p.num_kernels * row_blocks);
  cudaStream_t cuda_stream = static_cast<cudaStream_t>(stream);
  dispatch_kernel_dim(p.kernel_dim, [&](auto fixed_dim) {
    constexpr int kDim = decltype(fixed_dim)::value;
    forward_kernel<T, kDim><<<blocks, kThreads, 0, cuda_stream>>>(p, row_blocks);
  });
  return launch_status("forward_kernel");
}

template <typename T>
CudaStatus minibatch_discrimination_backward_cuda(const MinibatchDiscriminationBackwardParams<T>& p,
                                                  void* stream) {
  if (p.num_samples == 0 || p.num_kernels == 0 || p.kernel_dim == 0) return {};
  const int64_t row_blocks = (p.num_samples + kThreads - 1) / kThreads;
  if (!grid_fits(p.num_kernels * row_blocks))
    return cuda_status(cudaErrorInvalidConfiguration, "backward_kernel grid (B * N / 128 blocks)");
  const unsigned blocks = static_cast<unsigned>(p.num_kernels * row_blocks);
  cudaStream_t cuda_stream = static_cast<cudaStream_t>(stream);
  CudaStatus status;
  dispatch_kernel_dim(p.kernel_dim, [&](auto fixed_dim) {
    constexpr int kDim = decltype(fixed_dim)::value;
    if constexpr (kDim > 0) {
      backward_kernel<T, kDim, kDim><<<blocks, kThreads, 0, cuda_stream>>>(p, row_blocks, 0);
      status = launch_status("backward_kernel");
    } else {
      // C > kMaxFixedKernelDim: the gradient in passes of at most kMaxFixedKernelDim
      // coordinates, each recomputing e_ij, so that the accumulators stay in registers.
      for (int64_t c0 = 0; c0 < p.kernel_dim && status.ok(); c0 += kMaxFixedKernelDim) {
        const int64_t left = p.kernel_dim - c0;
        const int64_t count = left < kMaxFixedKernelDim ? left : kMaxFixedKernelDim;
        dispatch_kernel_dim(count, [&](auto grad_dims) {
          constexpr int kGradDims = decltype(grad_dims)::value;
          if constexpr (kGradDims > 0) {
            backward_kernel<T, 0, kGradDims><<<blocks, kThreads, 0, cuda_stream>>>(p, row_blocks,
                                                                                   c0);
          }
        });
        status = launch_status("backward_kernel (coordinate pass)");
      }
    }
  });
  return status;
}

template CudaStatus minibatch_discrimination_forward_cuda<float>(
    const MinibatchDiscriminationParams<float>&, void*);
template CudaStatus minibatch_discrimination_forward_cuda<double>(
    const MinibatchDiscriminationParams<double>&, void*);
template CudaStatus minibatch_discrimination_forward_cuda<Float16Bits>(
    const MinibatchDiscriminationParams<Float16Bits>&, void*);
template CudaStatus minibatch_discrimination_forward_cuda<BFloat16Bits>(
    const MinibatchDiscriminationParams<BFloat16Bits>&, void*);
template CudaStatus minibatch_discrimination_backward_cuda<float>(
    const MinibatchDiscriminationBackwardParams<float>&, void*);
template CudaStatus minibatch_discrimination_backward_cuda<double>(
    const MinibatchDiscriminationBackwardParams<double>&, void*);
template CudaStatus minibatch_discrimination_backward_cuda<Float16Bits>(
    const MinibatchDiscriminationBackwardParams<Float16Bits>&, void*);
template CudaStatus minibatch_discrimination_backward_cuda<BFloat16Bits>(
    const MinibatchDiscriminationBackwardParams<BFloat16Bits>&, void*);

}  // namespace gmk

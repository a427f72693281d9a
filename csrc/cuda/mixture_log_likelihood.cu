// CUDA kernels of mixture_log_likelihood (math in csrc/kernels/mixture_log_likelihood.h).
// Direct path (C <= 65): one thread per row; the C exponents and weights of the row live in a
// per-thread array (registers / local memory), the logsumexp is accumulated online over the
// components, differences are taken directly. The backward writes W_bc to a (B, C) scratch (as
// small as x for the simplex) and one block per component reduces it over the rows in a fixed
// order (deterministic, no atomics).
// Tiled path: the epilogues of one cuBLAS tile (csrc/binding/mixture_log_likelihood_tiled.cpp
// computes S with at::mm): one warp
// per row for the forward's online logsumexp, one thread per element for the backward's W.
#include <cuda_runtime.h>

#include <cstdint>
#include <limits>

#include "../kernels/mixture_log_likelihood.h"
#include "cuda_status.cuh"

namespace gmk {
namespace {

constexpr int kThreads = 256;
constexpr int kWarpsPerBlock = kThreads / 32;
// Coordinates reduced together per pass of the component-gradient kernel.
constexpr int kCoordinateChunk = 8;
constexpr double kLog2Pi = 1.83787706640934548356;

template <typename scalar_t>
__device__ __forceinline__ scalar_t minus_infinity() {
  return -std::numeric_limits<scalar_t>::infinity();
}

__device__ __forceinline__ float exp_of(float x) { return expf(x); }
__device__ __forceinline__ double exp_of(double x) { return exp(x); }
__device__ __forceinline__ float log_of(float x) { return logf(x); }
__device__ __forceinline__ double log_of(double x) { return log(x); }

template <typename scalar_t>
__device__ __forceinline__ scalar_t precision_of(const scalar_t* var, int64_t c, int64_t k,
                                                 int64_t dim, bool diagonal) {
  return scalar_t(1) / (diagonal ? var[c * dim + k] : var[c]);
}

// offset_c = lw_c - 1/2 sum_k log(2 pi v_ck), one thread per component, into shared memory.
template <typename scalar_t>
__device__ void component_offsets(const scalar_t* var, const scalar_t* log_weights,
                                  int64_t num_components, int64_t dim, bool diagonal,
                                  scalar_t* offset) {
  for (int64_t c = threadIdx.x; c < num_components; c += blockDim.x) {
    double log_norm = 0;
    if (diagonal) {
      for (int64_t k = 0; k < dim; ++k) log_norm += kLog2Pi + log(double(var[c * dim + k]));
    } else {
      log_norm = double(dim) * (kLog2Pi + log(double(var[c])));
    }
    offset[c] = static_cast<scalar_t>(double(log_weights[c]) - 0.5 * log_norm);
  }
  __syncthreads();
}

// E_bc for one row and component, differences taken directly.
template <typename scalar_t>
__device__ __forceinline__ scalar_t row_exponent(const scalar_t* x_row, const scalar_t* means,
                                                 const scalar_t* var, scalar_t offset, int64_t c,
                                                 int64_t dim, bool diagonal) {
  const scalar_t* mean = means + c * dim;
  scalar_t acc = 0;
  if (diagonal) {
    for (int64_t k = 0; k < dim; ++k) {
      const scalar_t diff = x_row[k] - mean[k];
      acc += diff * diff / var[c * dim + k];
    }
  } else {
    for (int64_t k = 0; k < dim; ++k) {
      const scalar_t diff = x_row[k] - mean[k];
      acc += diff * diff;
    }
    acc /= var[c];
  }
  return offset - scalar_t(0.5) * acc;
}

template <typename scalar_t>
__global__ void direct_forward_kernel(MixtureLogLikelihoodParams<scalar_t> p) {
  __shared__ scalar_t offset[kDirectMaxComponents];
  component_offsets(p.var, p.log_weights, p.num_components, p.dim, p.diagonal, offset);
  const int64_t b = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= p.num_rows) return;
  const scalar_t* x_row = p.x + b * p.dim;
  scalar_t running_max = minus_infinity<scalar_t>(), running_sum = 0;
  for (int64_t c = 0; c < p.num_components; ++c) {
    const scalar_t e = row_exponent(x_row, p.means, p.var, offset[c], c, p.dim, p.diagonal);
    if (e == minus_infinity<scalar_t>()) continue;  // switched off
    if (e > running_max) {
      running_sum = running_sum * exp_of(running_max - e) + scalar_t(1);
      running_max = e;
    } else {
      running_sum += exp_of(e - running_max);
    }
  }
  p.log_likelihood[b] = running_max + log_of(running_sum);
}

// W_bc into the scratch and grad_x (when wanted) for one row per thread.
template <typename scalar_t>
__global__ void direct_backward_rows_kernel(MixtureLogLikelihoodBackwardParams<scalar_t> p) {
  __shared__ scalar_t offset[kDirectMaxComponents];
  component_offsets(p.var, p.log_weights, p.num_components, p.dim, p.diagonal, offset);
  const int64_t b = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= p.num_rows) return;
  const scalar_t* x_row = p.x + b * p.dim;
  const scalar_t grad = p.grad[b], log_likelihood = p.log_likelihood[b];
  const bool live = grad != scalar_t(0) && log_likelihood != minus_infinity<scalar_t>();
  scalar_t w[kDirectMaxComponents];
  for (int64_t c = 0; c < p.num_components; ++c) {
    const scalar_t e = row_exponent(x_row, p.means, p.var, offset[c], c, p.dim, p.diagonal);
    w[c] = live ? grad * exp_of(e - log_likelihood) : scalar_t(0);
    p.weights_scratch[b * p.num_components + c] = w[c];
  }
  if (!p.x_grad) return;
  for (int64_t k = 0; k < p.dim; ++k) {
    scalar_t acc = 0;
    for (int64_t c = 0; c < p.num_components; ++c)
      acc += w[c] * precision_of(p.var, c, k, p.dim, p.diagonal) *
             (p.means[c * p.dim + k] - x_row[k]);
    p.grad_x[b * p.dim + k] = acc;
  }
}

// Sum of `value` over the block (kThreads threads), in a fixed tree order; every thread gets it.
template <typename scalar_t>
__device__ scalar_t block_sum(scalar_t value, scalar_t* shared) {
  shared[threadIdx.x] = value;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) shared[threadIdx.x] += shared[threadIdx.x + stride];
    __syncthreads();
  }
  const scalar_t total = shared[0];
  __syncthreads();
  return total;
}

// One block per component c: grad_lw_c = sum_b W_bc, grad_mu_ck = P_ck sum_b W_bc (x_bk - mu_ck),
// grad_v from sum_b W_bc (x_bk - mu_ck)^2, coordinates in chunks of kCoordinateChunk.
template <typename scalar_t>
__global__ void direct_backward_components_kernel(MixtureLogLikelihoodBackwardParams<scalar_t> p) {
  __shared__ scalar_t shared[kThreads];
  const int64_t c = blockIdx.x;
  const int64_t dim = p.dim, num_components = p.num_components;
  scalar_t partial = 0;
  for (int64_t b = threadIdx.x; b < p.num_rows; b += kThreads)
    partial += p.weights_scratch[b * num_components + c];
  const scalar_t weight_sum = block_sum(partial, shared);
  scalar_t squared_total = 0;  // isotropic: sum over k of sum_b W (x - mu)^2
  for (int64_t k0 = 0; k0 < dim; k0 += kCoordinateChunk) {
    const int64_t chunk = dim - k0 < kCoordinateChunk ? dim - k0 : kCoordinateChunk;
    scalar_t first[kCoordinateChunk] = {}, second[kCoordinateChunk] = {};
    for (int64_t b = threadIdx.x; b < p.num_rows; b += kThreads) {
      const scalar_t w = p.weights_scratch[b * num_components + c];
      for (int64_t j = 0; j < chunk; ++j) {
        const scalar_t diff = p.x[b * dim + k0 + j] - p.means[c * dim + k0 + j];
        first[j] += w * diff;
        second[j] += w * diff * diff;
      }
    }
    for (int64_t j = 0; j < chunk; ++j) {
      const scalar_t weighted_diff = block_sum(first[j], shared);
      const scalar_t weighted_squared = block_sum(second[j], shared);
      const int64_t k = k0 + j;
      const scalar_t precision = precision_of(p.var, c, k, dim, p.diagonal);
      if (threadIdx.x == 0) {
        p.grad_means[c * dim + k] = precision * weighted_diff;
        if (p.diagonal)
          p.grad_var[c * dim + k] =
              scalar_t(0.5) * precision * (precision * weighted_squared - weight_sum);
      }
      squared_total += weighted_squared;
    }
  }
  if (threadIdx.x == 0) {
    p.grad_log_weights[c] = weight_sum;
    if (!p.diagonal) {
      const scalar_t precision = scalar_t(1) / p.var[c];
      p.grad_var[c] = scalar_t(0.5) * precision * (precision * squared_total - scalar_t(dim) * weight_sum);
    }
  }
}

template <typename scalar_t>
__device__ __forceinline__ scalar_t warp_max(scalar_t value) {
  for (int offset = 16; offset > 0; offset /= 2) {
    const scalar_t other = __shfl_xor_sync(0xffffffffu, value, offset);
    value = other > value ? other : value;
  }
  return value;
}

template <typename scalar_t>
__device__ __forceinline__ scalar_t warp_sum(scalar_t value) {
  for (int offset = 16; offset > 0; offset /= 2) value += __shfl_xor_sync(0xffffffffu, value, offset);
  return value;
}

template <typename scalar_t>
__device__ __forceinline__ scalar_t tile_exponent(const MixtureTileParams<scalar_t>& p,
                                                  const scalar_t* row, scalar_t half_norm,
                                                  int64_t c) {
  return p.offset[c] + p.scale[c] * (row[c] - half_norm);
}

// One warp per row: tile maximum, sum of exp(E - new max), running state update by lane 0.
template <typename scalar_t>
__global__ void tile_forward_kernel(MixtureTileParams<scalar_t> p) {
  const int64_t b = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (b >= p.num_rows) return;  // whole warps leave together: b is uniform within a warp
  const scalar_t* row = p.scores + b * p.ld;
  const scalar_t half_norm = p.row_norm != nullptr ? scalar_t(0.5) * p.row_norm[b] : scalar_t(0);
  scalar_t tile_max = minus_infinity<scalar_t>();
  for (int64_t c = lane; c < p.num_cols; c += 32) {
    const scalar_t e = tile_exponent(p, row, half_norm, c);
    tile_max = e > tile_max ? e : tile_max;
  }
  tile_max = warp_max(tile_max);
  const scalar_t old_max = p.running_max[b];
  const scalar_t new_max = old_max > tile_max ? old_max : tile_max;
  if (new_max == minus_infinity<scalar_t>()) {   // warp-uniform
    // Nothing switched on yet, or NaN exponents (the maximum passes over them: a NaN input):
    // those make the row NaN, as a NaN in the sum below does, rather than -inf.
    bool nan_seen = false;
    for (int64_t c = lane; c < p.num_cols; c += 32)
      nan_seen = nan_seen || isnan(tile_exponent(p, row, half_norm, c));
    if (__any_sync(0xffffffffu, nan_seen) && lane == 0)
      p.running_max[b] = std::numeric_limits<scalar_t>::quiet_NaN();
    return;
  }
  scalar_t sum = 0;
  for (int64_t c = lane; c < p.num_cols; c += 32)
    sum += exp_of(tile_exponent(p, row, half_norm, c) - new_max);
  sum = warp_sum(sum);
  if (lane == 0) {
    p.running_sum[b] = p.running_sum[b] * exp_of(old_max - new_max) + sum;
    p.running_max[b] = new_max;
  }
}

template <typename scalar_t>
__global__ void tile_backward_kernel(MixtureTileParams<scalar_t> p) {
  const int64_t total = p.num_rows * p.num_cols;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = i / p.num_cols, c = i % p.num_cols;
    scalar_t* entry = p.scores + b * p.ld + c;
    const scalar_t grad = p.grad[b], log_likelihood = p.log_likelihood[b];
    if (grad == scalar_t(0) || log_likelihood == minus_infinity<scalar_t>()) {
      *entry = 0;
      continue;
    }
    const scalar_t half_norm = p.row_norm != nullptr ? scalar_t(0.5) * p.row_norm[b] : scalar_t(0);
    const scalar_t shifted = p.offset[c] + p.scale[c] * (*entry - half_norm) - log_likelihood;
    *entry = shifted >= p.log_cutoff ? grad * exp_of(shifted) : scalar_t(0);
  }
}

// Blocks for one item per thread (or warp); the grid-stride tile backward caps the count.
unsigned blocks_for(int64_t items, int64_t per_block, int64_t cap = int64_t(1) << 30) {
  const int64_t blocks = (items + per_block - 1) / per_block;
  return static_cast<unsigned>(blocks < cap ? blocks : cap);
}

}  // namespace

template <typename scalar_t>
CudaStatus mixture_log_likelihood_direct_cuda(const MixtureLogLikelihoodParams<scalar_t>& p,
                                              void* stream) {
  if (p.num_rows == 0) return {};
  direct_forward_kernel<scalar_t><<<blocks_for(p.num_rows, kThreads), kThreads, 0,
                                    static_cast<cudaStream_t>(stream)>>>(p);
  return launch_status("direct_forward_kernel");
}

template <typename scalar_t>
CudaStatus mixture_log_likelihood_direct_backward_cuda(
    const MixtureLogLikelihoodBackwardParams<scalar_t>& p, void* stream) {
  if (p.num_rows == 0) return {};
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  direct_backward_rows_kernel<scalar_t><<<blocks_for(p.num_rows, kThreads), kThreads, 0, s>>>(p);
  const CudaStatus rows = launch_status("direct_backward_rows_kernel");
  if (!rows.ok() || !p.component_grads) return rows;
  direct_backward_components_kernel<scalar_t>
      <<<static_cast<unsigned>(p.num_components), kThreads, 0, s>>>(p);
  return launch_status("direct_backward_components_kernel");
}

template <typename scalar_t>
CudaStatus mixture_tile_forward_cuda(const MixtureTileParams<scalar_t>& p, void* stream) {
  if (p.num_rows == 0) return {};
  tile_forward_kernel<scalar_t><<<blocks_for(p.num_rows, kWarpsPerBlock), kThreads, 0,
                                  static_cast<cudaStream_t>(stream)>>>(p);
  return launch_status("tile_forward_kernel");
}

template <typename scalar_t>
CudaStatus mixture_tile_backward_cuda(const MixtureTileParams<scalar_t>& p, void* stream) {
  if (p.num_rows == 0 || p.num_cols == 0) return {};
  tile_backward_kernel<scalar_t><<<blocks_for(p.num_rows * p.num_cols, kThreads, 65536), kThreads, 0,
                                   static_cast<cudaStream_t>(stream)>>>(p);
  return launch_status("tile_backward_kernel");
}

template CudaStatus mixture_log_likelihood_direct_cuda<float>(
    const MixtureLogLikelihoodParams<float>&, void*);
template CudaStatus mixture_log_likelihood_direct_cuda<double>(
    const MixtureLogLikelihoodParams<double>&, void*);
template CudaStatus mixture_log_likelihood_direct_backward_cuda<float>(
    const MixtureLogLikelihoodBackwardParams<float>&, void*);
template CudaStatus mixture_log_likelihood_direct_backward_cuda<double>(
    const MixtureLogLikelihoodBackwardParams<double>&, void*);
template CudaStatus mixture_tile_forward_cuda<float>(const MixtureTileParams<float>&, void*);
template CudaStatus mixture_tile_forward_cuda<double>(const MixtureTileParams<double>&, void*);
template CudaStatus mixture_tile_backward_cuda<float>(const MixtureTileParams<float>&, void*);
template CudaStatus mixture_tile_backward_cuda<double>(const MixtureTileParams<double>&, void*);

}  // namespace gmk

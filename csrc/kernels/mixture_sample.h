// mixture_sample: z[s] = mu[c_s] + S[c_s] eps[s], eps[s] ~ N(0, I) from the Philox stream
// (philox.h).
// S is diag(scale[c]) (scale (N, K)) or the lower triangle of scale[c] (scale (N, K, K)).
// Backward regenerates eps instead of storing it (or, on the CPU, reads it back from z where
// that is accurate: mixture_sample_backward_from_samples_cpu):
//   grad_mu[c]    = sum_{s: c_s = c} grad_z[s]
//   grad_scale[c] = sum_{s: c_s = c} grad_z[s] * eps[s]            (diagonal)
//                 = tril(sum_{s: c_s = c} grad_z[s] eps[s]^T)      (full)
// All tensors are contiguous row-major; no torch types appear here.
#pragma once
#include <cstdint>

#include "cuda_status.h"

namespace gmk {

// Samples grouped by component, stable (sample order kept inside a component): component c owns
// sorted_samples[component_begin[c] .. component_begin[c + 1]). The CUDA kernels get it from the
// binding (a stable sort on the device); the CPU kernels build it themselves (a counting sort) and
// ignore these fields.
struct ComponentGrouping {
  const int64_t* sorted_samples = nullptr;   // (num_samples,)
  const int64_t* component_begin = nullptr;  // (num_components + 1,)
};

template <typename scalar_t>
struct MixtureSampleParams {
  const scalar_t* mu;         // (num_components, dim)
  const scalar_t* scale;      // (num_components, dim) or (num_components, dim, dim)
  const int64_t* component;   // (num_samples,), values in [0, num_components)
  scalar_t* z;                // (num_samples, dim), written
  int64_t num_samples;
  int64_t num_components;
  int64_t dim;
  bool full_scale;            // scale is (N, K, K) lower-triangular
  uint64_t seed;
  int num_threads;            // CPU: OpenMP team size (torch.get_num_threads())
  ComponentGrouping grouping; // CUDA full-scale forward only
};

template <typename scalar_t>
struct MixtureSampleBackwardParams {
  // (num_samples, dim) rows, row s at grad_z + s * grad_row_stride (each row contiguous):
  // grad_row_stride = dim, or 0 when every row is the same, as for the upstream gradient of
  // z.sum(), which is then read from one row instead of an n x dim copy.
  const scalar_t* grad_z;
  int64_t grad_row_stride;
  const scalar_t* scale;      // only its shape matters; kept for symmetry with the forward
  const int64_t* component;   // (num_samples,)
  scalar_t* grad_mu;          // (num_components, dim), zero-filled by the caller, written
  scalar_t* grad_scale;       // (num_components, dim) or (num_components, dim, dim), zero-filled
  int64_t num_samples;
  int64_t num_components;
  int64_t dim;
  bool full_scale;
  uint64_t seed;
  int num_threads;
  // CUDA: true (torch.are_deterministic_algorithms_enabled()) sums each gradient entry over its
  // component's samples in sample order, one writer per entry, no float atomics: the same bits
  // every run. false splits each component's samples over `splits` blocks that add with
  // atomicAdd. The CPU kernels are always deterministic (same bits for any thread count) and
  // ignore both fields.
  bool deterministic;
  int splits;
  ComponentGrouping grouping; // CUDA: both paths of the full case and the deterministic diagonal
  // CPU, diagonal only (mixture_sample_backward_from_samples_cpu): the forward's z (num_samples,
  // dim) and mu, from which eps is recovered instead of regenerated.
  const scalar_t* z = nullptr;
  const scalar_t* mu = nullptr;
};

template <typename scalar_t>
void mixture_sample_forward_cpu(const MixtureSampleParams<scalar_t>& params);
template <typename scalar_t>
void mixture_sample_backward_cpu(const MixtureSampleBackwardParams<scalar_t>& params);
// The diagonal backward from the forward's samples (params.z, params.mu set, full_scale false):
// grad_scale[c] = sum_{s: c_s = c} grad_z[s] * (z[s] - mu[c]) / scale[c], no normal drawn. The
// caller checks that eps = (z - mu) / scale is accurate enough (every |mu| small against its
// |scale|); summed in the same chunk order as the other CPU backwards (the same bits for any
// thread count).
template <typename scalar_t>
void mixture_sample_backward_from_samples_cpu(const MixtureSampleBackwardParams<scalar_t>& params);
// Whether eps = (z - mu) / scale is accurate enough for that backward: every scale entry nonzero
// and |mu| <= kRecoverMaxRatio |scale| entry by entry (a NaN or inf fails). z = mu + scale eps
// is rounded to half an ulp of z, so the recovered eps is off by at most about
// 2^-24 (|mu| / |scale| + 2 |eps|) in float32: ~4e-6 at the ratio limit, 2^-53 times that in
// float64.
constexpr double kRecoverMaxRatio = 64.0;
template <typename scalar_t>
bool mixture_sample_recoverable_cpu(const scalar_t* mu, const scalar_t* scale, int64_t entries);

// CUDA launchers (csrc/cuda/mixture_sample.cu); `stream` is a cudaStream_t, the result says
// whether every launch succeeded (cuda_status.h). A component value outside [0, num_components)
// is never used as an index: the diagonal forward writes a NaN row for that sample, the full
// forward leaves its row as the caller filled it (the binding fills NaN), the backward skips it.
template <typename scalar_t>
CudaStatus mixture_sample_forward_cuda(const MixtureSampleParams<scalar_t>& params, void* stream);
template <typename scalar_t>
CudaStatus mixture_sample_backward_cuda(const MixtureSampleBackwardParams<scalar_t>& params,
                                        void* stream);

}  // namespace gmk

// CPU kernels of mixture_sample (math in csrc/kernels/mixture_sample.h).
// Forward: one pass over the samples, eps made in registers/L1 and never stored.
// Backward: samples are bucketed by component (a counting sort, in sample order), and each work
// item owns one component's slice of the gradient, so the reduction order is fixed: results are
// identical run to run and for any thread count, without atomics.
#include "../kernels/mixture_sample.h"

#include <algorithm>
#include <vector>

#include "../kernels/philox.h"

namespace gmk {
namespace {

// eps of sample `sample` (all `dim` coordinates) into `eps`, which holds 4 * ceil(dim / 4) floats.
inline void fill_eps_row(uint64_t seed, int64_t sample, int64_t dim, float* eps) {
  const int64_t groups = philox_groups_per_row(dim);
  const uint64_t first_counter = static_cast<uint64_t>(sample * groups);
  for (int64_t g = 0; g < groups; ++g) randn4(seed, first_counter + g, eps + 4 * g);
}

// Sample indices grouped by component; component c owns order[begin[c] .. begin[c + 1]).
struct ComponentBuckets {
  std::vector<int64_t> begin;
  std::vector<int64_t> order;
};

ComponentBuckets bucket_by_component(const int64_t* component, int64_t num_samples,
                                     int64_t num_components) {
  ComponentBuckets buckets;
  buckets.begin.assign(num_components + 1, 0);
  buckets.order.resize(num_samples);
  for (int64_t s = 0; s < num_samples; ++s) ++buckets.begin[component[s] + 1];
  for (int64_t c = 0; c < num_components; ++c) buckets.begin[c + 1] += buckets.begin[c];
  std::vector<int64_t> next(buckets.begin.begin(), buckets.begin.end() - 1);
  for (int64_t s = 0; s < num_samples; ++s) buckets.order[next[component[s]]++] = s;
  return buckets;
}

// Diagonal gradients are tiled over (component, block of coordinates) so that a few large
// components still spread over all threads; 16 Philox groups = 64 coordinates per block.
constexpr int64_t kGroupsPerBlock = 16;

template <typename scalar_t>
void backward_diagonal(const MixtureSampleBackwardParams<scalar_t>& p,
                       const ComponentBuckets& buckets) {
  const int64_t dim = p.dim;
  const int64_t groups = philox_groups_per_row(dim);
  const int64_t blocks = (groups + kGroupsPerBlock - 1) / kGroupsPerBlock;
  const int64_t items = p.num_components * blocks;
#pragma omp parallel for schedule(dynamic, 1) num_threads(p.num_threads)
  for (int64_t item = 0; item < items; ++item) {
    const int64_t c = item / blocks;
    const int64_t group_begin = (item % blocks) * kGroupsPerBlock;
    const int64_t group_end = std::min(groups, group_begin + kGroupsPerBlock);
    const int64_t k_begin = 4 * group_begin;
    const int64_t k_end = std::min(dim, 4 * group_end);
    scalar_t sum_grad[4 * kGroupsPerBlock] = {};
    scalar_t sum_grad_eps[4 * kGroupsPerBlock] = {};
    float eps[4 * kGroupsPerBlock];
    for (int64_t idx = buckets.begin[c]; idx < buckets.begin[c + 1]; ++idx) {
      const int64_t s = buckets.order[idx];
      const uint64_t first_counter = static_cast<uint64_t>(s * groups);
      for (int64_t g = group_begin; g < group_end; ++g)
        randn4(p.seed, first_counter + g, eps + 4 * (g - group_begin));
      const scalar_t* grad_row = p.grad_z + s * dim;
      for (int64_t k = k_begin; k < k_end; ++k) {
        const scalar_t grad = grad_row[k];
        sum_grad[k - k_begin] += grad;
        sum_grad_eps[k - k_begin] += grad * static_cast<scalar_t>(eps[k - k_begin]);
      }
    }
    for (int64_t k = k_begin; k < k_end; ++k) {
      p.grad_mu[c * dim + k] = sum_grad[k - k_begin];
      p.grad_scale[c * dim + k] = sum_grad_eps[k - k_begin];
    }
  }
}

template <typename scalar_t>
void backward_full(const MixtureSampleBackwardParams<scalar_t>& p,
                   const ComponentBuckets& buckets) {
  const int64_t dim = p.dim;
  const int64_t padded = 4 * philox_groups_per_row(dim);
#pragma omp parallel num_threads(p.num_threads)
  {
    std::vector<float> eps(padded);
#pragma omp for schedule(dynamic, 1)
    for (int64_t c = 0; c < p.num_components; ++c) {
      scalar_t* grad_mu = p.grad_mu + c * dim;
      scalar_t* grad_tril = p.grad_scale + c * dim * dim;
      std::fill(grad_mu, grad_mu + dim, scalar_t(0));
      std::fill(grad_tril, grad_tril + dim * dim, scalar_t(0));
      for (int64_t idx = buckets.begin[c]; idx < buckets.begin[c + 1]; ++idx) {
        const int64_t s = buckets.order[idx];
        fill_eps_row(p.seed, s, dim, eps.data());
        const scalar_t* grad_row = p.grad_z + s * dim;
        for (int64_t i = 0; i < dim; ++i) {
          const scalar_t grad = grad_row[i];
          grad_mu[i] += grad;
          scalar_t* out_row = grad_tril + i * dim;
          for (int64_t j = 0; j <= i; ++j) out_row[j] += grad * static_cast<scalar_t>(eps[j]);
        }
      }
    }
  }
}

}  // namespace

template <typename scalar_t>
void mixture_sample_forward_cpu(const MixtureSampleParams<scalar_t>& p) {
  const int64_t dim = p.dim;
  const int64_t padded = 4 * philox_groups_per_row(dim);
#pragma omp parallel num_threads(p.num_threads)
  {
    std::vector<float> eps(padded);
#pragma omp for schedule(static)
    for (int64_t s = 0; s < p.num_samples; ++s) {
      fill_eps_row(p.seed, s, dim, eps.data());
      const int64_t c = p.component[s];
      const scalar_t* mu = p.mu + c * dim;
      scalar_t* z = p.z + s * dim;
      if (!p.full_scale) {
        const scalar_t* sigma = p.scale + c * dim;
        for (int64_t k = 0; k < dim; ++k) z[k] = mu[k] + sigma[k] * static_cast<scalar_t>(eps[k]);
      } else {
        const scalar_t* tril = p.scale + c * dim * dim;
        for (int64_t i = 0; i < dim; ++i) {
          scalar_t acc = mu[i];
          const scalar_t* row = tril + i * dim;
          for (int64_t j = 0; j <= i; ++j) acc += row[j] * static_cast<scalar_t>(eps[j]);
          z[i] = acc;
        }
      }
    }
  }
}

template <typename scalar_t>
void mixture_sample_backward_cpu(const MixtureSampleBackwardParams<scalar_t>& p) {
  const ComponentBuckets buckets =
      bucket_by_component(p.component, p.num_samples, p.num_components);
  if (p.full_scale) {
    backward_full(p, buckets);
  } else {
    backward_diagonal(p, buckets);
  }
}

template void mixture_sample_forward_cpu<float>(const MixtureSampleParams<float>&);
template void mixture_sample_forward_cpu<double>(const MixtureSampleParams<double>&);
template void mixture_sample_backward_cpu<float>(const MixtureSampleBackwardParams<float>&);
template void mixture_sample_backward_cpu<double>(const MixtureSampleBackwardParams<double>&);

}  // namespace gmk

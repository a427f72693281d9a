// nearest_neighbors: for query rows q_i (Q x D) and point rows p_j (M x D), row-major,
//   dist(p_j, q_i) = sqrt(max((||p_j||^2 + ||q_i||^2) - 2 <p_j, q_i>, 0))
//   kth_distance_i = the k-th smallest of dist(p_j, q_i) over j (j != i when exclude_self)
//   within_i       = #{j : dist(p_j, q_i) <= radii_j}   (j != i when exclude_self; 0 without radii)
// Exclusion is by index, once: a duplicate of q_i among the points is a neighbour at distance 0.
// Ties are exact: every pair's distance, and every row's squared norm, comes from one dot-product
// order (kDotLanes partial sums over the coordinates padded with zeros to a multiple of
// kDotLanes, then one fixed tree over the lanes), whatever tile or pass the pair falls in; so
// ||a||^2 is exactly <a, a>, a duplicate of a point lies at distance exactly 0, and a point whose
// k-th neighbour defines a radius lies exactly on it in the ball count.
// Nothing of size Q x M is stored: a running top-k per query row over tiles of points.
// All tensors are contiguous row-major; no torch types appear here.
#pragma once
#include <cstdint>

#include "cuda_status.h"

namespace gmk {

// Lanes of the dot-product order (one 32-byte vector): 8 floats, 4 doubles.
template <typename scalar_t>
constexpr int kDotLanes = 32 / static_cast<int>(sizeof(scalar_t));

template <typename scalar_t>
struct NearestNeighborsParams {
  const scalar_t* query;    // (num_queries, dim)
  const scalar_t* points;   // (num_points, dim)
  const scalar_t* radii;    // (num_points,) or null: no ball count
  scalar_t* kth_distance;   // (num_queries,), written
  int64_t* within;          // (num_queries,), written (zeros without radii)
  int64_t num_queries;      // Q
  int64_t num_points;       // M
  int64_t dim;              // D
  int64_t k;                // 1 <= k <= M (M - 1 with exclude_self), checked by the binding
  bool exclude_self;        // query row i is point row i (Q == M): the pair (i, i) is skipped
  int num_threads;
};

template <typename scalar_t>
void nearest_neighbors_cpu(const NearestNeighborsParams<scalar_t>& params);

// CUDA launcher (csrc/cuda/nearest_neighbors.cu) for float and double. `scratch` holds
// num_queries * k scalars (each row's running top-k); `stream` is a cudaStream_t.
template <typename scalar_t>
CudaStatus nearest_neighbors_cuda(const NearestNeighborsParams<scalar_t>& params,
                                  scalar_t* scratch, void* stream);

}  // namespace gmk

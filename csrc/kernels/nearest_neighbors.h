// nearest_neighbors: for query rows q_i (Q x D) and point rows p_j (M x D), row-major,
//   dist(p_j, q_i) = sqrt(max((||p_j||^2 + ||q_i||^2) - 2 <p_j, q_i>, 0))
//   kth_distance_i = the k-th smallest of dist(p_j, q_i) over j (j != i when exclude_self)
//   within_i       = #{j : dist(p_j, q_i) <= radii_j}         (0 without radii)
//   points_within_j = #{i : dist(p_j, q_i) <= query_radii_i}  (0 without query_radii)
// with the pair (i, i) left out of all three when exclude_self.
// Exclusion is by index, once: a duplicate of q_i among the points is a neighbour at distance 0.
// Ties are exact: each backend computes a pair's distance by one sequence of operations, whatever
// tile or call the pair falls in, and symmetric in p and q (the CPU kernel's squared norms are
// its dot products of a row with itself, so a duplicate lies at distance exactly 0); a point
// whose k-th neighbour defines a radius lies exactly on it in a later ball count.
// Nothing of size Q x M is stored: a running top-k per query row over tiles of points.
// All tensors are contiguous row-major; no torch types appear here.
#pragma once
#include <cstdint>

#include "cuda_status.h"

namespace gmk {

template <typename scalar_t>
struct NearestNeighborsParams {
  const scalar_t* query;    // (num_queries, dim)
  const scalar_t* points;   // (num_points, dim)
  const scalar_t* radii;        // (num_points,) or null: no within count
  const scalar_t* query_radii;  // (num_queries,) or null: no points_within count
  scalar_t* kth_distance;       // (num_queries,), written
  int64_t* within;              // (num_queries,), written (zeros without radii)
  int64_t* points_within;       // (num_points,), written (zeros without query_radii)
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

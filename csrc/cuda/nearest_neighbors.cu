// CUDA kernel of nearest_neighbors (math in csrc/kernels/nearest_neighbors.h).
// One thread owns one query row and sweeps all points in tiles of kTilePoints rows, staged
// kTileDim coordinates at a time in shared memory by the whole block. A pair's squared distance
// is sum_d (p_jd - q_id)^2 in increasing d, the same code for every pair (the build passes
// --fmad=false, so nothing is contracted differently anywhere): a duplicate is at exactly 0 and
// the k-th neighbour of a point lies exactly on the radius it defines. The running top-k of a
// row lives in `scratch` (Q x k, sorted ascending), written by its thread only; a point's count
// of query balls is an integer atomic add (exact in any order). Nothing of size Q x M is stored.
#include <cuda_runtime.h>

#include <cmath>
#include <math_constants.h>

#include "../kernels/nearest_neighbors.h"
#include "cuda_status.cuh"

namespace gmk {
namespace {

constexpr int kThreads = 128;
constexpr int kTilePoints = 32;
constexpr int kTileDim = 32;

template <typename T>
__device__ __forceinline__ T infinity_of();
template <>
__device__ __forceinline__ float infinity_of<float>() { return CUDART_INF_F; }
template <>
__device__ __forceinline__ double infinity_of<double>() { return CUDART_INF; }

template <typename T>
__global__ void nearest_neighbors_kernel(const NearestNeighborsParams<T> p, T* scratch) {
  __shared__ T tile[kTilePoints][kTileDim + 1];  // +1: no bank conflicts on the column reads
  const int64_t q = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const bool active = q < p.num_queries;
  T* best = scratch + (active ? q : 0) * p.k;
  if (active)
    for (int64_t t = 0; t < p.k; ++t) best[t] = infinity_of<T>();
  int64_t count = 0;
  const T query_radius = (active && p.query_radii != nullptr) ? p.query_radii[q] : T(0);
  for (int64_t p0 = 0; p0 < p.num_points; p0 += kTilePoints) {
    T squared[kTilePoints];
#pragma unroll
    for (int j = 0; j < kTilePoints; ++j) squared[j] = T(0);
    for (int64_t d0 = 0; d0 < p.dim; d0 += kTileDim) {
      for (int e = threadIdx.x; e < kTilePoints * kTileDim; e += kThreads) {
        const int j = e / kTileDim, d = e % kTileDim;
        const int64_t point = p0 + j, coord = d0 + d;
        tile[j][d] = (point < p.num_points && coord < p.dim) ? p.points[point * p.dim + coord]
                                                             : T(0);
      }
      __syncthreads();
      if (active) {
        const int64_t dims = p.dim - d0 < kTileDim ? p.dim - d0 : kTileDim;
        for (int d = 0; d < dims; ++d) {
          const T x = p.query[q * p.dim + d0 + d];
#pragma unroll
          for (int j = 0; j < kTilePoints; ++j) {
            const T difference = tile[j][d] - x;
            squared[j] = squared[j] + difference * difference;
          }
        }
      }
      __syncthreads();
    }
    if (!active) continue;
#pragma unroll
    for (int j = 0; j < kTilePoints; ++j) {
      const int64_t point = p0 + j;
      if (point >= p.num_points || (p.exclude_self && point == q)) continue;
      const T value = squared[j];
      const T distance = sqrt(value);
      if (p.radii != nullptr && distance <= p.radii[point]) ++count;
      if (p.query_radii != nullptr && distance <= query_radius)
        atomicAdd(reinterpret_cast<unsigned long long*>(p.points_within + point), 1ull);
      if (value < best[p.k - 1]) {
        int64_t position = p.k - 1;
        while (position > 0 && best[position - 1] > value) {
          best[position] = best[position - 1];
          --position;
        }
        best[position] = value;
      }
    }
  }
  if (active) {
    p.kth_distance[q] = sqrt(best[p.k - 1]);
    p.within[q] = count;
  }
}

}  // namespace

template <typename T>
CudaStatus nearest_neighbors_cuda(const NearestNeighborsParams<T>& params, T* scratch,
                                  void* stream) {
  if (params.num_queries == 0) return CudaStatus{};
  const int64_t blocks = (params.num_queries + kThreads - 1) / kThreads;
  nearest_neighbors_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0,
                                static_cast<cudaStream_t>(stream)>>>(params, scratch);
  return launch_status("nearest_neighbors_kernel");
}

template CudaStatus nearest_neighbors_cuda<float>(const NearestNeighborsParams<float>&, float*,
                                                  void*);
template CudaStatus nearest_neighbors_cuda<double>(const NearestNeighborsParams<double>&, double*,
                                                   void*);

}  // namespace gmk

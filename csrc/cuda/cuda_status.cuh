// CudaStatus (csrc/kernels/cuda_status.h) from the CUDA runtime, for the launchers in this folder.
#pragma once
#include <cuda_runtime.h>

#include "../kernels/cuda_status.h"

namespace gmk {

inline CudaStatus cuda_status(cudaError_t error, const char* where) {
  CudaStatus status;
  if (error != cudaSuccess) {
    status.error = static_cast<int>(error);
    status.where = where;
  }
  return status;
}

// The status of the kernel launched last on this thread: a bad configuration (grid, block or
// shared memory size) or an earlier asynchronous fault shows here, before anything else runs.
inline CudaStatus launch_status(const char* kernel) {
  return cuda_status(cudaGetLastError(), kernel);
}

}  // namespace gmk

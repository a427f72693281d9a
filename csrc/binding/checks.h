// Argument checks shared by the binding files. The Python wrappers validate first and give the
// user-facing messages; these guard direct torch.ops calls so a kernel never sees bad memory.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cstdint>

#include "../kernels/cuda_status.h"

#ifdef GMKERNELS_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace gmk {

inline void check_float_tensor(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
              " must be float32 or float64, got ", t.scalar_type());
}

inline void check_same_dtype_device(const at::Tensor& a, const at::Tensor& b, const char* name_a,
                                    const char* name_b) {
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), name_a, " and ", name_b,
              " must share a dtype, got ", a.scalar_type(), " and ", b.scalar_type());
  TORCH_CHECK(a.device() == b.device(), name_a, " and ", name_b, " must be on one device, got ",
              a.device(), " and ", b.device());
}

// The Philox seed travels as a 0-dim int64 CPU tensor so that torch.compile can trace the
// wrapper that draws it; its bits are reinterpreted as uint64.
inline uint64_t read_seed(const at::Tensor& seed) {
  TORCH_CHECK(seed.dim() == 0 && seed.scalar_type() == at::kLong && seed.device().is_cpu(),
              "seed must be a 0-dim int64 CPU tensor, got shape ", seed.sizes(), " dtype ",
              seed.scalar_type(), " on ", seed.device());
  return static_cast<uint64_t>(seed.item<int64_t>());
}

inline int cpu_threads() { return at::get_num_threads(); }

#ifdef GMKERNELS_WITH_CUDA
// A CUDA launcher's failure (csrc/kernels/cuda_status.h) as an error naming the op, e.g.
// "gmkernels::mixture_sample: CUDA forward_full_kernel failed: invalid configuration argument".
inline void check_cuda_status(const CudaStatus& status, const char* op) {
  TORCH_CHECK(status.ok(), "gmkernels::", op, ": CUDA ", status.where, " failed: ",
              cudaGetErrorString(static_cast<cudaError_t>(status.error)));
}
#endif

}  // namespace gmk

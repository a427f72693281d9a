// How a CUDA launcher reports failure to its binding. The launchers stay torch-free and are
// declared in headers that the plain C++ compiler also reads (a CPU-only build has no CUDA
// headers), so they neither throw torch errors nor name CUDA types: each returns a CudaStatus
// holding the cudaError_t of the first launch or library call that failed, as an int, and that
// call's name. The binding turns a failure into an error naming the op (check_cuda_status in
// csrc/binding/checks.h), so a bad launch is a Python RuntimeError at the call that caused it.
#pragma once

namespace gmk {

struct CudaStatus {
  int error = 0;                // a cudaError_t; 0 is cudaSuccess
  const char* where = nullptr;  // the kernel or library call that failed: a string literal

  bool ok() const { return error == 0; }
};

}  // namespace gmk

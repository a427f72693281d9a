// The pybind11 module gmkernels._C: loading it registers the ops, and build_info() says how it
// was built. Each op declares its schemas (TORCH_LIBRARY_FRAGMENT) and registers its kernels per
// device in its own csrc/binding/<op>.cpp, so a new op touches no shared file; fake tensors and
// autograd are registered from Python (gmkernels/ops/<op>.py). value_summary serves the Python
// wrappers' value checks (csrc/binding/value_summary.cpp), mixture_tile_row_stride the padding
// of the tables mixture_log_likelihood's wrapper allocates.
#include <torch/extension.h>

#include "mixture_log_likelihood_tiled.h"
#include "output_memory.h"
#include "value_summary.h"

#ifndef GMKERNELS_VERSION
#define GMKERNELS_VERSION "0.0.0"
#endif
#ifndef GMKERNELS_TORCH_VERSION
#define GMKERNELS_TORCH_VERSION "unknown"
#endif
#ifndef GMKERNELS_CUDA_ARCHS
#define GMKERNELS_CUDA_ARCHS ""
#endif

namespace {

pybind11::dict build_info() {
  pybind11::dict info;
  info["version"] = GMKERNELS_VERSION;
#ifdef GMKERNELS_WITH_CUDA
  info["cuda"] = true;
  info["cuda_archs"] = GMKERNELS_CUDA_ARCHS;
#else
  info["cuda"] = false;
  info["cuda_archs"] = "";
#endif
#ifdef _OPENMP
  info["openmp"] = static_cast<int>(_OPENMP);
#else
  info["openmp"] = pybind11::none();
#endif
#if defined(__clang__)
  info["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  info["compiler"] = std::string("gcc ") + __VERSION__;
#else
  info["compiler"] = "unknown";
#endif
  info["torch"] = GMKERNELS_TORCH_VERSION;
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "gmkernels compiled kernels (CPU always, CUDA when built with it)";
  m.def("build_info", &build_info, "Facts about how this extension was built.");
  m.def("value_summary", &gmk::value_summary, pybind11::arg("values"),
        pybind11::arg("row_sums") = false,
        "(min, max, total, min row total, max row total) of a CPU tensor in one pass, for the "
        "wrappers' value checks.");
  m.def("output_cache_limit", &gmk::output_cache_limit,
        "The most bytes of freed large CPU outputs kept (GMKERNELS_OUTPUT_CACHE_BYTES).");
  m.def("output_cache_kept_bytes", &gmk::output_cache_kept_bytes,
        "Bytes of freed large CPU outputs kept for reuse now.");
  m.def("release_output_cache", &gmk::release_output_cache,
        "Frees every kept output block.");
  m.def("mixture_tile_row_stride", &gmk::padded_row_stride, pybind11::arg("cols"),
        "The padded row stride of mixture_log_likelihood's CPU tiles of `cols` columns.");
}

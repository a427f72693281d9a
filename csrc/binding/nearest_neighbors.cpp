// Tensors -> NearestNeighborsParams, argument checks, and the schema and CPU/CUDA registrations
// of gmkernels::nearest_neighbors (float32/float64). The op has no backward: it is not
// differentiable (gmkernels/ops/nearest_neighbors.py).
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "../kernels/nearest_neighbors.h"
#include "checks.h"

#ifdef GMKERNELS_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace gmk {
namespace {

void check_arguments(const at::Tensor& query, const at::Tensor& points,
                     const std::optional<at::Tensor>& radii,
                     const std::optional<at::Tensor>& query_radii, int64_t k, bool exclude_self) {
  check_float_tensor(query, "query");
  check_same_dtype_device(points, query, "points", "query");
  TORCH_CHECK(query.dim() == 2, "query must be (Q, D), got shape ", query.sizes());
  TORCH_CHECK(points.dim() == 2 && points.size(1) == query.size(1),
              "points must be (M, D) with D = ", query.size(1), ", got shape ", points.sizes());
  if (radii.has_value()) {
    check_same_dtype_device(*radii, query, "radii", "query");
    TORCH_CHECK(radii->dim() == 1 && radii->size(0) == points.size(0),
                "radii must be (M,) = (", points.size(0), ",), got shape ", radii->sizes());
  }
  if (query_radii.has_value()) {
    check_same_dtype_device(*query_radii, query, "query_radii", "query");
    TORCH_CHECK(query_radii->dim() == 1 && query_radii->size(0) == query.size(0),
                "query_radii must be (Q,) = (", query.size(0), ",), got shape ",
                query_radii->sizes());
  }
  TORCH_CHECK(!exclude_self || query.size(0) == points.size(0),
              "exclude_self needs as many query rows as points, got ", query.size(0), " and ",
              points.size(0));
  const int64_t candidates = points.size(0) - (exclude_self ? 1 : 0);
  TORCH_CHECK(k >= 1 && k <= candidates, "k must be in [1, ", candidates, "], got ", k);
}

std::optional<at::Tensor> contiguous(const std::optional<at::Tensor>& t) {
  return t.has_value() ? std::optional<at::Tensor>(t->contiguous()) : std::nullopt;
}

struct Outputs {
  at::Tensor kth_distance, within, points_within;

  Outputs(const at::Tensor& query, const at::Tensor& points)
      : kth_distance(at::empty({query.size(0)}, query.options())),
        within(at::zeros({query.size(0)}, query.options().dtype(at::kLong))),
        points_within(at::zeros({points.size(0)}, query.options().dtype(at::kLong))) {}

  std::tuple<at::Tensor, at::Tensor, at::Tensor> tuple() const {
    return {kth_distance, within, points_within};
  }
};

template <typename scalar_t>
NearestNeighborsParams<scalar_t> make_params(const at::Tensor& query, const at::Tensor& points,
                                             const std::optional<at::Tensor>& radii,
                                             const std::optional<at::Tensor>& query_radii,
                                             int64_t k, bool exclude_self, Outputs& out) {
  NearestNeighborsParams<scalar_t> p;
  p.query = query.data_ptr<scalar_t>();
  p.points = points.data_ptr<scalar_t>();
  p.radii = radii.has_value() ? radii->data_ptr<scalar_t>() : nullptr;
  p.query_radii = query_radii.has_value() ? query_radii->data_ptr<scalar_t>() : nullptr;
  p.kth_distance = out.kth_distance.data_ptr<scalar_t>();
  p.within = out.within.data_ptr<int64_t>();
  p.points_within = out.points_within.data_ptr<int64_t>();
  p.num_queries = query.size(0);
  p.num_points = points.size(0);
  p.dim = query.size(1);
  p.k = k;
  p.exclude_self = exclude_self;
  p.num_threads = cpu_threads();
  return p;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cpu_nearest_neighbors(
    const at::Tensor& query, const at::Tensor& points, const std::optional<at::Tensor>& radii,
    const std::optional<at::Tensor>& query_radii, int64_t k, bool exclude_self) {
  check_arguments(query, points, radii, query_radii, k, exclude_self);
  const at::Tensor query_c = query.contiguous(), points_c = points.contiguous();
  const auto radii_c = contiguous(radii), query_radii_c = contiguous(query_radii);
  Outputs out(query, points);
  if (query.size(0) == 0) return out.tuple();
  AT_DISPATCH_FLOATING_TYPES(query.scalar_type(), "nearest_neighbors_cpu", [&] {
    nearest_neighbors_cpu(
        make_params<scalar_t>(query_c, points_c, radii_c, query_radii_c, k, exclude_self, out));
  });
  return out.tuple();
}

#ifdef GMKERNELS_WITH_CUDA
std::tuple<at::Tensor, at::Tensor, at::Tensor> cuda_nearest_neighbors(
    const at::Tensor& query, const at::Tensor& points, const std::optional<at::Tensor>& radii,
    const std::optional<at::Tensor>& query_radii, int64_t k, bool exclude_self) {
  check_arguments(query, points, radii, query_radii, k, exclude_self);
  const c10::cuda::CUDAGuard guard(query.device());
  const at::Tensor query_c = query.contiguous(), points_c = points.contiguous();
  const auto radii_c = contiguous(radii), query_radii_c = contiguous(query_radii);
  Outputs out(query, points);
  if (query.size(0) == 0) return out.tuple();
  // Each query row's running top-k: Q x k scalars (k is small in every use; Q x M only if k is).
  at::Tensor scratch = at::empty({query.size(0), k}, query.options());
  AT_DISPATCH_FLOATING_TYPES(query.scalar_type(), "nearest_neighbors_cuda", [&] {
    check_cuda_status(
        nearest_neighbors_cuda(
            make_params<scalar_t>(query_c, points_c, radii_c, query_radii_c, k, exclude_self,
                                  out),
            scratch.data_ptr<scalar_t>(), c10::cuda::getCurrentCUDAStream().stream()),
        "nearest_neighbors");
  });
  return out.tuple();
}
#endif

}  // namespace

TORCH_LIBRARY_FRAGMENT(gmkernels, m) {
  m.def("nearest_neighbors(Tensor query, Tensor points, Tensor? radii, Tensor? query_radii, int k,"
        " bool exclude_self) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(gmkernels, CPU, m) {
  m.impl("nearest_neighbors", &cpu_nearest_neighbors);
}

#ifdef GMKERNELS_WITH_CUDA
TORCH_LIBRARY_IMPL(gmkernels, CUDA, m) {
  m.impl("nearest_neighbors", &cuda_nearest_neighbors);
}
#endif

}  // namespace gmk

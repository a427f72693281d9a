// Tensors -> MixtureLogLikelihood params, argument checks, the dispatch between the two paths,
// and the schemas and CPU/CUDA registrations of gmkernels::mixture_log_likelihood and
// gmkernels::mixture_log_likelihood_backward (and, CPU only, the double backward of a penalty in
// x and the forward / backward pair that keeps the exponents).
//
// Two paths (csrc/kernels/mixture_log_likelihood.h):
// - C <= kDirectMaxComponents, or on the CPU a problem that use_tiled below keeps direct: the
//   direct kernels do everything.
// - otherwise: the tiled path (mixture_log_likelihood_tiled.cpp): BLAS products of tiles and the
//   epilogue kernels, memory O((B + C) d + tile).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdlib>

#include "../kernels/mixture_log_likelihood.h"
#include "checks.h"
#include "mixture_log_likelihood_tiled.h"

#ifdef GMKERNELS_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace gmk {
namespace {

void check_mixture_log_likelihood_args(const at::Tensor& x, const at::Tensor& means,
                                       const at::Tensor& var, const at::Tensor& log_weights) {
  check_float_tensor(x, "x");
  check_same_dtype_device(x, means, "x", "means");
  check_same_dtype_device(x, var, "x", "var");
  check_same_dtype_device(x, log_weights, "x", "log_weights");
  TORCH_CHECK(x.dim() == 2, "x must be (B, d), got shape ", x.sizes());
  TORCH_CHECK(means.dim() == 2 && means.size(1) == x.size(1) && means.size(0) >= 1,
              "means must be (C, d) with C >= 1 and d = ", x.size(1), ", got shape ",
              means.sizes());
  const int64_t num_components = means.size(0);
  TORCH_CHECK((var.dim() == 1 && var.size(0) == num_components) ||
                  (var.dim() == 2 && var.size(0) == num_components && var.size(1) == x.size(1)),
              "var must be (C,) or (C, d) = (", num_components, ", ", x.size(1), "), got shape ",
              var.sizes());
  TORCH_CHECK(log_weights.dim() == 1 && log_weights.size(0) == num_components,
              "log_weights must be (C,) = (", num_components, "), got shape ", log_weights.sizes());
}

bool is_diagonal(const at::Tensor& var) { return var.dim() == 2; }

// The input fields every direct-path params struct shares (the forward's, the backward's, the
// one-thread penalty kernel's); the multithreaded ones also take cpu_threads().
template <typename scalar_t, typename Params>
void fill_inputs(Params& p, const at::Tensor& x, const at::Tensor& means, const at::Tensor& var,
                 const at::Tensor& log_weights) {
  p.x = x.data_ptr<scalar_t>();
  p.means = means.data_ptr<scalar_t>();
  p.var = var.data_ptr<scalar_t>();
  p.log_weights = log_weights.data_ptr<scalar_t>();
  p.num_rows = x.size(0);
  p.num_components = means.size(0);
  p.dim = x.size(1);
  p.diagonal = is_diagonal(var);
}

template <typename scalar_t>
MixtureLogLikelihoodParams<scalar_t> direct_params(const at::Tensor& x, const at::Tensor& means,
                                                   const at::Tensor& var,
                                                   const at::Tensor& log_weights,
                                                   const at::Tensor& out) {
  MixtureLogLikelihoodParams<scalar_t> p;
  fill_inputs<scalar_t>(p, x, means, var, log_weights);
  p.num_threads = cpu_threads();
  p.log_likelihood = out.data_ptr<scalar_t>();
  return p;
}

template <typename scalar_t>
MixtureLogLikelihoodBackwardParams<scalar_t> direct_backward_params(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& means, const at::Tensor& var,
    const at::Tensor& log_weights, const at::Tensor& log_likelihood, MixtureGradients& out,
    bool x_grad, bool component_grads) {
  MixtureLogLikelihoodBackwardParams<scalar_t> p;
  fill_inputs<scalar_t>(p, x, means, var, log_weights);
  p.num_threads = cpu_threads();
  p.grad = grad.data_ptr<scalar_t>();
  p.log_likelihood = log_likelihood.data_ptr<scalar_t>();
  p.grad_x = out.x.data_ptr<scalar_t>();
  p.grad_means = out.means.data_ptr<scalar_t>();
  p.grad_var = out.var.data_ptr<scalar_t>();
  p.grad_log_weights = out.log_weights.data_ptr<scalar_t>();
  p.x_grad = x_grad;
  p.component_grads = component_grads;
  p.weights_scratch = nullptr;
  return p;
}

// The direct kernels of one device; the dispatch below is shared.
struct CpuKernels {
  template <typename scalar_t>
  static void direct(const MixtureLogLikelihoodParams<scalar_t>& p) {
    mixture_log_likelihood_direct_cpu(p);
  }
  template <typename scalar_t>
  static void direct_backward(MixtureLogLikelihoodBackwardParams<scalar_t>& p,
                              const at::Tensor& /*x*/, int64_t /*num_components*/) {
    mixture_log_likelihood_direct_backward_cpu(p);
  }
};

#ifdef GMKERNELS_WITH_CUDA
struct CudaKernels {
  static void* stream() { return c10::cuda::getCurrentCUDAStream().stream(); }
  template <typename scalar_t>
  static void direct(const MixtureLogLikelihoodParams<scalar_t>& p) {
    check_cuda_status(mixture_log_likelihood_direct_cuda(p, stream()), "mixture_log_likelihood");
  }
  // The CUDA direct backward writes W_bc into a (B, C) scratch (small: C <= 65) and reduces it
  // per component in a second kernel.
  template <typename scalar_t>
  static void direct_backward(MixtureLogLikelihoodBackwardParams<scalar_t>& p,
                              const at::Tensor& x, int64_t num_components) {
    const at::Tensor scratch = at::empty({x.size(0), num_components}, x.options());
    p.weights_scratch = scratch.data_ptr<scalar_t>();
    check_cuda_status(mixture_log_likelihood_direct_backward_cuda(p, stream()),
                      "mixture_log_likelihood_backward");
  }
};
#endif

// Which path a CPU call with C > kDirectMaxComponents takes. The tiled path's products run at
// the BLAS rate, but it has fixed costs (its operands, a BLAS call whose threads must all wake
// up and meet, per tile; on a busy machine each meeting can cost a scheduler time slice) and its
// epilogue and reductions cost about as much per pair as the direct kernel's whole work at small
// d. Measured on a 2-core AVX-512 machine at 2 threads (tiled time / direct time, medians of up
// to 151 interleaved pairs, B = C):
// - forward: 1.5-1.9 at d <= 4 from 316 to 3162 (1.02-1.15 at 1000); d = 9: 1.77 at 316,
//   0.94-1.15 from 1000 to 3162; d = 16 and 32: 1.4-1.7 at 316, 0.79-0.95 from 1000; d = 64: 1.19
//   at 316, 0.72 at 1000; d = 128: 0.96 at 316;
// - backward, x alone: 1.1-2.2 at d <= 9 at every size; d = 16: 1.43 at 316, 0.98-1.02 at 1000
//   and 2048; d = 32: 1.17 at 316, 0.78-0.90 from 1000; d = 64: 0.95 at 316;
// - backward with the component gradients: d <= 4: 1.3-2.0 from 316 to 3162 (0.89-1.02 at 1000,
//   d = 4); d = 9: 1.22 at 316, 0.73-0.89 at 1000 and 3162; d = 16: 1.07 at 316, 0.64-0.90 from
//   1000; d = 32: 0.84 at 316.
// Hence: the forward tiled for d >= 16 above B C d = 2^23; the backward into x alone for d > 16
// above 2^22; the backward with component gradients for d > 16 at any size, and for d > 4 above
// 2^22 (at d <= 4 the direct kernel whatever the size).
constexpr int64_t kForwardTiledMinDim = 16;
constexpr int64_t kForwardDirectMaxWork = int64_t(1) << 23;
constexpr int64_t kBackwardXTiledMinDim = 17;
constexpr int64_t kBackwardDirectMaxWork = int64_t(1) << 22;
constexpr int64_t kComponentsDirectMaxDim = 16;
constexpr int64_t kComponentsAlwaysDirectMaxDim = 4;

enum class Pass { kForward, kBackwardX, kBackwardComponents };

// GMKERNELS_MLL_DIRECT_MAX_WORK, read on every call: when set, one limit on B C d for every pass
// instead of the rules above (0: the tiled path for every C > kDirectMaxComponents, as on CUDA).
// Returns -1 when unset.
int64_t direct_max_work_setting() {
  const char* setting = std::getenv("GMKERNELS_MLL_DIRECT_MAX_WORK");
  if (setting == nullptr || *setting == '\0') return -1;
  char* end = nullptr;
  const long long value = std::strtoll(setting, &end, 10);
  TORCH_CHECK(*end == '\0' && value >= 0,
              "GMKERNELS_MLL_DIRECT_MAX_WORK must be a non-negative integer, got '", setting, "'");
  return value;
}

// The tiled path for many components, unless the CPU rules above keep the direct one.
bool use_tiled(const at::Tensor& x, const at::Tensor& means, Pass pass) {
  if (means.size(0) <= kDirectMaxComponents) return false;
  if (!x.is_cpu()) return true;
  const int64_t dim = x.size(1);
  const int64_t work = x.size(0) * means.size(0) * dim;
  const int64_t setting = direct_max_work_setting();
  if (setting >= 0) return work > setting;
  switch (pass) {
    case Pass::kForward:
      return dim >= kForwardTiledMinDim && work > kForwardDirectMaxWork;
    case Pass::kBackwardX:
      return dim >= kBackwardXTiledMinDim && work > kBackwardDirectMaxWork;
    case Pass::kBackwardComponents:
      return dim > kComponentsDirectMaxDim ||
             (dim > kComponentsAlwaysDirectMaxDim && work > kBackwardDirectMaxWork);
  }
  return true;
}

struct Contiguous {
  at::Tensor x, means, var, log_weights;
  Contiguous(const at::Tensor& x_, const at::Tensor& means_, const at::Tensor& var_,
             const at::Tensor& log_weights_)
      : x(x_.contiguous()),
        means(means_.contiguous()),
        var(var_.contiguous()),
        log_weights(log_weights_.contiguous()) {}
};

template <typename Kernels>
at::Tensor forward(const at::Tensor& x, const at::Tensor& means, const at::Tensor& var,
                   const at::Tensor& log_weights) {
  const Contiguous in(x, means, var, log_weights);
  if (x.size(0) == 0) return at::empty({0}, x.options());
  if (use_tiled(x, means, Pass::kForward))
    return mixture_log_likelihood_tiled(in.x, in.means, in.var, in.log_weights);
  at::Tensor out = at::empty({x.size(0)}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mixture_log_likelihood", [&] {
    Kernels::direct(direct_params<scalar_t>(in.x, in.means, in.var, in.log_weights, out));
  });
  return out;
}

// The backward ops' per-row inputs: the upstream gradient and the forward's output, (B,) each.
void check_row_inputs(const at::Tensor& x, const at::Tensor& grad,
                      const at::Tensor& log_likelihood) {
  check_same_dtype_device(x, grad, "x", "grad");
  check_same_dtype_device(x, log_likelihood, "x", "log_likelihood");
  TORCH_CHECK(grad.dim() == 1 && grad.size(0) == x.size(0) &&
                  log_likelihood.sizes() == grad.sizes(),
              "grad and log_likelihood must be (B,) = (", x.size(0), "), got ", grad.sizes(),
              " and ", log_likelihood.sizes());
}

// The (B, C) table of the ops that keep one (exponents, responsibilities): x's dtype and device,
// rows of unit stride one after the other (the row stride may exceed C: the table a caller pads
// for the products' sake).
void check_exponents(const at::Tensor& x, const at::Tensor& means, const at::Tensor& exponents) {
  check_same_dtype_device(x, exponents, "x", "exponents");
  TORCH_CHECK(exponents.dim() == 2 && exponents.size(0) == x.size(0) &&
                  exponents.size(1) == means.size(0),
              "exponents must be a (B, C) = (", x.size(0), ", ", means.size(0),
              ") tensor, got shape ", exponents.sizes());
  TORCH_CHECK((exponents.size(1) <= 1 || exponents.stride(1) == 1) &&
                  (exponents.size(0) <= 1 || exponents.stride(0) >= exponents.size(1)),
              "exponents must have rows of unit stride, each after the last, got strides ",
              exponents.strides());
}

template <typename Kernels>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& means, const at::Tensor& var,
    const at::Tensor& log_weights, const at::Tensor& log_likelihood, bool x_grad,
    bool component_grads, bool var_grad) {
  check_row_inputs(x, grad, log_likelihood);
  const Contiguous in(x, means, var, log_weights);
  const at::Tensor grad_c = grad.contiguous(), log_likelihood_c = log_likelihood.contiguous();
  MixtureGradients out(in.x, in.means, in.var, in.log_weights, x_grad, component_grads, var_grad);
  if (x.size(0) == 0 || !(x_grad || component_grads)) return out.tuple();
  if (use_tiled(x, means, component_grads ? Pass::kBackwardComponents : Pass::kBackwardX)) {
    mixture_log_likelihood_tiled_backward(grad_c, in.x, in.means, in.var, in.log_weights,
                                          log_likelihood_c, out, x_grad, component_grads);
    return out.tuple();
  }
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mixture_log_likelihood_backward", [&] {
    MixtureLogLikelihoodBackwardParams<scalar_t> p = direct_backward_params<scalar_t>(
        grad_c, in.x, in.means, in.var, in.log_weights, log_likelihood_c, out, x_grad,
        component_grads);
    Kernels::direct_backward(p, in.x, means.size(0));
  });
  return out.tuple();
}

at::Tensor cpu_mixture_log_likelihood(const at::Tensor& x, const at::Tensor& means,
                                      const at::Tensor& var, const at::Tensor& log_weights) {
  check_mixture_log_likelihood_args(x, means, var, log_weights);
  return forward<CpuKernels>(x, means, var, log_weights);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> cpu_mixture_log_likelihood_backward(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& means, const at::Tensor& var,
    const at::Tensor& log_weights, const at::Tensor& log_likelihood, bool x_grad,
    bool component_grads, bool var_grad) {
  check_mixture_log_likelihood_args(x, means, var, log_weights);
  return backward<CpuKernels>(grad, x, means, var, log_weights, log_likelihood, x_grad,
                              component_grads, var_grad);
}

// The forward that keeps the exponents E_bc for its backward (CPU only): always the tiled path,
// its tiles blocks of whole rows of `exponents`, a contiguous (B, C) tensor the caller provides.
// gmkernels/ops/mixture_log_likelihood.py calls it instead of the op when gradients will be taken
// and B C fits the keep budget; the backward below then skips the recomputed product.
at::Tensor cpu_mixture_log_likelihood_keeping_exponents(const at::Tensor& x,
                                                        const at::Tensor& means,
                                                        const at::Tensor& var,
                                                        const at::Tensor& log_weights,
                                                        at::Tensor& exponents) {
  check_mixture_log_likelihood_args(x, means, var, log_weights);
  check_exponents(x, means, exponents);
  const Contiguous in(x, means, var, log_weights);
  if (x.size(0) == 0) return at::empty({0}, x.options());
  return mixture_log_likelihood_tiled(in.x, in.means, in.var, in.log_weights, exponents);
}

// The tiled backward with a (B, C) table (CPU only; what it does with the table: `table_use`,
// see BackwardTable), for the two ops below.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_with_table(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& means, const at::Tensor& var,
    const at::Tensor& log_weights, const at::Tensor& log_likelihood, at::Tensor& table,
    BackwardTable table_use, bool x_grad, bool component_grads, bool var_grad) {
  check_mixture_log_likelihood_args(x, means, var, log_weights);
  check_row_inputs(x, grad, log_likelihood);
  check_exponents(x, means, table);
  const Contiguous in(x, means, var, log_weights);
  const at::Tensor grad_c = grad.contiguous(), log_likelihood_c = log_likelihood.contiguous();
  MixtureGradients out(in.x, in.means, in.var, in.log_weights, x_grad, component_grads, var_grad);
  // A table left for the double backward is filled even when no gradient is wanted here.
  const bool fills_table = table_use != BackwardTable::kExponents;
  if (x.size(0) == 0 || !(x_grad || component_grads || fills_table)) return out.tuple();
  mixture_log_likelihood_tiled_backward(grad_c, in.x, in.means, in.var, in.log_weights,
                                        log_likelihood_c, out, x_grad, component_grads, table,
                                        table_use);
  return out.tuple();
}

// The backward from kept exponents (CPU only): the tiled backward without its recomputed
// product. `exponents` is consumed: overwritten with W_bc = grad_b r_bc.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>
cpu_mixture_log_likelihood_backward_from_exponents(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& means, const at::Tensor& var,
    const at::Tensor& log_weights, const at::Tensor& log_likelihood, at::Tensor& exponents,
    bool x_grad, bool component_grads, bool var_grad) {
  return backward_with_table(grad, x, means, var, log_weights, log_likelihood, exponents,
                             BackwardTable::kExponents, x_grad, component_grads, var_grad);
}

// Whether the backward of this problem takes the tiled path (where keeping its responsibilities
// for a double backward saves a recomputed product there; the direct kernel has no tiles).
bool cpu_mixture_log_likelihood_backward_is_tiled(const at::Tensor& x, const at::Tensor& means,
                                                  bool component_grads) {
  return use_tiled(x, means, component_grads ? Pass::kBackwardComponents : Pass::kBackwardX);
}

// The first backward of a gradient penalty (one that records a graph, CPU only): the tiled
// backward leaving the responsibilities r_bc in `table`, a (B, C) tensor with rows of unit
// stride, for the double backward to read instead of recomputing them. The table holds the
// forward's kept exponents (table_has_exponents: no product to recompute here either) or
// anything (the product is recomputed into it).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>
cpu_mixture_log_likelihood_backward_keeping_responsibilities(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& means, const at::Tensor& var,
    const at::Tensor& log_weights, const at::Tensor& log_likelihood, at::Tensor& table,
    bool table_has_exponents, bool x_grad, bool component_grads, bool var_grad) {
  return backward_with_table(grad, x, means, var, log_weights, log_likelihood, table,
                             table_has_exponents ? BackwardTable::kExponentsToResponsibilities
                                                 : BackwardTable::kResponsibilities,
                             x_grad, component_grads, var_grad);
}

// Up to this B C d (and C <= kDirectMaxComponents) the double backward of a penalty takes the
// one-thread direct kernel. Measured at 2 threads (direct / tiled, us; separate runs on a noisy
// VM): C = 10, d = 9 (MD-GAN): B = 64 35-38 / 138, B = 256 83-119 / 268, B = 1024 423 /
// 258-586; C = 65, d = 64, B = 64: 773 / 104.
constexpr int64_t kPenaltyDirectMaxWork = int64_t(1) << 16;

// The double backward's kernel when only grad_x has a cotangent (a gradient penalty in x), CPU
// only: the Python double backward calls it when it records no graph (a penalty's backward), and
// otherwise, on other devices and for other cotangents, differentiates its closed form in torch
// ops. Small problems take the direct kernel, the others the tiled path (a tile is whole
// rows). Each result is computed only when its need_* flag is set, else returned with 0
// elements. `responsibilities`, where given, is the (B, C) table of r_bc that
// mixture_log_likelihood_backward_keeping_responsibilities left: the tiled path reads it instead
// of recomputing it (and overwrites it); the direct kernel ignores it.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
cpu_mixture_log_likelihood_double_backward(const at::Tensor& grad_grad_x, const at::Tensor& grad,
                                           const at::Tensor& x, const at::Tensor& means,
                                           const at::Tensor& var, const at::Tensor& log_weights,
                                           const at::Tensor& log_likelihood, bool need_grad,
                                           bool need_x, bool need_means, bool need_var,
                                           bool need_log_weights,
                                           const std::optional<at::Tensor>& responsibilities) {
  check_mixture_log_likelihood_args(x, means, var, log_weights);
  check_same_dtype_device(x, grad_grad_x, "x", "grad_grad_x");
  TORCH_CHECK(grad_grad_x.sizes() == x.sizes(), "grad_grad_x must have x's shape ", x.sizes(),
              ", got ", grad_grad_x.sizes());
  check_row_inputs(x, grad, log_likelihood);
  const Contiguous in(x, means, var, log_weights);
  const at::Tensor upstream_c = grad_grad_x.contiguous(), grad_c = grad.contiguous();
  const at::Tensor log_likelihood_c = log_likelihood.contiguous();
  MixturePenaltyGradients out(grad_c, in.x, in.means, in.var, in.log_weights, need_grad, need_x,
                              need_means, need_var, need_log_weights);
  if (x.size(0) == 0 || !(need_grad || need_x || out.component_grads())) return out.tuple();
  if (means.size(0) <= kDirectMaxComponents &&
      x.size(0) * means.size(0) * x.size(1) <= kPenaltyDirectMaxWork) {
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mixture_log_likelihood_double_backward", [&] {
      MixturePenaltyDirectParams<scalar_t> p{};
      fill_inputs<scalar_t>(p, in.x, in.means, in.var, in.log_weights);
      p.grad_grad_x = upstream_c.data_ptr<scalar_t>();
      p.grad = grad_c.data_ptr<scalar_t>();
      p.log_likelihood = log_likelihood_c.data_ptr<scalar_t>();
      p.out_grad = need_grad ? out.grad.data_ptr<scalar_t>() : nullptr;
      p.out_x = need_x ? out.x.data_ptr<scalar_t>() : nullptr;
      p.out_means = need_means ? out.means.data_ptr<scalar_t>() : nullptr;
      p.out_var = need_var ? out.var.data_ptr<scalar_t>() : nullptr;
      p.out_log_weights = need_log_weights ? out.log_weights.data_ptr<scalar_t>() : nullptr;
      mixture_penalty_direct_cpu(p);
    });
    return out.tuple();
  }
  at::Tensor kept;
  if (responsibilities.has_value()) {
    kept = *responsibilities;
    check_exponents(x, means, kept);
  }
  mixture_log_likelihood_tiled_double_backward(upstream_c, grad_c, in.x, in.means, in.var,
                                               in.log_weights, log_likelihood_c, out, kept);
  return out.tuple();
}

#ifdef GMKERNELS_WITH_CUDA
at::Tensor cuda_mixture_log_likelihood(const at::Tensor& x, const at::Tensor& means,
                                       const at::Tensor& var, const at::Tensor& log_weights) {
  check_mixture_log_likelihood_args(x, means, var, log_weights);
  const c10::cuda::CUDAGuard guard(x.device());
  return forward<CudaKernels>(x, means, var, log_weights);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> cuda_mixture_log_likelihood_backward(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& means, const at::Tensor& var,
    const at::Tensor& log_weights, const at::Tensor& log_likelihood, bool x_grad,
    bool component_grads, bool var_grad) {
  check_mixture_log_likelihood_args(x, means, var, log_weights);
  const c10::cuda::CUDAGuard guard(x.device());
  return backward<CudaKernels>(grad, x, means, var, log_weights, log_likelihood, x_grad,
                               component_grads, var_grad);
}
#endif

}  // namespace

TORCH_LIBRARY_FRAGMENT(gmkernels, m) {
  m.def("mixture_log_likelihood(Tensor x, Tensor means, Tensor var, Tensor log_weights) -> Tensor");
  m.def(
      "mixture_log_likelihood_backward(Tensor grad, Tensor x, Tensor means, Tensor var,"
      " Tensor log_weights, Tensor log_likelihood, bool x_grad, bool component_grads,"
      " bool var_grad) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "mixture_log_likelihood_double_backward(Tensor grad_grad_x, Tensor grad, Tensor x,"
      " Tensor means, Tensor var, Tensor log_weights, Tensor log_likelihood, bool need_grad,"
      " bool need_x, bool need_means, bool need_var, bool need_log_weights,"
      " Tensor(a!)? responsibilities=None) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "mixture_log_likelihood_keeping_exponents(Tensor x, Tensor means, Tensor var,"
      " Tensor log_weights, Tensor(a!) exponents) -> Tensor");
  m.def(
      "mixture_log_likelihood_backward_from_exponents(Tensor grad, Tensor x, Tensor means,"
      " Tensor var, Tensor log_weights, Tensor log_likelihood, Tensor(a!) exponents, bool x_grad,"
      " bool component_grads, bool var_grad) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "mixture_log_likelihood_backward_is_tiled(Tensor x, Tensor means, bool component_grads)"
      " -> bool");
  m.def(
      "mixture_log_likelihood_backward_keeping_responsibilities(Tensor grad, Tensor x,"
      " Tensor means, Tensor var, Tensor log_weights, Tensor log_likelihood, Tensor(a!) table,"
      " bool table_has_exponents, bool x_grad, bool component_grads, bool var_grad)"
      " -> (Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(gmkernels, CPU, m) {
  m.impl("mixture_log_likelihood", &cpu_mixture_log_likelihood);
  m.impl("mixture_log_likelihood_backward", &cpu_mixture_log_likelihood_backward);
  m.impl("mixture_log_likelihood_double_backward", &cpu_mixture_log_likelihood_double_backward);
  m.impl("mixture_log_likelihood_keeping_exponents", &cpu_mixture_log_likelihood_keeping_exponents);
  m.impl("mixture_log_likelihood_backward_from_exponents",
         &cpu_mixture_log_likelihood_backward_from_exponents);
  m.impl("mixture_log_likelihood_backward_is_tiled",
         &cpu_mixture_log_likelihood_backward_is_tiled);
  m.impl("mixture_log_likelihood_backward_keeping_responsibilities",
         &cpu_mixture_log_likelihood_backward_keeping_responsibilities);
}

#ifdef GMKERNELS_WITH_CUDA
TORCH_LIBRARY_IMPL(gmkernels, CUDA, m) {
  m.impl("mixture_log_likelihood", &cuda_mixture_log_likelihood);
  m.impl("mixture_log_likelihood_backward", &cuda_mixture_log_likelihood_backward);
}
#endif

}  // namespace gmk

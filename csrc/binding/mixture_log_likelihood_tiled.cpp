// The tiled path of mixture_log_likelihood (declared in mixture_log_likelihood_tiled.h).
//
// The (rows x cols) inner products that dominate the cost (2 B C d FLOPs) are a dense matrix
// product, and no hand-written loop nest comes near a tuned BLAS on it, so each tile is computed
// with at::mm (MKL/OpenBLAS on CPU, cuBLAS on CUDA) into one reused buffer and handed to the
// torch-free epilogue kernels (online logsumexp forward; W_bc = grad_b r_bc backward). The
// backward's reductions over rows and components are two more products per tile (W R and W^T X
// below), accumulated across tiles. Memory stays O((B + C) d + tile), never B x C.
// Inputs are shifted by the centre of the means first, so that the expansion
// ||x - mu||^2 = ||x||^2 - 2 x.mu + ||mu||^2 does not cancel catastrophically in float32 for data
// far from the origin (the squared distance is shift-invariant, so are the gradients).
#include "mixture_log_likelihood_tiled.h"

#include <ATen/Context.h>
#include <ATen/Dispatch.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <vector>

#include "../kernels/mixture_log_likelihood.h"
#include "checks.h"

#ifdef GMKERNELS_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#endif

namespace gmk {
namespace {

// Tiles of at most kTileCols components x kTileElements / kTileCols rows: wide enough for the
// BLAS product to run near its peak rate, small enough (16 MiB in float32) to stay in the last
// level cache between the product and its epilogue. (512 x 256 tiles, in L2, measured faster
// one thread at a time, were 4x slower at 2 threads on a busy machine for B = 8192, C = 5000,
// d = 64 forward + backward: each tile's BLAS call and epilogue open their own thread teams.)
constexpr int64_t kTileCols = 1024;
constexpr int64_t kTileElements = int64_t(1) << 22;
constexpr double kLog2Pi = 1.83787706640934548356;
// A tile of W with at most 1 / kSparseRatio nonzeros takes the sparse products (CPU): a dense
// product runs ~20-40x more FLOPs per second than the scattered row updates.
constexpr int64_t kSparseRatio = 32;
// The backward's factor tables (the narrow operands of its products with the B x C tile) are at
// least this wide, zero-padded: this machine's MKL multiplied a tile by fewer than 16 columns
// 2.5-5x slower than by 16 (B = C = 1000: 3 columns 687-895 us, 10 columns 686-984 us, 16
// columns 215-223 us; B = C = 2048, the transposed tile by 3 columns 9.4 ms, by 16 2.1 ms), while
// wider tables gained nothing from padding. Small d (2, 9: MD-GAN's) has such tables.
constexpr int64_t kMinFactorWidth = 16;

// Full-precision float32 products for the lifetime of the guard, whatever the user allowed.
//
// Why: torch.set_float32_matmul_precision("high") (or torch.backends.cuda.matmul.fp32_precision
// = "tf32") lets cuBLAS round float32 inputs to TF32's 10-bit mantissa, and "medium" lets oneDNN
// round them to bfloat16 on CPUs that have it. That is fine for a network layer, not here: the
// exponent is E_bc = offset_c + (x_b.mu_c - ||x_b||^2 / 2) / v_c, so a relative error of 2^-11 in
// inner products of size ~d is multiplied by 1 / v; for Parzen windows (d = 784, sigma = 0.1)
// the log-likelihoods come out off by O(1) nats, silently. The op's result must not depend on a
// global setting made for other code, so every product of the tiled path runs under this guard.
//
// How (the same C++ API in torch 2.10 and later, so 2.11 and 2.13 alike):
// - at::NoTF32Guard, thread-local: the cuBLAS handle (torch's default CUDA BLAS backend) is set
//   to CUBLAS_DEFAULT_MATH while it lives. It alone leaves a user's cuBLASLt preference and
//   oneDNN's bfloat16 path on CPUs reduced, hence also:
// - the float32 matmul precision of the CUDA and oneDNN backends, when it is reduced (TF32 or
//   BF16), set to IEEE through the per-backend API and restored on exit, as the user would with
//   torch.backends.{cuda,mkldnn}.matmul.fp32_precision. Untouched in the default (full
//   precision) state. This part is global: another thread's matmuls running during the op run
//   at full precision too, and torch.get_float32_matmul_precision() called from another thread
//   meanwhile would see the per-backend settings disagree with the legacy one and raise.
class FullPrecisionFloat32Matmul {
 public:
  FullPrecisionFloat32Matmul()
      : cuda_(at::Float32Backend::CUDA), onednn_(at::Float32Backend::MKLDNN) {}

 private:
  class BackendPrecision {
   public:
    explicit BackendPrecision(at::Float32Backend backend)
        : backend_(backend),
          saved_(at::globalContext().float32Precision(backend, at::Float32Op::MATMUL)),
          changed_(saved_ == at::Float32Precision::TF32 || saved_ == at::Float32Precision::BF16) {
      if (changed_)
        at::globalContext().setFloat32Precision(backend_, at::Float32Op::MATMUL,
                                                at::Float32Precision::IEEE);
    }
    ~BackendPrecision() {
      if (changed_)
        at::globalContext().setFloat32Precision(backend_, at::Float32Op::MATMUL, saved_);
    }
    BackendPrecision(const BackendPrecision&) = delete;
    BackendPrecision& operator=(const BackendPrecision&) = delete;

   private:
    at::Float32Backend backend_;
    at::Float32Precision saved_;
    bool changed_;
  };

  at::NoTF32Guard no_tf32_;
  BackendPrecision cuda_;
  BackendPrecision onednn_;
};

bool is_diagonal(const at::Tensor& var) { return var.dim() == 2; }

// The tiled path's operands: E_bc = offset_c + scale_c * ((left right^T)_bc - row_norm_b / 2),
// from the inputs centred at the mean of the means (xc, mc).
//   isotropic: left = xc, right = mc, row_norm = ||xc_b||^2, scale = 1 / v_c,
//              offset = lw - d log(2 pi v) / 2 - ||mc||^2 / (2 v)
//   diagonal:  left = [xc^2 | xc], right = [-P / 2 | mc P] with P = 1 / v, no row_norm,
//              scale = 1, offset = lw - sum_k log(2 pi v_k) / 2 - sum_k mc_k^2 P_k / 2
// Rows per task of the CPU loops below (at::parallel_for): small problems stay on one thread.
constexpr int64_t kParallelElements = int64_t(1) << 15;

int64_t grain_rows(int64_t width) {
  return std::max<int64_t>(1, kParallelElements / std::max<int64_t>(1, width));
}

// sum_k a_k b_k in double, in kSumLanes interleaved partial sums added in a fixed order: the same
// bits whatever the thread count, and a loop the compiler vectorizes (one running double sum is
// a chain of dependent additions, ~4 cycles each: ~1 ms per million elements, which made the
// operands of B = C = 316, d = 2048 cost a third of the product's time).
constexpr int64_t kSumLanes = 8;

template <typename scalar_t>
double sum_of_products(const scalar_t* a, const scalar_t* b, int64_t n) {
  double lanes[kSumLanes] = {};
  int64_t k = 0;
  for (; k + kSumLanes <= n; k += kSumLanes)
    for (int64_t l = 0; l < kSumLanes; ++l) lanes[l] += double(a[k + l]) * double(b[k + l]);
  for (int64_t l = 0; k + l < n; ++l) lanes[l] += double(a[k + l]) * double(b[k + l]);
  double total = 0;
  for (int64_t l = 0; l < kSumLanes; ++l) total += lanes[l];
  return total;
}

// out_k <- a_k - centre_k, returning sum_k out_k^2 as sum_of_products(out, out, n) does (the
// same lanes, so the same bits), in the one pass over the row where a copy and then
// sum_of_products made two (the operands of B = C = 316, d = 2048: ~360 -> ~290 us).
template <typename scalar_t>
double centred_copy(const scalar_t* a, const scalar_t* centre, scalar_t* out, int64_t n) {
  double lanes[kSumLanes] = {};
  int64_t k = 0;
  for (; k + kSumLanes <= n; k += kSumLanes)
    for (int64_t l = 0; l < kSumLanes; ++l) {
      const scalar_t value = a[k + l] - centre[k + l];
      out[k + l] = value;
      lanes[l] += double(value) * double(value);
    }
  for (int64_t l = 0; k + l < n; ++l) {
    const scalar_t value = a[k + l] - centre[k + l];
    out[k + l] = value;
    lanes[l] += double(value) * double(value);
  }
  double total = 0;
  for (int64_t l = 0; l < kSumLanes; ++l) total += lanes[l];
  return total;
}

// sum_k log(v_k) for v > 0, one logarithm per four values: the product of four floats in double
// (at least 1e-180 and at most 1e154 for any float > 0, so it neither underflows nor overflows;
// rounded once or twice, a relative 1e-16) instead of four double logarithms (d of them per
// component were most of the diagonal operands' time).
inline double sum_of_logs(const float* v, int64_t n) {
  double total = 0;
  int64_t k = 0;
  for (; k + 4 <= n; k += 4)
    total += std::log(double(v[k]) * double(v[k + 1]) * (double(v[k + 2]) * double(v[k + 3])));
  for (; k < n; ++k) total += std::log(double(v[k]));
  return total;
}
inline double sum_of_logs(const double* v, int64_t n) {
  double total = 0;
  for (int64_t k = 0; k < n; ++k) total += std::log(v[k]);
  return total;
}

// Scratch memory of the CPU tiled path, kept by the calling thread from one call to the next.
//
// Why: a call's operands, factor tables and tile buffer are a few to tens of MB, and allocated
// afresh per call they cost page faults: glibc returns large freed blocks to the kernel, and the
// first touch of every page of the next call's blocks faults (on a virtual machine that reports
// freed pages to its host, each fault is slow). At B = C = 316, d = 2048 the forward took 7.8 ms
// with fresh blocks and 4.4 ms with the same blocks reused, for a 3.3 ms matrix product.
// How: the blocks of one call are carved, in order, from one kept buffer; a call that needs
// more than the buffer holds takes fresh blocks for the rest, and the next call starts with a
// buffer of the size the last one needed, up to kKeptScratchBytes (above that, fresh blocks as
// before, whose page faults are small next to the work of such a call). A block lives only
// during its call: nothing carved is returned to the caller.
constexpr int64_t kKeptScratchBytes = int64_t(64) << 20;
constexpr int64_t kScratchAlignment = 64;

class Scratch {
 public:
  // The calling thread's scratch, restarted for a new call.
  static Scratch& start_call() {
    thread_local Scratch scratch;
    scratch.restart();
    return scratch;
  }

  // An uninitialized contiguous tensor of `sizes` and `options`, valid for this call: carved
  // from the kept buffer on the CPU, allocated as usual on other devices.
  at::Tensor take(at::IntArrayRef sizes, const at::TensorOptions& options) {
    if (options.device().type() != at::kCPU) return at::empty(sizes, options);
    const int64_t item = static_cast<int64_t>(options.dtype().itemsize());
    int64_t elements = 1;
    for (const int64_t size : sizes) elements *= size;
    const int64_t bytes = (elements * item + kScratchAlignment - 1) / kScratchAlignment * kScratchAlignment;
    needed_ += bytes;
    if (used_ + bytes > capacity()) return at::empty(sizes, options);
    at::Tensor block = buffer_.narrow(0, used_, elements * item).view(options.dtype().toScalarType());
    used_ += bytes;
    return block.view(sizes);
  }

 private:
  int64_t capacity() const { return buffer_.defined() ? buffer_.numel() : 0; }

  void restart() {
    if (needed_ > capacity() && needed_ <= kKeptScratchBytes)
      buffer_ = at::empty({needed_}, at::TensorOptions().dtype(at::kByte));
    used_ = 0;
    needed_ = 0;
  }

  at::Tensor buffer_;
  int64_t used_ = 0;
  int64_t needed_ = 0;   // bytes the current call has asked for
};

struct TiledProblem {
  at::Tensor xc, mc, precision;
  at::Tensor left, right, row_norm, scale, offset;
  bool diagonal;

  // `scratch`: where the CPU operands are carved (unused on other devices).
  TiledProblem(const at::Tensor& x, const at::Tensor& means, const at::Tensor& var,
               const at::Tensor& log_weights, Scratch& scratch)
      : diagonal(is_diagonal(var)) {
    if (x.is_cpu()) {
      AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mixture_log_likelihood_tiled", [&] {
        build_cpu<scalar_t>(x, means, var, log_weights, scratch);
      });
      return;
    }
    const at::Tensor centre = means.mean(0, /*keepdim=*/true);
    xc = x - centre;
    mc = means - centre;
    precision = var.reciprocal();
    const int64_t dim = x.size(1);
    if (diagonal) {
      left = at::cat({xc * xc, xc}, 1);
      right = at::cat({precision * -0.5, mc * precision}, 1);
      scale = at::ones_like(log_weights);
      offset = log_weights - 0.5 * (at::log(var).sum(1) + dim * kLog2Pi) -
               0.5 * (mc * mc * precision).sum(1);
    } else {
      left = xc;
      right = mc;
      row_norm = (xc * xc).sum(1);
      scale = precision;
      offset = log_weights - 0.5 * dim * (at::log(var) + kLog2Pi) -
               0.5 * precision * (mc * mc).sum(1);
    }
  }

 private:
  // The same operands in one pass over the components and one over the rows: the tensor-op form
  // above is a dozen small ops, a fixed cost of tens of microseconds per call that decided the
  // CPU comparisons at B = C = 316. Component sums in double.
  template <typename scalar_t>
  void build_cpu(const at::Tensor& x, const at::Tensor& means, const at::Tensor& var,
                 const at::Tensor& log_weights, Scratch& scratch) {
    const int64_t rows = x.size(0), components = means.size(0), dim = x.size(1);
    const scalar_t* means_p = means.data_ptr<scalar_t>();
    const scalar_t* var_p = var.data_ptr<scalar_t>();
    const scalar_t* log_weights_p = log_weights.data_ptr<scalar_t>();
    // The centre by blocks of dimensions, each summing every component (in component order:
    // the same bits for any thread count).
    std::vector<double> centre_sum(dim, 0.0);
    std::vector<scalar_t> centre(dim);
    at::parallel_for(0, dim, grain_rows(components), [&](int64_t begin, int64_t end) {
      for (int64_t c = 0; c < components; ++c)
        for (int64_t k = begin; k < end; ++k) centre_sum[k] += means_p[c * dim + k];
      for (int64_t k = begin; k < end; ++k)
        centre[k] = static_cast<scalar_t>(centre_sum[k] / components);
    });

    xc = scratch.take({rows, dim}, x.options());
    mc = scratch.take({components, dim}, x.options());
    precision = scratch.take(var.sizes(), x.options());
    offset = scratch.take({components}, x.options());
    if (diagonal) {
      left = scratch.take({rows, 2 * dim}, x.options());
      right = scratch.take({components, 2 * dim}, x.options());
      scale = scratch.take({components}, x.options()).fill_(1);
    } else {
      left = xc;
      right = mc;
      row_norm = scratch.take({rows}, x.options());
      scale = precision;
    }
    scalar_t* mc_p = mc.data_ptr<scalar_t>();
    scalar_t* precision_p = precision.data_ptr<scalar_t>();
    scalar_t* offset_p = offset.data_ptr<scalar_t>();
    scalar_t* right_p = diagonal ? right.data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, components, grain_rows(dim), [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        const scalar_t* var_row = var_p + (diagonal ? c * dim : c);
        scalar_t* m = mc_p + c * dim;
        if (!diagonal) {
          const scalar_t p = scalar_t(1) / var_row[0];
          const double squared_norm = centred_copy(means_p + c * dim, centre.data(), m, dim);
          precision_p[c] = p;
          offset_p[c] = static_cast<scalar_t>(
              log_weights_p[c] - 0.5 * dim * (std::log(double(var_row[0])) + kLog2Pi) -
              0.5 * double(p) * squared_norm);
        } else {
          for (int64_t k = 0; k < dim; ++k) m[k] = means_p[c * dim + k] - centre[k];
          scalar_t* p = precision_p + c * dim;
          scalar_t* right_row = right_p + c * 2 * dim;
          for (int64_t k = 0; k < dim; ++k) {
            p[k] = scalar_t(1) / var_row[k];
            right_row[k] = p[k] * scalar_t(-0.5);
            right_row[dim + k] = m[k] * p[k];
          }
          // sum_k log(2 pi v_k) and sum_k mc_k^2 P_k
          const double log_norm = sum_of_logs(var_row, dim) + dim * kLog2Pi;
          const double mean_term = sum_of_products(m, right_row + dim, dim);
          offset_p[c] = static_cast<scalar_t>(log_weights_p[c] - 0.5 * log_norm - 0.5 * mean_term);
        }
      }
    });
    const scalar_t* x_p = x.data_ptr<scalar_t>();
    scalar_t* xc_p = xc.data_ptr<scalar_t>();
    scalar_t* left_p = diagonal ? left.data_ptr<scalar_t>() : nullptr;
    scalar_t* row_norm_p = diagonal ? nullptr : row_norm.data_ptr<scalar_t>();
    at::parallel_for(0, rows, grain_rows(dim), [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        scalar_t* xc_row = xc_p + b * dim;
        if (!diagonal) {
          row_norm_p[b] =
              static_cast<scalar_t>(centred_copy(x_p + b * dim, centre.data(), xc_row, dim));
          continue;
        }
        for (int64_t k = 0; k < dim; ++k) xc_row[k] = x_p[b * dim + k] - centre[k];
        scalar_t* left_row = left_p + b * 2 * dim;
        for (int64_t k = 0; k < dim; ++k) {
          left_row[k] = xc_row[k] * xc_row[k];
          left_row[dim + k] = xc_row[k];
        }
      }
    });
  }
};

// log(eps / C): C terms each below exp(this) times a row's largest weigh less than one rounding
// of the row's total. The forward leaves such terms out of its sums (CPU, AVX-512) and the
// backward flushes such responsibilities to 0, which makes peaked rows sparse.
template <typename scalar_t>
scalar_t negligible_log_ratio(int64_t components) {
  return static_cast<scalar_t>(std::log(std::numeric_limits<scalar_t>::epsilon() /
                                        double(std::max<int64_t>(1, components))));
}

struct TileGrid {
  int64_t rows, cols, tile_rows, tile_cols;

  // whole_rows: every tile spans all the columns (the blocks of a kept (B, C) table).
  TileGrid(int64_t num_rows, int64_t num_cols, bool whole_rows = false)
      : rows(num_rows), cols(num_cols) {
    tile_cols = whole_rows ? num_cols : std::min(num_cols, kTileCols);
    tile_rows = std::max<int64_t>(1, std::min(num_rows, kTileElements / tile_cols));
  }
};

template <typename scalar_t>
MixtureTileParams<scalar_t> tile_params(const TiledProblem& problem, const at::Tensor& scores,
                                        int64_t row_begin, int64_t col_begin) {
  MixtureTileParams<scalar_t> p{};
  p.scores = scores.data_ptr<scalar_t>();
  p.row_norm = problem.row_norm.defined() ? problem.row_norm.data_ptr<scalar_t>() + row_begin
                                          : nullptr;
  p.scale = problem.scale.data_ptr<scalar_t>() + col_begin;
  p.offset = problem.offset.data_ptr<scalar_t>() + col_begin;
  p.num_rows = scores.size(0);
  p.num_cols = scores.size(1);
  p.ld = scores.stride(0);
  p.num_threads = cpu_threads();
  return p;
}

// Calls visit(row_begin, col_begin, scores) for every tile, scores = left[rows] right[cols]^T
// written into one reused buffer; or, with `kept` (B, C) given, into kept's blocks of whole rows,
// where the forward's epilogue leaves the exponents for the backward.
template <typename Visit>
void for_each_tile(const TiledProblem& problem, Scratch& scratch, Visit visit,
                   const at::Tensor& kept = at::Tensor()) {
  const bool keep = kept.defined();
  const TileGrid grid(problem.left.size(0), problem.right.size(0), /*whole_rows=*/keep);
  const int64_t stride =
      problem.left.is_cpu() ? padded_row_stride(grid.tile_cols) : grid.tile_cols;
  const at::Tensor buffer =
      keep ? at::Tensor() : scratch.take({grid.tile_rows * stride}, problem.left.options());
  for (int64_t row_begin = 0; row_begin < grid.rows; row_begin += grid.tile_rows) {
    const int64_t rows = std::min(grid.tile_rows, grid.rows - row_begin);
    const at::Tensor left_rows = problem.left.narrow(0, row_begin, rows);
    for (int64_t col_begin = 0; col_begin < grid.cols; col_begin += grid.tile_cols) {
      const int64_t cols = std::min(grid.tile_cols, grid.cols - col_begin);
      at::Tensor scores = keep ? kept.narrow(0, row_begin, rows)
                               : buffer.narrow(0, 0, rows * stride).view({rows, stride})
                                     .narrow(1, 0, cols);
      at::mm_out(scores, left_rows, problem.right.narrow(0, col_begin, cols).t());
      visit(row_begin, col_begin, scores);
    }
  }
}

// Calls visit(row_begin, 0, block) for the blocks of whole rows of a kept (B, C) table: the
// backward's tiles when the forward kept its exponents (no product to recompute).
template <typename Visit>
void for_each_kept_tile(const at::Tensor& kept, Visit visit) {
  const TileGrid grid(kept.size(0), kept.size(1), /*whole_rows=*/true);
  for (int64_t row_begin = 0; row_begin < grid.rows; row_begin += grid.tile_rows) {
    const int64_t rows = std::min(grid.tile_rows, grid.rows - row_begin);
    visit(row_begin, int64_t(0), kept.narrow(0, row_begin, rows));
  }
}

// The tile epilogues of one device; the orchestration below is shared.
struct CpuTileKernels {
  template <typename scalar_t>
  static void forward(const MixtureTileParams<scalar_t>& p) {
    mixture_tile_forward_cpu(p);
  }
  // Returns the number of nonzero W_bc, so that sparse tiles skip the dense products.
  template <typename scalar_t>
  static int64_t backward(const MixtureTileParams<scalar_t>& p) {
    return mixture_tile_backward_cpu(p);
  }
  static constexpr bool kSparseProducts = true;
  template <typename scalar_t>
  static void sparse_products(const MixtureSparseProductParams<scalar_t>& p) {
    mixture_sparse_products_cpu(p);
  }
};

#ifdef GMKERNELS_WITH_CUDA
struct CudaTileKernels {
  static void* stream() { return c10::cuda::getCurrentCUDAStream().stream(); }
  template <typename scalar_t>
  static void forward(const MixtureTileParams<scalar_t>& p) {
    check_cuda_status(mixture_tile_forward_cuda(p, stream()), "mixture_log_likelihood");
  }
  // cuBLAS products are cheap next to a sparse pass on the GPU: tiles always stay dense.
  template <typename scalar_t>
  static int64_t backward(const MixtureTileParams<scalar_t>& p) {
    check_cuda_status(mixture_tile_backward_cuda(p, stream()), "mixture_log_likelihood_backward");
    return -1;
  }
  static constexpr bool kSparseProducts = false;
  template <typename scalar_t>
  static void sparse_products(const MixtureSparseProductParams<scalar_t>&) {}
};
#endif

template <typename scalar_t, typename Kernels>
at::Tensor tiled_forward(const at::Tensor& x, const at::Tensor& means, const at::Tensor& var,
                         const at::Tensor& log_weights, const at::Tensor& kept) {
  const FullPrecisionFloat32Matmul full_precision;
  Scratch& scratch = Scratch::start_call();
  const TiledProblem problem(x, means, var, log_weights, scratch);
  at::Tensor running_max =
      at::full({x.size(0)}, -std::numeric_limits<double>::infinity(), x.options());
  at::Tensor running_sum = at::zeros({x.size(0)}, x.options());
  const scalar_t log_cutoff = negligible_log_ratio<scalar_t>(means.size(0));
  for_each_tile(problem, scratch, [&](int64_t row_begin, int64_t col_begin, const at::Tensor& scores) {
    MixtureTileParams<scalar_t> p = tile_params<scalar_t>(problem, scores, row_begin, col_begin);
    p.running_max = running_max.data_ptr<scalar_t>() + row_begin;
    p.running_sum = running_sum.data_ptr<scalar_t>() + row_begin;
    p.log_cutoff = log_cutoff;
    Kernels::forward(p);
  }, kept);
  // Rows with every component off keep max = -inf, sum = 0: log-likelihood -inf.
  return running_max + running_sum.log();
}

// The backward's factor tables and its final gradients on the CPU, in loops over the rows and
// the components: the same formulas as the tensor-op forms in tiled_backward (two dozen small
// ops there, the fixed cost that decided B = C = 316).
//   row factors (C, d + 1) [mc P | P], or (C, 2d) [mc P | P] for a diagonal var;
//   col factors (B, d + 2) [xc | 1 | ||xc||^2], or for a diagonal var (B, 2d + 1) [xc | 1 | xc^2]
//   with its gradient, (B, d + 1) [xc | 1] without.
// Both tables end in zero columns up to kMinFactorWidth; every reader takes the row stride from
// size(1).
template <typename scalar_t>
at::Tensor row_factors_cpu(const TiledProblem& problem, Scratch& scratch) {
  const int64_t components = problem.mc.size(0), dim = problem.mc.size(1);
  const int64_t used = problem.diagonal ? 2 * dim : dim + 1;
  const int64_t width = std::max(used, kMinFactorWidth);
  at::Tensor factors = scratch.take({components, width}, problem.mc.options());
  const scalar_t* mc = problem.mc.data_ptr<scalar_t>();
  const scalar_t* precision = problem.precision.data_ptr<scalar_t>();
  scalar_t* out = factors.data_ptr<scalar_t>();
  for (int64_t c = 0; c < components; ++c) {
    scalar_t* row = out + c * width;
    for (int64_t k = 0; k < dim; ++k) {
      const scalar_t p = problem.diagonal ? precision[c * dim + k] : precision[c];
      row[k] = mc[c * dim + k] * p;
      if (problem.diagonal) row[dim + k] = p;
    }
    if (!problem.diagonal) row[dim] = precision[c];
    std::fill(row + used, row + width, scalar_t(0));
  }
  return factors;
}

template <typename scalar_t>
at::Tensor col_factors_cpu(const TiledProblem& problem, bool var_grad, Scratch& scratch) {
  const int64_t rows = problem.xc.size(0), dim = problem.xc.size(1);
  // A diagonal variance's gradient is the only user of the xc^2 block (half the product).
  const int64_t used = problem.diagonal ? (var_grad ? 2 * dim + 1 : dim + 1) : dim + 2;
  const int64_t width = std::max(used, kMinFactorWidth);
  at::Tensor factors = scratch.take({rows, width}, problem.xc.options());
  const scalar_t* xc = problem.xc.data_ptr<scalar_t>();
  const scalar_t* row_norm = problem.diagonal ? nullptr : problem.row_norm.data_ptr<scalar_t>();
  scalar_t* out = factors.data_ptr<scalar_t>();
  at::parallel_for(0, rows, grain_rows(width), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const scalar_t* x_row = xc + b * dim;
      scalar_t* row = out + b * width;
      std::copy(x_row, x_row + dim, row);
      row[dim] = 1;
      if (!problem.diagonal) {
        row[dim + 1] = row_norm[b];
      } else if (var_grad) {
        for (int64_t k = 0; k < dim; ++k) row[dim + 1 + k] = x_row[k] * x_row[k];
      }
      std::fill(row + used, row + width, scalar_t(0));
    }
  });
  return factors;
}

// grad_x_b = (W [mc P])_b - xc_b (W [P])_b (times row_scale_b where given: W = r there, the
// incoming gradient scaling the rows after the product); from S = W^T [xc | 1 | xc^2] (or
// [xc | 1 | ||xc||^2]; a diagonal variance's xc^2 block only when its gradient is wanted):
// grad_mu = P (S_x - mc S_1), grad_v = P (P (S_xx - 2 mc S_x + mc^2 S_1) - S_1) / 2 per dimension
// (isotropic: summed over dimensions, d S_1), grad_log_w = S_1; component sums in double.
template <typename scalar_t>
void assemble_gradients_cpu(const TiledProblem& problem, const at::Tensor& row_sums,
                            const at::Tensor& col_sums, MixtureGradients& out, bool x_grad,
                            bool component_grads, const scalar_t* row_scale) {
  const int64_t rows = problem.xc.size(0), components = problem.mc.size(0);
  const int64_t dim = problem.xc.size(1);
  const bool diagonal = problem.diagonal;
  const scalar_t* xc = problem.xc.data_ptr<scalar_t>();
  const scalar_t* mc = problem.mc.data_ptr<scalar_t>();
  const scalar_t* precision = problem.precision.data_ptr<scalar_t>();
  if (x_grad) {
    const int64_t width = row_sums.size(1);
    const scalar_t* sums = row_sums.data_ptr<scalar_t>();
    scalar_t* grad_x = out.x.data_ptr<scalar_t>();
    at::parallel_for(0, rows, grain_rows(width), [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const scalar_t* s = sums + b * width;
        const scalar_t scale = row_scale != nullptr ? row_scale[b] : scalar_t(1);
        for (int64_t k = 0; k < dim; ++k)
          grad_x[b * dim + k] = scale * (s[k] - xc[b * dim + k] * s[diagonal ? dim + k : dim]);
      }
    });
  }
  if (!component_grads) return;
  const int64_t width = col_sums.size(1);
  const scalar_t* sums = col_sums.data_ptr<scalar_t>();
  scalar_t* grad_means = out.means.data_ptr<scalar_t>();
  scalar_t* grad_var = out.var.data_ptr<scalar_t>();
  scalar_t* grad_log_weights = out.log_weights.data_ptr<scalar_t>();
  for (int64_t c = 0; c < components; ++c) {
    const scalar_t* s = sums + c * width;
    const double weight_sum = s[dim];
    double weighted_squared = diagonal ? 0.0 : double(s[dim + 1]);  // isotropic: sum over k
    for (int64_t k = 0; k < dim; ++k) {
      const double m = mc[c * dim + k], weighted_x = s[k];
      const double p = diagonal ? precision[c * dim + k] : precision[c];
      grad_means[c * dim + k] = static_cast<scalar_t>(p * (weighted_x - m * weight_sum));
      if (!out.var_grad) continue;
      if (diagonal) {
        const double squared = s[dim + 1 + k] - 2 * m * weighted_x + m * m * weight_sum;
        grad_var[c * dim + k] = static_cast<scalar_t>(0.5 * p * (p * squared - weight_sum));
      } else {
        weighted_squared += -2 * m * weighted_x + m * m * weight_sum;
      }
    }
    if (!diagonal && out.var_grad) {
      const double p = precision[c];
      grad_var[c] = static_cast<scalar_t>(0.5 * p * (p * weighted_squared - dim * weight_sum));
    }
    grad_log_weights[c] = static_cast<scalar_t>(weight_sum);
  }
}

// Per tile, the epilogue turns the inner products into W_bc; then W R accumulates
// sum_c W_bc [mc_c / v_c | 1 / v_c] (what grad_x needs) and W^T X accumulates
// sum_b W_bc [xc_b | xc_b^2 | 1 ...] (what the component gradients need): two dense products,
// or on the CPU, when at most 1 / kSparseRatio of W is nonzero (peaked responsibilities, the
// usual Parzen case), a pass over the nonzeros only.
template <typename scalar_t, typename Kernels>
void tiled_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& means,
                    const at::Tensor& var, const at::Tensor& log_weights,
                    const at::Tensor& log_likelihood, MixtureGradients& out, bool x_grad,
                    bool component_grads, const at::Tensor& table, BackwardTable table_use) {
  const FullPrecisionFloat32Matmul full_precision;
  TORCH_CHECK(table_use == BackwardTable::kNone || x.is_cpu(),
              "mixture_log_likelihood_backward: a (B, C) table is CPU only");
  const bool from_exponents = table_use == BackwardTable::kExponents ||
                              table_use == BackwardTable::kExponentsToResponsibilities;
  // The table left holding r for a double backward: the epilogue runs with a unit gradient and
  // the incoming one scales the product's other operand (the column factors' rows) and grad_x's
  // rows instead; W = grad r would lose r where grad_b = 0.
  const bool leaves_responsibilities = table_use == BackwardTable::kExponentsToResponsibilities ||
                                       table_use == BackwardTable::kResponsibilities;
  Scratch& scratch = Scratch::start_call();
  const TiledProblem problem(x, means, var, log_weights, scratch);
  const at::Tensor& xc = problem.xc;
  const at::Tensor& mc = problem.mc;
  const at::Tensor& precision = problem.precision;
  const int64_t dim = x.size(1);
  at::Tensor row_factors, row_sums, col_factors, col_sums;
  if (x_grad) {
    row_factors = x.is_cpu() ? row_factors_cpu<scalar_t>(problem, scratch)
                  : problem.diagonal
                      ? at::cat({mc * precision, precision}, 1)                        // (C, 2d)
                      : at::cat({mc * precision.unsqueeze(1), precision.unsqueeze(1)}, 1);  // (C, d + 1)
    row_sums = scratch.take({x.size(0), row_factors.size(1)}, x.options()).zero_();
  }
  if (component_grads) {
    if (x.is_cpu()) {
      col_factors = col_factors_cpu<scalar_t>(problem, out.var_grad, scratch);
      if (leaves_responsibilities) col_factors.mul_(grad.unsqueeze(1));
    } else {
      const at::Tensor ones_rows = at::ones({x.size(0), 1}, x.options());
      col_factors = problem.diagonal
          ? at::cat({xc, xc * xc, ones_rows}, 1)                                       // (B, 2d + 1)
          : at::cat({xc, ones_rows, problem.row_norm.unsqueeze(1)}, 1);                // (B, d + 2)
    }
    col_sums = scratch.take({means.size(0), col_factors.size(1)}, x.options()).zero_();
  }
  // Responsibilities below eps / C are dropped: together they weigh less than one rounding.
  const scalar_t log_cutoff = negligible_log_ratio<scalar_t>(means.size(0));
  // Kept exponents are E_bc already: the epilogue's affine map becomes the identity.
  at::Tensor unit_scale, zero_offset;
  if (from_exponents) {
    unit_scale = scratch.take({means.size(0)}, x.options()).fill_(1);
    zero_offset = scratch.take({means.size(0)}, x.options()).zero_();
  }
  const at::Tensor epilogue_grad =
      leaves_responsibilities ? scratch.take({x.size(0)}, x.options()).fill_(1) : grad;
  const auto visit = [&](int64_t row_begin, int64_t col_begin, const at::Tensor& scores) {
    MixtureTileParams<scalar_t> p = tile_params<scalar_t>(problem, scores, row_begin, col_begin);
    if (from_exponents) {
      p.row_norm = nullptr;
      p.scale = unit_scale.data_ptr<scalar_t>() + col_begin;
      p.offset = zero_offset.data_ptr<scalar_t>() + col_begin;
    }
    p.grad = epilogue_grad.data_ptr<scalar_t>() + row_begin;
    p.log_likelihood = log_likelihood.data_ptr<scalar_t>() + row_begin;
    p.log_cutoff = log_cutoff;
    const int64_t nonzeros = Kernels::backward(p);
    const int64_t rows = scores.size(0), cols = scores.size(1);
    if (Kernels::kSparseProducts && nonzeros >= 0 && nonzeros * kSparseRatio <= rows * cols) {
      MixtureSparseProductParams<scalar_t> s{};
      s.weights = scores.data_ptr<scalar_t>();
      if (x_grad) {
        s.row_factors = row_factors.data_ptr<scalar_t>() + col_begin * row_factors.size(1);
        s.row_sums = row_sums.data_ptr<scalar_t>() + row_begin * row_sums.size(1);
        s.row_width = row_factors.size(1);
      }
      if (component_grads) {
        s.col_factors = col_factors.data_ptr<scalar_t>() + row_begin * col_factors.size(1);
        s.col_sums = col_sums.data_ptr<scalar_t>() + col_begin * col_sums.size(1);
        s.col_width = col_factors.size(1);
      }
      s.num_rows = rows;
      s.num_cols = cols;
      s.ld = scores.stride(0);
      s.num_threads = cpu_threads();
      Kernels::sparse_products(s);
      return;
    }
    if (x_grad)
      row_sums.narrow(0, row_begin, rows).addmm_(scores, row_factors.narrow(0, col_begin, cols));
    if (component_grads)
      col_sums.narrow(0, col_begin, cols).addmm_(scores.t(), col_factors.narrow(0, row_begin, rows));
  };
  if (from_exponents)
    for_each_kept_tile(table, visit);
  else
    for_each_tile(problem, scratch, visit, table);   // into the table's rows if one is given
  if (x.is_cpu()) {
    assemble_gradients_cpu<scalar_t>(problem, row_sums, col_sums, out, x_grad, component_grads,
                                     leaves_responsibilities ? grad.data_ptr<scalar_t>() : nullptr);
    return;
  }
  if (x_grad) {
    // grad_x_b = sum_c W_bc P_c (mu_c - x_b) = (W [mc P])_b - x_b (W [P])_b
    const at::Tensor toward_means = row_sums.narrow(1, 0, dim);
    const at::Tensor precision_sum = row_sums.narrow(1, dim, row_sums.size(1) - dim);
    out.x.copy_(toward_means - xc * precision_sum);
  }
  if (component_grads) {
    const at::Tensor weighted_x = col_sums.narrow(1, 0, dim);               // sum_b W xc_b
    if (problem.diagonal) {
      const at::Tensor weighted_x2 = col_sums.narrow(1, dim, dim);          // sum_b W xc_b^2
      const at::Tensor weight_sum = col_sums.narrow(1, 2 * dim, 1);         // sum_b W
      out.means.copy_(precision * (weighted_x - mc * weight_sum));
      const at::Tensor weighted_squared = weighted_x2 - 2 * mc * weighted_x + mc * mc * weight_sum;
      out.var.copy_(0.5 * precision * (precision * weighted_squared - weight_sum));
      out.log_weights.copy_(weight_sum.squeeze(1));
    } else {
      const at::Tensor weight_sum = col_sums.select(1, dim);
      const at::Tensor weighted_norm = col_sums.select(1, dim + 1);        // sum_b W ||xc_b||^2
      out.means.copy_(precision.unsqueeze(1) * (weighted_x - mc * weight_sum.unsqueeze(1)));
      const at::Tensor weighted_squared =
          weighted_norm - 2 * (weighted_x * mc).sum(1) + (mc * mc).sum(1) * weight_sum;
      out.var.copy_(0.5 * precision * (precision * weighted_squared - dim * weight_sum));
      out.log_weights.copy_(weight_sum);
    }
  }
}

// The number of nonzero entries of a (rows, cols) block with unit column stride, in parallel
// over rows: the sparse test of a tile of kept responsibilities (a recomputed tile gets it from
// its epilogue).
template <typename scalar_t>
int64_t count_nonzeros(const at::Tensor& block) {
  const scalar_t* data = block.data_ptr<scalar_t>();
  const int64_t cols = block.size(1), stride = block.stride(0);
  return at::parallel_reduce(
      0, block.size(0), grain_rows(cols), int64_t(0),
      [&](int64_t begin, int64_t end, int64_t count) {
        for (int64_t b = begin; b < end; ++b) {
          const scalar_t* row = data + b * stride;
          for (int64_t c = 0; c < cols; ++c) count += row[c] != scalar_t(0);
        }
        return count;
      },
      std::plus<int64_t>());
}

// The double backward of a gradient penalty in x on the CPU: the derivatives of
// Phi = sum_b grad_b <dll_b/dx_b, U_b> (U = grad_grad_x, the only cotangent) in grad, x, means,
// var and log_weights. With r = exp(E - ll) the responsibilities, P = 1 / var, slopes
// s_bc = dE_bc/dx_b . U_b = U_b . (mc_c P_c) - (U_b xc_b) . P_c, q = grad r and
// w = q (s - sum_c r s):
//   dPhi/dgrad_b  = sum_c r_bc s_bc
//   dPhi/dx_b     = (w [mc P])_b - U_b (q P)_b - xc_b (w P)_b
//   dPhi/dmeans_c = P_c ((q^T U)_c + (w^T xc)_c - mc_c sum_b w_bc)
//   dPhi/dvar_ck  = P^2 ((q^T (U xc))_ck - mc (q^T U)_ck)
//                   + P^2 ((w^T xc^2)_ck - 2 mc (w^T xc)_ck + mc^2 sum_b w_bc) / 2
//                   - P sum_b w_bc / 2                   (isotropic: summed over k)
//   dPhi/dlog_w_c = sum_b w_bc
// (the closed form that gmkernels/ops/mixture_log_likelihood.py's penalty_in_x evaluates in torch
// ops). The slopes' row mean needs every component of a row, so a tile is whole rows: r and s
// tiles from two products ([U | -(U xc)] against the backward's row factors [mc P | P]), the
// epilogue kernels turn them into q and w, and four more products give the sums:
// w [mc P | P] and q P per row, q^T [U | -(U xc)] and w^T [xc | 1 | xc^2] per component,
// accumulated over the tiles. A tile where at most 1 / kSparseRatio of r is nonzero (peaked
// responsibilities, as in the first backward) takes mixture_penalty_sparse_tile_cpu instead:
// the slopes only there and no pass over the tile but the one finding them (q and w vanish
// wherever r does). Memory O((B + C) d + tile), never B x C.
template <typename scalar_t>
void tiled_double_backward_cpu(const at::Tensor& grad_grad_x, const at::Tensor& grad,
                               const at::Tensor& x, const at::Tensor& means,
                               const at::Tensor& var, const at::Tensor& log_weights,
                               const at::Tensor& log_likelihood, MixturePenaltyGradients& out,
                               const at::Tensor& kept_responsibilities) {
  const FullPrecisionFloat32Matmul full_precision;
  Scratch& scratch = Scratch::start_call();
  const TiledProblem problem(x, means, var, log_weights, scratch);
  const int64_t rows = x.size(0), components = means.size(0), dim = x.size(1);
  const bool diagonal = problem.diagonal;
  const at::TensorOptions options = x.options();
  const at::Tensor row_factors = row_factors_cpu<scalar_t>(problem, scratch);   // [mc P | P]
  const int64_t width = row_factors.size(1);   // d + 1 or 2d, at least kMinFactorWidth

  // The slopes' left operand [U | -(U . xc)] (isotropic) or [U | -U xc] (diagonal), zero-padded
  // as the row factors are.
  at::Tensor slope_left = scratch.take({rows, width}, options);
  {
    const scalar_t* u = grad_grad_x.data_ptr<scalar_t>();
    const scalar_t* xc = problem.xc.data_ptr<scalar_t>();
    scalar_t* left = slope_left.data_ptr<scalar_t>();
    at::parallel_for(0, rows, grain_rows(width), [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const scalar_t* u_row = u + b * dim;
        const scalar_t* xc_row = xc + b * dim;
        scalar_t* row = left + b * width;
        std::copy(u_row, u_row + dim, row);
        if (diagonal) {
          for (int64_t k = 0; k < dim; ++k) row[dim + k] = -u_row[k] * xc_row[k];
        } else {
          row[dim] = static_cast<scalar_t>(-sum_of_products(u_row, xc_row, dim));
        }
        std::fill(row + (diagonal ? 2 * dim : dim + 1), row + width, scalar_t(0));
      }
    });
  }
  const bool component_grads = out.component_grads();
  const at::Tensor col_factors =
      component_grads ? col_factors_cpu<scalar_t>(problem, out.need_var, scratch) : at::Tensor();
  at::Tensor slope_sums, weight_sums;   // q^T [U | -(U xc)], w^T [xc | 1 | ...] per component
  if (component_grads) {
    slope_sums = scratch.take({components, width}, options).zero_();
    weight_sums = scratch.take({components, col_factors.size(1)}, options).zero_();
  }

  // Two tiles (r -> q, s -> w) of whole rows, kTileElements in all.
  const int64_t tile_rows = std::max<int64_t>(1, std::min(rows, kTileElements / 2 / components));
  const bool kept = kept_responsibilities.defined();
  // The slopes' rows as far apart as the responsibilities' (the epilogues take one stride).
  const int64_t stride = kept ? std::max(components, kept_responsibilities.stride(0))
                              : padded_row_stride(components);
  const at::Tensor responsibilities =
      kept ? at::Tensor()
           : scratch.take({tile_rows, stride}, options).narrow(1, 0, components);
  const at::Tensor slopes = scratch.take({tile_rows, stride}, options).narrow(1, 0, components);
  const at::Tensor ones = scratch.take({tile_rows}, options).fill_(1);
  const at::Tensor mean_slope = out.need_grad ? out.grad : scratch.take({rows}, options);
  at::Tensor row_sums, precision_sums;   // w [mc P | P], q P
  if (out.need_x) {
    row_sums = scratch.take({tile_rows, width}, options);
    precision_sums = scratch.take({tile_rows, diagonal ? dim : 1}, options);
  }
  const scalar_t log_cutoff = negligible_log_ratio<scalar_t>(components);
  // A tile's q and w, its mean slopes and its row sums (into the first n rows of row_sums and
  // precision_sums) and column sums from dense products: s, the epilogue, four products.
  const auto dense_penalty_tile = [&](at::Tensor& r, at::Tensor& s, const at::Tensor& left_rows,
                                      int64_t row_begin, int64_t n) {
    at::mm_out(s, left_rows, row_factors.t());
    MixturePenaltyTileParams<scalar_t> penalty{};
    penalty.responsibilities = r.data_ptr<scalar_t>();
    penalty.slopes = s.data_ptr<scalar_t>();
    penalty.grad = grad.data_ptr<scalar_t>() + row_begin;
    penalty.mean_slope = mean_slope.data_ptr<scalar_t>() + row_begin;
    penalty.num_rows = n;
    penalty.num_cols = components;
    penalty.ld = r.stride(0);   // s has the same stride
    penalty.num_threads = cpu_threads();
    mixture_penalty_tile_cpu(penalty);   // r -> q, s -> w
    if (out.need_x) {
      at::Tensor sums = row_sums.narrow(0, 0, n);
      at::Tensor precision_sum = precision_sums.narrow(0, 0, n);
      at::mm_out(sums, s, row_factors);
      if (diagonal) {
        at::mm_out(precision_sum, r, problem.precision);
      } else {
        at::mm_out(precision_sum, r, problem.precision.unsqueeze(1));
      }
    }
    if (component_grads) {
      slope_sums.addmm_(r.t(), left_rows);
      weight_sums.addmm_(s.t(), col_factors.narrow(0, row_begin, n));
    }
  };
  for (int64_t row_begin = 0; row_begin < rows; row_begin += tile_rows) {
    const int64_t n = std::min(tile_rows, rows - row_begin);
    at::Tensor r = kept ? kept_responsibilities.narrow(0, row_begin, n)
                        : responsibilities.narrow(0, 0, n);
    at::Tensor s = slopes.narrow(0, 0, n);
    const at::Tensor left_rows = slope_left.narrow(0, row_begin, n);
    int64_t nonzeros;
    if (kept) {
      nonzeros = count_nonzeros<scalar_t>(r);
    } else {
      at::mm_out(r, problem.left.narrow(0, row_begin, n), problem.right.t());
      MixtureTileParams<scalar_t> p = tile_params<scalar_t>(problem, r, row_begin, 0);
      p.grad = ones.data_ptr<scalar_t>();
      p.log_likelihood = log_likelihood.data_ptr<scalar_t>() + row_begin;
      p.log_cutoff = log_cutoff;
      nonzeros = mixture_tile_backward_cpu(p);
    }
    if (nonzeros * kSparseRatio <= n * components) {
      MixturePenaltySparseTileParams<scalar_t> sparse{};
      sparse.responsibilities = r.data_ptr<scalar_t>();
      sparse.grad = grad.data_ptr<scalar_t>() + row_begin;
      sparse.slope_left = left_rows.data_ptr<scalar_t>();
      sparse.row_factors = row_factors.data_ptr<scalar_t>();
      sparse.precision = problem.precision.data_ptr<scalar_t>();
      sparse.mean_slope = mean_slope.data_ptr<scalar_t>() + row_begin;
      if (out.need_x) {
        sparse.row_sums = row_sums.data_ptr<scalar_t>();
        sparse.precision_sums = precision_sums.data_ptr<scalar_t>();
      }
      if (component_grads) {
        sparse.col_factors = col_factors.data_ptr<scalar_t>() + row_begin * col_factors.size(1);
        sparse.slope_sums = slope_sums.data_ptr<scalar_t>();
        sparse.weight_sums = weight_sums.data_ptr<scalar_t>();
        sparse.col_width = col_factors.size(1);
      }
      sparse.num_rows = n;
      sparse.num_cols = components;
      sparse.ld = r.stride(0);
      sparse.width = width;
      sparse.precision_width = diagonal ? dim : 1;
      sparse.num_threads = cpu_threads();
      mixture_penalty_sparse_tile_cpu(sparse);
    } else {
      dense_penalty_tile(r, s, left_rows, row_begin, n);
    }
    if (out.need_x) {
      const scalar_t* sums_p = row_sums.data_ptr<scalar_t>();
      const scalar_t* qp = precision_sums.data_ptr<scalar_t>();
      const scalar_t* u = grad_grad_x.data_ptr<scalar_t>() + row_begin * dim;
      const scalar_t* xc = problem.xc.data_ptr<scalar_t>() + row_begin * dim;
      scalar_t* grad_x = out.x.data_ptr<scalar_t>() + row_begin * dim;
      at::parallel_for(0, n, grain_rows(dim), [&](int64_t begin, int64_t end) {
        for (int64_t b = begin; b < end; ++b) {
          const scalar_t* sum = sums_p + b * width;
          for (int64_t k = 0; k < dim; ++k) {
            const int64_t j = b * dim + k;
            grad_x[j] = sum[k] - u[j] * qp[diagonal ? j : b] - xc[j] * sum[diagonal ? dim + k : dim];
          }
        }
      });
    }
  }
  if (!component_grads) return;

  const scalar_t* mc = problem.mc.data_ptr<scalar_t>();
  const scalar_t* precision = problem.precision.data_ptr<scalar_t>();
  const scalar_t* slope_p = slope_sums.data_ptr<scalar_t>();
  const scalar_t* weight_p = weight_sums.data_ptr<scalar_t>();
  const int64_t weight_width = weight_sums.size(1);
  scalar_t* grad_means = out.need_means ? out.means.data_ptr<scalar_t>() : nullptr;
  scalar_t* grad_var = out.need_var ? out.var.data_ptr<scalar_t>() : nullptr;
  scalar_t* grad_log_weights = out.need_log_weights ? out.log_weights.data_ptr<scalar_t>() : nullptr;
  at::parallel_for(0, components, grain_rows(dim), [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const scalar_t* qs = slope_p + c * width;           // [q^T U | -q^T (U xc)]
      const scalar_t* ws = weight_p + c * weight_width;   // [w^T xc | sum_b w | w^T xc^2 ...]
      const double weight_sum = ws[dim];
      // isotropic var: the sums over k of its per-dimension terms
      double slope_term = diagonal ? 0.0 : -double(qs[dim]);
      double square_term = diagonal ? 0.0 : double(ws[dim + 1]);
      for (int64_t k = 0; k < dim; ++k) {
        const double m = mc[c * dim + k], q_u = qs[k], w_x = ws[k];
        const double prec = diagonal ? precision[c * dim + k] : precision[c];
        if (grad_means != nullptr)
          grad_means[c * dim + k] = static_cast<scalar_t>(prec * (q_u + w_x - m * weight_sum));
        if (grad_var == nullptr) continue;
        if (diagonal) {
          const double q_ux = -double(qs[dim + k]);
          const double squared = ws[dim + 1 + k] - 2 * m * w_x + m * m * weight_sum;
          grad_var[c * dim + k] = static_cast<scalar_t>(
              prec * prec * (q_ux - m * q_u) + 0.5 * prec * (prec * squared - weight_sum));
        } else {
          slope_term -= m * q_u;
          square_term += -2 * m * w_x + m * m * weight_sum;
        }
      }
      if (grad_var != nullptr && !diagonal) {
        const double prec = precision[c];
        grad_var[c] = static_cast<scalar_t>(prec * prec * slope_term +
                                            0.5 * prec * (prec * square_term - dim * weight_sum));
      }
      if (grad_log_weights != nullptr) grad_log_weights[c] = static_cast<scalar_t>(weight_sum);
    }
  });
}

// body(CpuTileKernels{}) or body(CudaTileKernels{}) by the device of x.
template <typename Body>
void dispatch_tile_kernels(const at::Tensor& x, Body&& body) {
#ifdef GMKERNELS_WITH_CUDA
  if (x.is_cuda()) {
    body(CudaTileKernels{});
    return;
  }
#endif
  TORCH_CHECK(x.is_cpu(), "mixture_log_likelihood: tensors on ", x.device(),
              " are not supported by this build");
  body(CpuTileKernels{});
}

}  // namespace

// A multiple of 16 (64 bytes in float32) that is not one of 512. This machine's MKL wrote a
// product into rows of 3162 floats 1.7x slower than into rows of 3168 (B = C = 3162, d = 64,
// 16 MiB tiles: 6.5 vs 3.8 ms), and multiplied a transposed tile of rows of 1024 floats 1.3-1.7x
// slower than one of 1000 or 1008 (d = 16 and 64); other strides (316, 1000) made no difference.
int64_t padded_row_stride(int64_t cols) {
  int64_t stride = (cols + 15) / 16 * 16;
  if (stride % 512 == 0) stride += 16;
  return stride;
}

at::Tensor mixture_log_likelihood_tiled(const at::Tensor& x, const at::Tensor& means,
                                        const at::Tensor& var, const at::Tensor& log_weights,
                                        const at::Tensor& kept) {
  at::Tensor out;
  dispatch_tile_kernels(x, [&](auto kernels) {
    using Kernels = decltype(kernels);
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mixture_log_likelihood_tiled", [&] {
      out = tiled_forward<scalar_t, Kernels>(x, means, var, log_weights, kept);
    });
  });
  return out;
}

void mixture_log_likelihood_tiled_backward(const at::Tensor& grad, const at::Tensor& x,
                                           const at::Tensor& means, const at::Tensor& var,
                                           const at::Tensor& log_weights,
                                           const at::Tensor& log_likelihood,
                                           MixtureGradients& out, bool x_grad,
                                           bool component_grads, const at::Tensor& table,
                                           BackwardTable table_use) {
  dispatch_tile_kernels(x, [&](auto kernels) {
    using Kernels = decltype(kernels);
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mixture_log_likelihood_tiled_backward", [&] {
      tiled_backward<scalar_t, Kernels>(grad, x, means, var, log_weights, log_likelihood, out,
                                        x_grad, component_grads, table, table_use);
    });
  });
}

void mixture_log_likelihood_tiled_double_backward(const at::Tensor& grad_grad_x,
                                                  const at::Tensor& grad, const at::Tensor& x,
                                                  const at::Tensor& means, const at::Tensor& var,
                                                  const at::Tensor& log_weights,
                                                  const at::Tensor& log_likelihood,
                                                  MixturePenaltyGradients& out,
                                                  const at::Tensor& responsibilities) {
  TORCH_CHECK(x.is_cpu(), "mixture_log_likelihood_double_backward: CPU tensors only, got ",
              x.device());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mixture_log_likelihood_double_backward", [&] {
    tiled_double_backward_cpu<scalar_t>(grad_grad_x, grad, x, means, var, log_weights,
                                        log_likelihood, out, responsibilities);
  });
}

}  // namespace gmk

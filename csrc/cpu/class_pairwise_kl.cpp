// CPU kernels of class_pairwise_kl (math in csrc/kernels/class_pairwise_kl.h).
// Forward: pass 1 reads P once, computing l = log max(p, eps) once per element: it adds l to the
// row's class sums and keeps the row's sum_c p l (N doubles); pass 2 reads P again for
// sum_c p Lbar, without logs. Backward: pass 1 sums g_i p_i per class, pass 2 writes the gradient
// (one log per element). Nothing of size N x C is allocated.
// Each thread sums a contiguous range of rows into its own K x C table, and the tables are added
// in a fixed order: the result is identical on every run with the same thread count.
#include "../kernels/class_pairwise_kl.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

namespace gmk {
namespace {

#ifdef __FMA__
inline float mul_add(float a, float b, float c) { return __builtin_fmaf(a, b, c); }
#else
inline float mul_add(float a, float b, float c) { return a * b + c; }
#endif

// log x for normal x > 0 within 1.1 ulp (checked against double log over every normal float in
// (0, 1]), branch-free so that `omp simd` loops vectorize it: std::log only vectorizes under
// -ffast-math, and the log is most of the forward's arithmetic. x = 2^n z with z in [2/3, 4/3)
// by integer arithmetic on the bits, then log(1 + r) = r + r^2 Q(r), Q a degree-8 least-max-
// relative-error fit on |r| <= 1/3.
inline float log_normal_positive(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  const uint32_t shifted = bits - 0x3f2aaaabu;  // 0x3f2aaaab = 2/3
  const int32_t n = static_cast<int32_t>(shifted) >> 23;
  const uint32_t z_bits = (shifted & 0x007fffffu) + 0x3f2aaaabu;
  float z;
  std::memcpy(&z, &z_bits, sizeof z);
  const float r = z - 1.0f;
  float q = -0.1294809728860855f;
  q = mul_add(q, r, 0.14004062116146088f);
  q = mul_add(q, r, -0.12167350202798843f);
  q = mul_add(q, r, 0.1400129348039627f);
  q = mul_add(q, r, -0.1668229103088379f);
  q = mul_add(q, r, 0.2001073956489563f);
  q = mul_add(q, r, -0.24999718368053436f);
  q = mul_add(q, r, 0.3333320915699005f);
  q = mul_add(q, r, -0.5f);
  return mul_add(q, r * r, mul_add(static_cast<float>(n), 0.693147182464599609375f, r));
}

// log max(p, eps); the wrapper guarantees eps >= the dtype's smallest normal number.
inline float clamped_log(float p, float eps) { return log_normal_positive(p > eps ? p : eps); }
inline double clamped_log(double p, double eps) { return std::log(p > eps ? p : eps); }

// Rows are split into `count` contiguous ranges ("slots"), each summed into its own K x C table by
// one thread; tables are then added in slot order. The slots depend on the thread count, N and
// K C only, so results are identical on every run with the same thread count. Each slot gets at
// least kMinElementsPerSlot elements of P (below that, waking threads costs more than it saves),
// and all tables together stay under kTableBudgetBytes (many threads x a large K x C table would
// cost more to zero and add than the rows they save).
constexpr int64_t kMinElementsPerSlot = int64_t(1) << 16;
constexpr int64_t kTableBudgetBytes = int64_t(256) << 20;
// The forward sums float logs in float, and moves each class's float sums into the double table
// every kFlushRows rows of that class: float arithmetic in the hot loop, double accuracy overall.
constexpr int kFlushRows = 32;

struct RowSlots {
  int64_t num_samples;
  int count;

  int64_t begin(int slot) const { return num_samples * slot / count; }
};

// Rows are visited in natural order, which streams P; the class rows of the tables are the random
// accesses, served from cache for tables up to a few million entries (K = C = 1000: 12 MB).
RowSlots make_slots(int64_t num_samples, int64_t num_classes, int64_t num_categories,
                    int requested_threads) {
  const int64_t table_bytes = num_classes * num_categories * int64_t(sizeof(double) + sizeof(float));
  const int64_t by_size = num_samples * num_categories / kMinElementsPerSlot;
  const int64_t by_memory = kTableBudgetBytes / table_bytes;
  return RowSlots{num_samples, static_cast<int>(std::max<int64_t>(
                                   1, std::min<int64_t>({requested_threads, by_size, by_memory})))};
}

// One slot's per-class sums: in the double table directly (accumulate_t double), or in a float
// table whose class rows are added into the double table every kFlushRows rows of the class.
template <typename accumulate_t>
class SlotSums {
 public:
  SlotSums(double* sums, int64_t num_classes, int64_t num_categories)
      : sums_(sums), num_categories_(num_categories) {
    std::fill(sums, sums + num_classes * num_categories, 0.0);
    if (kBlocked) {
      block_.assign(num_classes * num_categories, 0.0f);
      pending_.assign(num_classes, 0);
    }
  }

  // Where row values of class k are added.
  accumulate_t* row(int64_t k) {
    if constexpr (kBlocked) return block_.data() + k * num_categories_;
    else return sums_ + k * num_categories_;
  }

  // Call after adding one row of class k.
  void added(int64_t k) {
    if (kBlocked && ++pending_[k] == kFlushRows) flush(k);
  }

  ~SlotSums() {
    for (size_t k = 0; k < pending_.size(); ++k)
      if (pending_[k]) flush(static_cast<int64_t>(k));
  }

 private:
  static constexpr bool kBlocked = std::is_same<accumulate_t, float>::value;

  void flush(int64_t k) {
    float* block = block_.data() + k * num_categories_;
    double* sums = sums_ + k * num_categories_;
#pragma omp simd
    for (int64_t c = 0; c < num_categories_; ++c) {
      sums[c] += block[c];
      block[c] = 0.0f;
    }
    pending_[k] = 0;
  }

  double* sums_;
  int64_t num_categories_;
  std::vector<float> block_;
  std::vector<int> pending_;
};

// mean[k, c] = (1 / n_k) sum_{i: labels_i = k} value_ic, where add_row(i, sums) adds row i's
// values (value_ic for c < C) into the C accumulate_t `sums` (it may do more, e.g. keep a row
// total). Empty classes get 0.
template <typename accumulate_t, typename AddRow>
void class_means(const RowSlots& slots, const int64_t* labels, int64_t num_classes,
                 int64_t num_categories, int requested_threads, AddRow&& add_row, double* mean) {
  const int64_t table_size = num_classes * num_categories;
  std::unique_ptr<double[]> partial(new double[slots.count * table_size]);
  std::vector<int64_t> partial_counts(slots.count * num_classes, 0);
#pragma omp parallel for num_threads(slots.count) schedule(static, 1)
  for (int slot = 0; slot < slots.count; ++slot) {
    SlotSums<accumulate_t> sums(partial.get() + slot * table_size, num_classes, num_categories);
    int64_t* counts = partial_counts.data() + slot * num_classes;
    for (int64_t i = slots.begin(slot); i < slots.begin(slot + 1); ++i) {
      const int64_t k = labels[i];
      ++counts[k];
      add_row(i, sums.row(k));
      sums.added(k);
    }
  }
  std::vector<double> inverse_count(num_classes);
  for (int64_t k = 0; k < num_classes; ++k) {
    int64_t count = 0;
    for (int slot = 0; slot < slots.count; ++slot) count += partial_counts[slot * num_classes + k];
    inverse_count[k] = count ? 1.0 / static_cast<double>(count) : 0.0;
  }
#pragma omp parallel for num_threads(requested_threads) schedule(static) if (table_size > 16384)
  for (int64_t idx = 0; idx < table_size; ++idx) {
    double total = partial[idx];
    for (int slot = 1; slot < slots.count; ++slot) total += partial[slot * table_size + idx];
    mean[idx] = total * inverse_count[idx / num_categories];
  }
}

// Calls visit(i) for every row, each slot on one thread.
template <typename Visit>
void for_each_row(const RowSlots& slots, Visit&& visit) {
#pragma omp parallel for num_threads(slots.count) schedule(static, 1)
  for (int slot = 0; slot < slots.count; ++slot)
    for (int64_t i = slots.begin(slot); i < slots.begin(slot + 1); ++i) visit(i);
}

}  // namespace

template <typename scalar_t>
void class_pairwise_kl_forward_cpu(const ClassPairwiseKlParams<scalar_t>& p) {
  const int64_t num_samples = p.num_samples, num_categories = p.num_categories;
  const scalar_t eps = static_cast<scalar_t>(p.eps);
  std::vector<double> mean_log(p.num_classes * num_categories);
  std::unique_ptr<double[]> self_term(new double[num_samples]);  // sum_c p_ic l_ic
  const RowSlots slots =
      make_slots(num_samples, p.num_classes, num_categories, p.num_threads);
  class_means<scalar_t>(
      slots, p.labels, p.num_classes, num_categories, p.num_threads,
      [&](int64_t i, scalar_t* sums) {
        const scalar_t* row = p.probs + i * num_categories;
        // In double like the cross term below, product by product in the same order: a sample
        // alone in its class (Lbar = its own l) gets exactly 0.
        double self = 0;
#pragma omp simd reduction(+ : self)
        for (int64_t c = 0; c < num_categories; ++c) {
          const scalar_t log_prob = clamped_log(row[c], eps);
          sums[c] += log_prob;
          self += static_cast<double>(row[c]) * static_cast<double>(log_prob);
        }
        self_term[i] = self;
      },
      mean_log.data());
  for (size_t idx = 0; idx < mean_log.size(); ++idx)
    p.class_mean_log[idx] = static_cast<scalar_t>(mean_log[idx]);
  // kl = self - cross can cancel to a small number: the cross term is summed in double.
  for_each_row(slots, [&](int64_t i) {
    const scalar_t* row = p.probs + i * num_categories;
    const double* class_mean = mean_log.data() + p.labels[i] * num_categories;
    double cross = 0;  // sum_c p_ic Lbar_kc
#pragma omp simd reduction(+ : cross)
    for (int64_t c = 0; c < num_categories; ++c)
      cross += static_cast<double>(row[c]) * class_mean[c];
    p.kl[i] = static_cast<scalar_t>(self_term[i] - cross);
  });
}

template <typename scalar_t>
void class_pairwise_kl_backward_cpu(const ClassPairwiseKlBackwardParams<scalar_t>& p) {
  const int64_t num_samples = p.num_samples, num_categories = p.num_categories;
  const scalar_t eps = static_cast<scalar_t>(p.eps);
  // W and the gradient in double: the two paths cancel (exactly, for a sample alone in its
  // class: W / p = g_j, l - Lbar = 0), and products of floats are exact in double.
  std::vector<double> weighted_mean(p.num_classes * num_categories);  // W
  const RowSlots slots = make_slots(num_samples, p.num_classes, num_categories, p.num_threads);
  class_means<double>(
      slots, p.labels, p.num_classes, num_categories, p.num_threads,
      [&](int64_t i, double* sums) {
        const scalar_t* row = p.probs + i * num_categories;
        const double grad = static_cast<double>(p.grad_kl[i]);
#pragma omp simd
        for (int64_t c = 0; c < num_categories; ++c) sums[c] += grad * static_cast<double>(row[c]);
      },
      weighted_mean.data());
  for_each_row(slots, [&](int64_t i) {
    const int64_t k = p.labels[i];
    const scalar_t* row = p.probs + i * num_categories;
    const scalar_t* class_mean = p.class_mean_log + k * num_categories;
    const double* weighted = weighted_mean.data() + k * num_categories;
    const double grad = static_cast<double>(p.grad_kl[i]);
    scalar_t* out = p.grad_probs + i * num_categories;
#pragma omp simd
    for (int64_t c = 0; c < num_categories; ++c) {
      const scalar_t prob = row[c];
      const scalar_t clamped = prob > eps ? prob : eps;
      const double mask = prob >= eps ? 1.0 : 0.0;  // torch.clamp passes the gradient at p = eps
      const double log_prob = static_cast<double>(clamped_log(prob, eps));
      out[c] = static_cast<scalar_t>(
          grad * (log_prob + mask - static_cast<double>(class_mean[c])) -
          mask * weighted[c] / static_cast<double>(clamped));
    }
  });
}

template void class_pairwise_kl_forward_cpu<float>(const ClassPairwiseKlParams<float>&);
template void class_pairwise_kl_forward_cpu<double>(const ClassPairwiseKlParams<double>&);
template void class_pairwise_kl_backward_cpu<float>(const ClassPairwiseKlBackwardParams<float>&);
template void class_pairwise_kl_backward_cpu<double>(const ClassPairwiseKlBackwardParams<double>&);

}  // namespace gmk

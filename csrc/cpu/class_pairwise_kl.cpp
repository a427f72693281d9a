// CPU kernels of class_pairwise_kl (math in csrc/kernels/class_pairwise_kl.h).
// Forward: pass 1 reads P once, computing l = log max(p, eps) once per element: it adds l to the
// row's class sums and keeps the row's sum_c p l (N doubles); pass 2 reads P again for
// sum_c p Lbar, without logs. Backward: pass 1 sums g_i p_i per class, pass 2 writes the gradient
// (one log per element). Double backward: pass 1 sums three class tables, pass 2 writes the
// outputs (a log per element only for the gradient in g). Nothing of size N x C is allocated
// beyond the outputs: rows are processed in blocks of about kBlockElements elements with
// per-thread scratch of that size.
// Two schedules, chosen by the shapes and the class sizes (so fixed for a given input and thread
// count, and every run gives the same bits):
// - row slots: each thread sums a contiguous range of rows into its own K x C table, and the
//   tables are added in a fixed order. Best when the table is small next to P (few classes).
// - class groups: rows are grouped by class (a counting sort), each thread takes whole classes
//   and sums each class's rows in row order into one C-long double row, then writes the mean and
//   finishes the class's rows while they are in cache. No K x C scratch table at all, and every
//   thread works however large the table: best with many classes (K comparable with N).
#include "../kernels/class_pairwise_kl.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <numeric>
#include <type_traits>
#include <vector>

namespace gmk {
namespace {

#ifdef __FMA__
inline float mul_add(float a, float b, float c) { return __builtin_fmaf(a, b, c); }
#else
inline float mul_add(float a, float b, float c) { return a * b + c; }
#endif

// log x for normal x > 0 within 0.86 ulp, correctly rounded for 99.4% of the normal floats in
// (0, 1] (checked against double log), branch-free so that `omp simd` loops vectorize it:
// std::log only vectorizes under -ffast-math, and the log is most of the forward's arithmetic.
// x = 2^n z with z in [2/3, 4/3) by integer arithmetic on the bits, log(1 + r) = r + r^2 Q(r)
// with Q a degree-8 least-max-relative-error fit on |r| <= 1/3, and n ln 2 split in a 9-bit head
// (n ln2_hi exact) and a tail added with the small terms: a sum of many logs (a class mean)
// would otherwise carry the bias of a 1-ulp-off log for a quarter of its terms.
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
  const float exponent = static_cast<float>(n);
  const float tail = mul_add(q, r * r, exponent * -2.12194440e-4f);  // ln2 - ln2_hi
  return mul_add(exponent, 0.693359375f, r + tail);
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
// A slot's rows are handled in blocks of about this many elements: the logs run as one long
// vector loop over the block even when rows are short (C = 10 would otherwise leave every row to
// the scalar remainder of a 16-lane loop).
constexpr int64_t kBlockElements = 2048;
// Rows shorter than this are summed from a block of products by row_totals: a per-row vector
// reduction would spend more on its final horizontal sum than on the row. Longer rows keep their
// sums (and the backward its logs) in one fused loop per row, which moves less through L1.
constexpr int64_t kShortRow = 16;

struct RowSlots {
  int64_t num_samples;
  int64_t num_categories;
  int count;

  int64_t begin(int slot) const { return num_samples * slot / count; }
  int64_t block_rows() const { return std::max<int64_t>(1, kBlockElements / num_categories); }
  int64_t block_size() const { return block_rows() * num_categories; }
};

// Rows are visited in natural order, which streams P; the class rows of the tables are the random
// accesses, served from cache for tables up to a few million entries (K = C = 1000: 12 MB).
RowSlots make_slots(int64_t num_samples, int64_t num_classes, int64_t num_categories,
                    int requested_threads) {
  const int64_t table_bytes = num_classes * num_categories * int64_t(sizeof(double));
  const int64_t by_size = num_samples * num_categories / kMinElementsPerSlot;
  const int64_t by_memory = kTableBudgetBytes / table_bytes;
  return RowSlots{num_samples, num_categories,
                  static_cast<int>(std::max<int64_t>(
                      1, std::min<int64_t>({requested_threads, by_size, by_memory})))};
}

// Calls visit(slot, begin, end) for consecutive blocks of rows [begin, end), each slot on one
// thread, blocks of a slot in order.
template <typename Visit>
void for_each_block(const RowSlots& slots, Visit&& visit) {
#pragma omp parallel for num_threads(slots.count) schedule(static, 1)
  for (int slot = 0; slot < slots.count; ++slot) {
    const int64_t end = slots.begin(slot + 1), step = slots.block_rows();
    for (int64_t begin = slots.begin(slot); begin < end; begin += step)
      visit(slot, begin, std::min(end, begin + step));
  }
}

// out[r] = sum_c values[r C + c] for a block of short rows: each row is a short scalar chain, and
// consecutive rows' chains overlap out of order.
template <int kCategories>
void row_totals(const double* values, int64_t rows, int64_t runtime_categories, double* out) {
  const int64_t num_categories = kCategories ? kCategories : runtime_categories;
  for (int64_t r = 0; r < rows; ++r) {
    const double* row = values + r * num_categories;
    double total = 0;
    for (int64_t c = 0; c < num_categories; ++c) total += row[c];
    out[r] = total;
  }
}

// Rows grouped by class for the class-groups schedule: the rows of class k are
// order[begin[k]], ..., order[begin[k + 1] - 1], in increasing order (a stable counting sort,
// O(N + K)).
// Thread t owns the classes [thread_begin[t], thread_begin[t + 1]): whole classes, split where
// the running row count passes t N / T.
struct ClassGroups {
  std::vector<int64_t> begin;
  std::vector<int64_t> order;
  std::vector<int64_t> thread_begin;
  int threads;
};

ClassGroups group_by_class(const int64_t* labels, int64_t num_samples, int64_t num_classes,
                           int threads) {
  ClassGroups groups;
  groups.begin.assign(num_classes + 1, 0);
  for (int64_t i = 0; i < num_samples; ++i) ++groups.begin[labels[i] + 1];
  std::partial_sum(groups.begin.begin(), groups.begin.end(), groups.begin.begin());
  groups.order.resize(num_samples);
  std::vector<int64_t> next(groups.begin.begin(), groups.begin.end() - 1);
  for (int64_t i = 0; i < num_samples; ++i) groups.order[next[labels[i]]++] = i;
  groups.threads = threads;
  groups.thread_begin.resize(threads + 1);
  for (int t = 0; t <= threads; ++t) {
    const int64_t target = num_samples * t / threads;
    groups.thread_begin[t] =
        t == threads ? num_classes
                     : std::lower_bound(groups.begin.begin(), groups.begin.end() - 1, target) -
                           groups.begin.begin();
  }
  return groups;
}

// The class-groups schedule pays off when the row slots' tables (a K x C double table per
// thread, zeroed and added) would cost more than a pass over P: K > N / (8 T), e.g. every class
// of a few samples. It needs enough classes to share out: no thread may own more than 1.5 N / T
// rows (one huge class would leave the other threads idle); one thread always qualifies.
bool use_class_groups(const int64_t* labels, int64_t num_samples, int64_t num_categories,
                      int64_t num_classes, int requested_threads, ClassGroups* groups) {
  // As many threads as the row slots would wake for this much of P.
  const int threads = static_cast<int>(std::max<int64_t>(
      1, std::min<int64_t>(requested_threads, num_samples * num_categories / kMinElementsPerSlot)));
  if (num_classes * 8 * threads <= num_samples) return false;
  *groups = group_by_class(labels, num_samples, num_classes, threads);
  const int64_t fair_share = (num_samples + threads - 1) / threads;
  for (int t = 0; t < threads; ++t) {
    const int64_t rows = groups->begin[groups->thread_begin[t + 1]] -
                         groups->begin[groups->thread_begin[t]];
    if (2 * rows > 3 * fair_share) return false;
  }
  return true;
}

// Calls visit(k, thread) for every class k with rows, each thread's classes in order on that
// thread, and zeroes the table rows of the empty classes (with compact rows all at the end,
// owned by the last thread: they are shared out evenly instead). One parallel region: the two
// sets of rows are disjoint, so no barrier between them.
template <typename scalar_t, typename Visit>
void for_each_class(const ClassGroups& groups, int64_t num_classes, int64_t num_categories,
                    scalar_t* table, Visit&& visit) {
#pragma omp parallel for num_threads(groups.threads) schedule(static, 1)
  for (int t = 0; t < groups.threads; ++t) {
    for (int64_t k = groups.thread_begin[t]; k < groups.thread_begin[t + 1]; ++k)
      if (groups.begin[k] < groups.begin[k + 1]) visit(k, t);
    if (table == nullptr) continue;
    const int64_t last = num_classes * (t + 1) / groups.threads;
    for (int64_t k = num_classes * t / groups.threads; k < last; ++k)
      if (groups.begin[k] == groups.begin[k + 1])
        std::fill(table + k * num_categories, table + (k + 1) * num_categories, scalar_t(0));
  }
}

// mean[k, c] = (1 / n_k) sum_{i: labels_i = k} value_ic and count[k] = n_k, where
// add_rows(slot, begin, end, sums) adds the values of the block of rows [begin, end) into the
// slot's K x C table `sums` (row labels_i); it may do more, e.g. keep row totals. The sums are
// double: class means of float logs (|l| up to 28 for zero probabilities) summed in float would
// round at the ulp of the running sum, far above the logs' own rounding. Empty classes get 0.
template <typename AddRows>
void class_means(const RowSlots& slots, const int64_t* labels, int64_t num_classes,
                 int requested_threads, AddRows&& add_rows, double* mean, int64_t* count) {
  const int64_t num_categories = slots.num_categories;
  const int64_t table_size = num_classes * num_categories;
  std::vector<double> partial(slots.count * table_size, 0.0);
  std::vector<int64_t> partial_counts(slots.count * num_classes, 0);
  for_each_block(slots, [&](int slot, int64_t begin, int64_t end) {
    add_rows(slot, begin, end, partial.data() + slot * table_size);
    int64_t* counts = partial_counts.data() + slot * num_classes;
    for (int64_t i = begin; i < end; ++i) ++counts[labels[i]];
  });
  std::vector<double> inverse_count(num_classes);
  for (int64_t k = 0; k < num_classes; ++k) {
    count[k] = 0;
    for (int slot = 0; slot < slots.count; ++slot) count[k] += partial_counts[slot * num_classes + k];
    inverse_count[k] = count[k] ? 1.0 / static_cast<double>(count[k]) : 0.0;
  }
#pragma omp parallel for num_threads(requested_threads) schedule(static) if (table_size > 16384)
  for (int64_t idx = 0; idx < table_size; ++idx) {
    double total = partial[idx];
    for (int slot = 1; slot < slots.count; ++slot) total += partial[slot * table_size + idx];
    mean[idx] = total * inverse_count[idx / num_categories];
  }
}

// grad_jc = g_j (l_jc + m_jc - Lbar_{k_j c}) - m_jc W_{k_j c} / p_jc for one row, m = [p >= eps]
// (torch.clamp passes the gradient at p = eps); the logs come from `row_logs` or, when it is
// null, are computed inline.
template <typename scalar_t>
inline void gradient_row(const scalar_t* row, const scalar_t* row_logs, const scalar_t* class_mean,
                         const double* weighted, double grad, scalar_t eps, int64_t num_categories,
                         scalar_t* out) {
  if (row_logs != nullptr) {
#pragma omp simd
    for (int64_t c = 0; c < num_categories; ++c) {
      const scalar_t prob = row[c], clamped = prob > eps ? prob : eps;
      const double mask = prob >= eps ? 1.0 : 0.0;
      out[c] = static_cast<scalar_t>(
          grad * (static_cast<double>(row_logs[c]) + mask - static_cast<double>(class_mean[c])) -
          mask * weighted[c] / static_cast<double>(clamped));
    }
    return;
  }
#pragma omp simd
  for (int64_t c = 0; c < num_categories; ++c) {
    const scalar_t prob = row[c], clamped = prob > eps ? prob : eps;
    const double mask = prob >= eps ? 1.0 : 0.0;
    out[c] = static_cast<scalar_t>(
        grad * (static_cast<double>(clamped_log(prob, eps)) + mask -
                static_cast<double>(class_mean[c])) -
        mask * weighted[c] / static_cast<double>(clamped));
  }
}

// The forward on the class-groups schedule. Per class: one pass over its rows takes the logs
// (into a C-long buffer), adds them to the class sum and keeps each row's sum_c p l; the class
// mean is written, then a second pass over the same rows (in cache unless the class is large)
// takes sum_c p Lbar. A sample alone in its class gets 0 and its logs as its table row.
template <typename scalar_t>
void forward_by_class(const ClassPairwiseKlParams<scalar_t>& p, const ClassGroups& groups) {
  const int64_t num_categories = p.num_categories;
  const scalar_t eps = static_cast<scalar_t>(p.eps);
  std::vector<double> self_term(p.num_samples);  // sum_c p_ic l_ic
  std::vector<double> sums(groups.threads * num_categories);
  std::vector<scalar_t> log_rows(groups.threads * num_categories);
  auto finish_class = [&](int64_t k, int thread) {
    const int64_t first = groups.begin[k], last = groups.begin[k + 1];
    scalar_t* class_mean = p.class_mean_log + k * num_categories;
    if (last - first == 1) {
      const int64_t i = groups.order[first];
      const scalar_t* row = p.probs + i * num_categories;
#pragma omp simd
      for (int64_t c = 0; c < num_categories; ++c) class_mean[c] = clamped_log(row[c], eps);
      p.kl[i] = scalar_t(0);
      return;
    }
    double* sum = sums.data() + thread * num_categories;
    scalar_t* logs = log_rows.data() + thread * num_categories;
    std::fill(sum, sum + num_categories, 0.0);
    for (int64_t position = first; position < last; ++position) {
      const int64_t i = groups.order[position];
      const scalar_t* row = p.probs + i * num_categories;
#pragma omp simd
      for (int64_t c = 0; c < num_categories; ++c) logs[c] = clamped_log(row[c], eps);
      double self = 0;
#pragma omp simd reduction(+ : self)
      for (int64_t c = 0; c < num_categories; ++c) {
        sum[c] += logs[c];
        self += static_cast<double>(row[c]) * static_cast<double>(logs[c]);
      }
      self_term[i] = self;
    }
    const double inverse_count = 1.0 / static_cast<double>(last - first);
#pragma omp simd
    for (int64_t c = 0; c < num_categories; ++c) {
      sum[c] *= inverse_count;
      class_mean[c] = static_cast<scalar_t>(sum[c]);
    }
    for (int64_t position = first; position < last; ++position) {
      const int64_t i = groups.order[position];
      const scalar_t* row = p.probs + i * num_categories;
      double cross = 0;  // sum_c p_ic Lbar_kc
#pragma omp simd reduction(+ : cross)
      for (int64_t c = 0; c < num_categories; ++c) cross += static_cast<double>(row[c]) * sum[c];
      p.kl[i] = static_cast<scalar_t>(self_term[i] - cross);
    }
  };
  for_each_class(groups, p.num_classes, num_categories, p.class_mean_log, finish_class);
}

// The backward on the class-groups schedule: per class, W_k from one pass over its rows (a
// C-long double row), then the gradient rows.
template <typename scalar_t>
void backward_by_class(const ClassPairwiseKlBackwardParams<scalar_t>& p,
                       const ClassGroups& groups) {
  const int64_t num_categories = p.num_categories;
  const scalar_t eps = static_cast<scalar_t>(p.eps);
  const bool short_rows = num_categories < kShortRow;
  std::vector<double> weighted_rows(groups.threads * num_categories);
  std::vector<scalar_t> log_rows(short_rows ? groups.threads * num_categories : 0);
  auto finish_class = [&](int64_t k, int thread) {
    const int64_t first = groups.begin[k], last = groups.begin[k + 1];
    double* weighted = weighted_rows.data() + thread * num_categories;  // W_k
    std::fill(weighted, weighted + num_categories, 0.0);
    for (int64_t position = first; position < last; ++position) {
      const int64_t i = groups.order[position];
      const scalar_t* row = p.probs + i * num_categories;
      const double grad = static_cast<double>(p.grad_kl[i]);
#pragma omp simd
      for (int64_t c = 0; c < num_categories; ++c)
        weighted[c] += grad * static_cast<double>(row[c]);
    }
    const double inverse_count = 1.0 / static_cast<double>(last - first);
#pragma omp simd
    for (int64_t c = 0; c < num_categories; ++c) weighted[c] *= inverse_count;
    scalar_t* logs = short_rows ? log_rows.data() + thread * num_categories : nullptr;
    for (int64_t position = first; position < last; ++position) {
      const int64_t i = groups.order[position];
      const scalar_t* row = p.probs + i * num_categories;
      if (short_rows) {
        for (int64_t c = 0; c < num_categories; ++c) logs[c] = clamped_log(row[c], eps);
      }
      gradient_row(row, logs, p.class_mean_log + k * num_categories, weighted,
                   static_cast<double>(p.grad_kl[i]), eps, num_categories,
                   p.grad_probs + i * num_categories);
    }
  };
  for_each_class(groups, p.num_classes, num_categories, static_cast<scalar_t*>(nullptr),
                 finish_class);
}

}  // namespace

void class_pairwise_kl_table_rows_cpu(const int64_t* labels, int64_t num_samples,
                                      int64_t num_classes, int64_t* rows) {
  if (num_classes <= std::max<int64_t>(num_samples, 1)) {
    std::copy(labels, labels + num_samples, rows);
    return;
  }
  // Ranks: dense when a K-long array is cheap next to the rows; otherwise the distinct labels
  // sorted.
  if (num_classes <= 8 * num_samples + 65536) {
    std::vector<int64_t> row_of_class(num_classes, 0);
    for (int64_t i = 0; i < num_samples; ++i) row_of_class[labels[i]] = 1;
    int64_t present = 0;
    for (int64_t k = 0; k < num_classes; ++k) {
      const int64_t seen = row_of_class[k];
      row_of_class[k] = present;
      present += seen;
    }
    for (int64_t i = 0; i < num_samples; ++i) rows[i] = row_of_class[labels[i]];
    return;
  }
  std::vector<int64_t> classes(labels, labels + num_samples);
  std::sort(classes.begin(), classes.end());
  classes.erase(std::unique(classes.begin(), classes.end()), classes.end());
  for (int64_t i = 0; i < num_samples; ++i)
    rows[i] = std::lower_bound(classes.begin(), classes.end(), labels[i]) - classes.begin();
}

// Runs run(std::integral_constant<int, C>) with C = the category count where it is 2, 3 or 4,
// else C = 0 (the count is read at run time). With C a constant the per-row loops unroll: at
// C = 2 the generic loops, each a vector loop with its prologue and remainder, cost about 50
// cycles a row, more than the logs.
template <typename Run>
void with_category_count(int64_t num_categories, Run&& run) {
  switch (num_categories) {
    case 2: return run(std::integral_constant<int, 2>{});
    case 3: return run(std::integral_constant<int, 3>{});
    case 4: return run(std::integral_constant<int, 4>{});
    default: return run(std::integral_constant<int, 0>{});
  }
}

template <typename scalar_t, int kCategories>
void forward_by_rows(const ClassPairwiseKlParams<scalar_t>& p);

template <typename scalar_t, int kCategories>
void backward_by_rows(const ClassPairwiseKlBackwardParams<scalar_t>& p);

template <typename scalar_t>
void class_pairwise_kl_forward_cpu(const ClassPairwiseKlParams<scalar_t>& p) {
  {
    ClassGroups groups;
    if (use_class_groups(p.labels, p.num_samples, p.num_categories, p.num_classes, p.num_threads,
                         &groups))
      return forward_by_class(p, groups);
  }
  with_category_count(p.num_categories, [&](auto categories) {
    forward_by_rows<scalar_t, decltype(categories)::value>(p);
  });
}

// The forward on the row-slots schedule; kCategories: C where known at compile time, else 0.
template <typename scalar_t, int kCategories>
void forward_by_rows(const ClassPairwiseKlParams<scalar_t>& p) {
  const int64_t num_categories = kCategories ? kCategories : p.num_categories;
  const scalar_t eps = static_cast<scalar_t>(p.eps);
  const RowSlots slots = make_slots(p.num_samples, p.num_classes, num_categories, p.num_threads);
  const int64_t block_size = slots.block_size();
  const bool short_rows = num_categories < kShortRow;
  std::vector<scalar_t> log_blocks(slots.count * block_size);
  std::vector<double> product_blocks(short_rows ? slots.count * block_size : 0);
  std::vector<double> mean_log(p.num_classes * num_categories);
  std::vector<int64_t> count(p.num_classes);
  std::unique_ptr<double[]> self_term(new double[p.num_samples]);  // sum_c p_ic l_ic
  // The self and cross terms are summed in double: kl = self - cross can cancel.
  class_means(
      slots, p.labels, p.num_classes, p.num_threads,
      [&](int slot, int64_t begin, int64_t end, double* sums) {
        // Rows [begin, end) are contiguous in P: their logs in one vector loop.
        const scalar_t* block = p.probs + begin * num_categories;
        scalar_t* logs = log_blocks.data() + slot * block_size;
        const int64_t size = (end - begin) * num_categories;
#pragma omp simd
        for (int64_t idx = 0; idx < size; ++idx) logs[idx] = clamped_log(block[idx], eps);
        if (short_rows) {
          for (int64_t i = begin; i < end; ++i) {
            const int64_t k = p.labels[i];
            const scalar_t* row_logs = logs + (i - begin) * num_categories;
            double* class_sums = sums + k * num_categories;
            for (int64_t c = 0; c < num_categories; ++c) class_sums[c] += row_logs[c];
          }
          double* products = product_blocks.data() + slot * block_size;
#pragma omp simd
          for (int64_t idx = 0; idx < size; ++idx)
            products[idx] = static_cast<double>(block[idx]) * static_cast<double>(logs[idx]);
          row_totals<kCategories>(products, end - begin, num_categories, self_term.get() + begin);
          return;
        }
        for (int64_t i = begin; i < end; ++i) {
          const int64_t k = p.labels[i];
          const scalar_t* row = p.probs + i * num_categories;
          const scalar_t* row_logs = logs + (i - begin) * num_categories;
          double* class_sums = sums + k * num_categories;
          double self = 0;
#pragma omp simd reduction(+ : self)
          for (int64_t c = 0; c < num_categories; ++c) {
            class_sums[c] += row_logs[c];
            self += static_cast<double>(row[c]) * static_cast<double>(row_logs[c]);
          }
          self_term[i] = self;
        }
      },
      mean_log.data(), count.data());
  for (size_t idx = 0; idx < mean_log.size(); ++idx)
    p.class_mean_log[idx] = static_cast<scalar_t>(mean_log[idx]);
  // A sample alone in its class is at KL 0 from itself; self - cross would leave rounding.
  auto write_kl = [&](int64_t i, double cross) {
    p.kl[i] = count[p.labels[i]] == 1 ? scalar_t(0) : static_cast<scalar_t>(self_term[i] - cross);
  };
  for_each_block(slots, [&](int slot, int64_t begin, int64_t end) {
    if (short_rows) {
      double* products = product_blocks.data() + slot * block_size;
      for (int64_t i = begin; i < end; ++i) {
        const scalar_t* row = p.probs + i * num_categories;
        const double* class_mean = mean_log.data() + p.labels[i] * num_categories;
        double* row_products = products + (i - begin) * num_categories;
        for (int64_t c = 0; c < num_categories; ++c)
          row_products[c] = static_cast<double>(row[c]) * class_mean[c];
      }
      double cross[kBlockElements];  // block_rows() <= kBlockElements
      row_totals<kCategories>(products, end - begin, num_categories, cross);
      for (int64_t i = begin; i < end; ++i) write_kl(i, cross[i - begin]);
      return;
    }
    for (int64_t i = begin; i < end; ++i) {
      const scalar_t* row = p.probs + i * num_categories;
      const double* class_mean = mean_log.data() + p.labels[i] * num_categories;
      double cross = 0;  // sum_c p_ic Lbar_kc
#pragma omp simd reduction(+ : cross)
      for (int64_t c = 0; c < num_categories; ++c)
        cross += static_cast<double>(row[c]) * class_mean[c];
      write_kl(i, cross);
    }
  });
}

template <typename scalar_t>
void class_pairwise_kl_backward_cpu(const ClassPairwiseKlBackwardParams<scalar_t>& p) {
  {
    ClassGroups groups;
    if (use_class_groups(p.labels, p.num_samples, p.num_categories, p.num_classes, p.num_threads,
                         &groups))
      return backward_by_class(p, groups);
  }
  with_category_count(p.num_categories, [&](auto categories) {
    backward_by_rows<scalar_t, decltype(categories)::value>(p);
  });
}

// The backward on the row-slots schedule; kCategories as in forward_by_rows.
template <typename scalar_t, int kCategories>
void backward_by_rows(const ClassPairwiseKlBackwardParams<scalar_t>& p) {
  const int64_t num_categories = kCategories ? kCategories : p.num_categories;
  const scalar_t eps = static_cast<scalar_t>(p.eps);
  const RowSlots slots = make_slots(p.num_samples, p.num_classes, num_categories, p.num_threads);
  // W and the gradient in double: the two paths cancel (exactly, for a sample alone in its
  // class: W / p = g_j, l - Lbar = 0), and products of floats are exact in double.
  std::vector<double> weighted_mean(p.num_classes * num_categories);  // W
  std::vector<int64_t> count(p.num_classes);
  class_means(
      slots, p.labels, p.num_classes, p.num_threads,
      [&](int, int64_t begin, int64_t end, double* sums) {
        for (int64_t i = begin; i < end; ++i) {
          const scalar_t* row = p.probs + i * num_categories;
          const double grad = static_cast<double>(p.grad_kl[i]);
          double* class_sums = sums + p.labels[i] * num_categories;
#pragma omp simd
          for (int64_t c = 0; c < num_categories; ++c)
            class_sums[c] += grad * static_cast<double>(row[c]);
        }
      },
      weighted_mean.data(), count.data());
  const int64_t block_size = slots.block_size();
  const bool short_rows = num_categories < kShortRow;
  std::vector<scalar_t> log_blocks(short_rows ? slots.count * block_size : 0);
  for_each_block(slots, [&](int slot, int64_t begin, int64_t end) {
    // Short rows take their logs from one vector loop over the block, long rows inline.
    scalar_t* logs = short_rows ? log_blocks.data() + slot * block_size : nullptr;
    if (short_rows) {
      const scalar_t* block = p.probs + begin * num_categories;
      const int64_t size = (end - begin) * num_categories;
#pragma omp simd
      for (int64_t idx = 0; idx < size; ++idx) logs[idx] = clamped_log(block[idx], eps);
    }
    for (int64_t i = begin; i < end; ++i) {
      const int64_t k = p.labels[i];
      gradient_row(p.probs + i * num_categories,
                   short_rows ? logs + (i - begin) * num_categories : nullptr,
                   p.class_mean_log + k * num_categories,
                   weighted_mean.data() + k * num_categories, static_cast<double>(p.grad_kl[i]),
                   eps, num_categories, p.grad_probs + i * num_categories);
    }
  });
}

// The double backward on the row-slots schedule (whatever the class sizes: it runs only for a
// gradient penalty, where one pass more than the first order is the cost to beat). Pass 1 sums
// the three class tables [W | U | V] of csrc/kernels/class_pairwise_kl.h side by side in one
// K x 3C table per slot; pass 2 writes each row's outputs. All in double, as the backward:
// for a sample alone in its class the terms cancel.
template <typename scalar_t>
void class_pairwise_kl_double_backward_cpu(const ClassPairwiseKlDoubleBackwardParams<scalar_t>& p) {
  const int64_t num_categories = p.num_categories, width = 3 * num_categories;
  const scalar_t eps = static_cast<scalar_t>(p.eps);
  const RowSlots table_slots = make_slots(p.num_samples, p.num_classes, width, p.num_threads);
  std::vector<double> means(p.num_classes * width);  // row k: W_k, U_k, V_k
  std::vector<int64_t> count(p.num_classes);
  class_means(
      table_slots, p.labels, p.num_classes, p.num_threads,
      [&](int, int64_t begin, int64_t end, double* sums) {
        for (int64_t i = begin; i < end; ++i) {
          const scalar_t* row = p.probs + i * num_categories;
          const scalar_t* upstream = p.grad_grad_probs + i * num_categories;
          const double grad = static_cast<double>(p.grad_kl[i]);
          double* weighted = sums + p.labels[i] * width;
          double* upstream_weighted = weighted + num_categories;
          double* upstream_scaled = upstream_weighted + num_categories;
#pragma omp simd
          for (int64_t c = 0; c < num_categories; ++c) {
            const scalar_t prob = row[c], clamped = prob > eps ? prob : eps;
            const double v = static_cast<double>(upstream[c]);
            weighted[c] += grad * static_cast<double>(prob);
            upstream_weighted[c] += grad * v;
            upstream_scaled[c] += prob >= eps ? v / static_cast<double>(clamped) : 0.0;
          }
        }
      },
      means.data(), count.data());
  const RowSlots slots = make_slots(p.num_samples, p.num_classes, num_categories, p.num_threads);
  for_each_block(slots, [&](int, int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t k = p.labels[i];
      const scalar_t* row = p.probs + i * num_categories;
      const scalar_t* upstream = p.grad_grad_probs + i * num_categories;
      const double* weighted = means.data() + k * width;                // W_k
      const double* upstream_weighted = weighted + num_categories;      // U_k
      const double* upstream_scaled = upstream_weighted + num_categories;  // V_k
      const double grad = static_cast<double>(p.grad_kl[i]);
      if (p.grad_probs != nullptr) {
        scalar_t* out = p.grad_probs + i * num_categories;
#pragma omp simd
        for (int64_t c = 0; c < num_categories; ++c) {
          const scalar_t prob = row[c], clamped = prob > eps ? prob : eps;
          const double v = static_cast<double>(upstream[c]);
          const double inverse = prob >= eps ? 1.0 / static_cast<double>(clamped) : 0.0;
          out[c] = static_cast<scalar_t>(
              inverse * (grad * v - upstream_weighted[c] + v * weighted[c] * inverse) -
              grad * upstream_scaled[c]);
        }
      }
      if (p.grad_grad_kl != nullptr) {
        const scalar_t* class_mean = p.class_mean_log + k * num_categories;
        double total = 0;
#pragma omp simd reduction(+ : total)
        for (int64_t c = 0; c < num_categories; ++c) {
          const scalar_t prob = row[c];
          const double mask = prob >= eps ? 1.0 : 0.0;
          total += static_cast<double>(upstream[c]) *
                       (static_cast<double>(clamped_log(prob, eps)) + mask -
                        static_cast<double>(class_mean[c])) -
                   static_cast<double>(prob) * upstream_scaled[c];
        }
        p.grad_grad_kl[i] = static_cast<scalar_t>(total);
      }
    }
  });
}

template void class_pairwise_kl_forward_cpu<float>(const ClassPairwiseKlParams<float>&);
template void class_pairwise_kl_forward_cpu<double>(const ClassPairwiseKlParams<double>&);
template void class_pairwise_kl_backward_cpu<float>(const ClassPairwiseKlBackwardParams<float>&);
template void class_pairwise_kl_backward_cpu<double>(const ClassPairwiseKlBackwardParams<double>&);
template void class_pairwise_kl_double_backward_cpu<float>(
    const ClassPairwiseKlDoubleBackwardParams<float>&);
template void class_pairwise_kl_double_backward_cpu<double>(
    const ClassPairwiseKlDoubleBackwardParams<double>&);

}  // namespace gmk

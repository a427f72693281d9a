// class_pairwise_kl in O(N C): for sample i of class k = labels_i (n_k samples in class k),
//   out_i = mean_{j: labels_j = k} KL(p_i || p_j) = sum_c p_ic l_ic - sum_c p_ic Lbar_kc,
//   l = log max(p, eps),   Lbar_kc = (1 / n_k) sum_{j: labels_j = k} l_jc,
// exact because KL(p_i || p_j) is linear in l_j. Lbar is the op's second output
// ("class_mean_log"), saved for the backward, in a compact table of S = min(max(N, 1), K) rows
// (a bound fixed by the shapes, for fake tensors): when K <= max(N, 1), row k is class k; when
// K > N, one row per class present in the order of the class ids, then zero rows. The op's third
// output ("rows", (N,) int64) is the table row of each sample's class. With K = C = 10^4 and
// N = 10^3 a (K, C) table would be 400 MB for a 40 MB input. The kernels below see the rows as
// their labels and num_classes = S; a class's id does not enter the math, only which samples
// share it.
// Backward, g the incoming gradient and m = [p >= eps] the clamp's gradient mask:
//   grad_jc = g_j (l_jc + m_jc - Lbar_{k_j c}) - m_jc W_{k_j c} / p_jc,
//   W_kc = (1 / n_k) sum_{i: labels_i = k} g_i p_ic            (the path through Lbar).
// Double backward (CPU), v the incoming gradient of grad (N x C), q = max(p, eps), and class means
//   W_kc = mean_{i in k} g_i p_ic,  U_kc = mean_{i in k} g_i v_ic,  V_kc = mean_{i in k} m_ic v_ic / q_ic:
//   d<grad, v>/dg_j  = sum_c v_jc (l_jc + m_jc - Lbar_{k_j c}) - p_jc V_{k_j c},
//   d<grad, v>/dp_jc = m_jc / q_jc (g_j v_jc - U_{k_j c} + v_jc W_{k_j c} / q_jc) - g_j V_{k_j c}.
// Empty classes get Lbar = 0 (no row reads them). Every reduction runs in a fixed order: no
// float atomics, results identical run to run (CPU: for a fixed thread count).
// All tensors are contiguous row-major; no torch types appear here.
#pragma once
#include <cstddef>
#include <cstdint>

#include "cuda_status.h"

namespace gmk {

template <typename scalar_t>
struct ClassPairwiseKlParams {
  const scalar_t* probs;        // (num_samples, num_categories), rows on the simplex
  const int64_t* labels;        // (num_samples,), values in [0, num_classes): the table rows
  scalar_t* kl;                 // (num_samples,), written
  scalar_t* class_mean_log;     // (num_classes, num_categories), written: Lbar, 0 for empty rows
  int64_t num_samples;          // N
  int64_t num_categories;       // C, the columns of probs
  int64_t num_classes;          // the table's rows (S)
  double eps;                   // clamp inside the log, >= the dtype's smallest normal
  int num_threads;              // CPU only
  void* workspace;              // CUDA only: class_pairwise_kl_cuda_workspace_bytes() bytes
};

template <typename scalar_t>
struct ClassPairwiseKlBackwardParams {
  const scalar_t* grad_kl;         // (num_samples,)
  const scalar_t* probs;           // (num_samples, num_categories)
  const int64_t* labels;           // (num_samples,)
  const scalar_t* class_mean_log;  // (num_classes, num_categories): Lbar from the forward
  scalar_t* grad_probs;            // (num_samples, num_categories), written
  int64_t num_samples;
  int64_t num_categories;
  int64_t num_classes;
  double eps;
  int num_threads;
  void* workspace;
};

template <typename scalar_t>
struct ClassPairwiseKlDoubleBackwardParams {
  const scalar_t* grad_grad_probs; // (num_samples, num_categories): v
  const scalar_t* grad_kl;         // (num_samples,)
  const scalar_t* probs;           // (num_samples, num_categories)
  const int64_t* labels;           // (num_samples,)
  const scalar_t* class_mean_log;  // (num_classes, num_categories): Lbar from the forward
  scalar_t* grad_grad_kl;          // (num_samples,), written; null when not wanted
  scalar_t* grad_probs;            // (num_samples, num_categories), written; null when not wanted
  int64_t num_samples;
  int64_t num_categories;
  int64_t num_classes;
  double eps;
  int num_threads;
};

// rows[i], the compact table row of sample i's class (labels in [0, num_classes), checked by the
// caller): labels[i] when the table holds every class (K <= max(N, 1)), else the number of
// distinct classes in labels below labels[i]. O(N + K) time, or O(N log N) when K is far above N.
void class_pairwise_kl_table_rows_cpu(const int64_t* labels, int64_t num_samples,
                                      int64_t num_classes, int64_t* rows);

template <typename scalar_t>
void class_pairwise_kl_forward_cpu(const ClassPairwiseKlParams<scalar_t>& params);
template <typename scalar_t>
void class_pairwise_kl_backward_cpu(const ClassPairwiseKlBackwardParams<scalar_t>& params);
template <typename scalar_t>
void class_pairwise_kl_double_backward_cpu(
    const ClassPairwiseKlDoubleBackwardParams<scalar_t>& params);

// CUDA (csrc/cuda/class_pairwise_kl.cu). Rows are grouped by class with a stable radix sort, so
// the per-class sums run over fixed chunks in a fixed order; the caller provides the scratch
// memory (sort buffers, chunk partial sums). `stream` is a cudaStream_t, the result says whether
// every launch and library call succeeded (cuda_status.h). Labels outside [0, num_classes) are
// not read as classes: their rows get NaN.
std::size_t class_pairwise_kl_cuda_workspace_bytes(int64_t num_samples, int64_t num_categories,
                                                   int64_t num_classes, std::size_t scalar_size);
template <typename scalar_t>
CudaStatus class_pairwise_kl_forward_cuda(const ClassPairwiseKlParams<scalar_t>& params,
                                          void* stream);
template <typename scalar_t>
CudaStatus class_pairwise_kl_backward_cuda(const ClassPairwiseKlBackwardParams<scalar_t>& params,
                                           void* stream);

}  // namespace gmk

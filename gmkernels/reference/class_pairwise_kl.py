"""Reference class_pairwise_kl, the literal pairwise formula (the ground truth the fused O(N C)
identity is tested against; O(N^2 C) time, for small N):

    out_i = mean_{j: labels_j = labels_i} KL(p_i || p_j),   KL = sum_c p_ic (l_ic - l_jc),
    l = log max(p, eps)   (j = i included, contributing 0).

``class_pairwise_kl_by_class_means`` is the same quantity by the identity, in plain eager
PyTorch: the best O(N C) formulation without a fused kernel (the benchmarks' baseline).
"""
from __future__ import annotations

import torch

# Rows of the N x N pairwise table computed at once: memory stays O(rows x N).
_PAIRWISE_BLOCK_ELEMENTS = 1 << 22


def class_pairwise_kl(probs: torch.Tensor, labels: torch.Tensor, eps: float) -> torch.Tensor:
    log_probs = torch.log(torch.clamp(probs, min=eps))
    self_term = (probs * log_probs).sum(1)                 # sum_c p_ic l_ic
    num_samples = probs.shape[0]
    block = max(1, _PAIRWISE_BLOCK_ELEMENTS // max(1, num_samples))
    rows = []
    for start in range(0, num_samples, block):
        stop = min(num_samples, start + block)
        cross = probs[start:stop] @ log_probs.T            # [i, j] = sum_c p_ic l_jc
        kl = self_term[start:stop, None] - cross
        same_class = (labels[start:stop, None] == labels[None, :]).to(probs.dtype)
        rows.append((kl * same_class).sum(1) / same_class.sum(1))
    return torch.cat(rows) if rows else self_term


def class_pairwise_kl_by_class_means(probs: torch.Tensor, labels: torch.Tensor, eps: float,
                                     num_classes: int | None = None) -> torch.Tensor:
    """out_i = sum_c p_ic (l_ic - Lbar_{k_i c}) with Lbar_k the mean of l over class k
    (``index_add_`` class sums, then gather and dot): exact, O(N C), but with N x C temporaries."""
    num_classes = probs.shape[1] if num_classes is None else num_classes
    log_probs = torch.log(torch.clamp(probs, min=eps))
    sums = log_probs.new_zeros(num_classes, probs.shape[1]).index_add_(0, labels, log_probs)
    counts = probs.new_zeros(num_classes).index_add_(0, labels, probs.new_ones(labels.shape[0]))
    class_mean_log = sums / counts.clamp(min=1)[:, None]
    return (probs * (log_probs - class_mean_log[labels])).sum(1)

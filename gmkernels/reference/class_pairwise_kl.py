"""Reference class_pairwise_kl, the literal pairwise formula (the ground truth the fused O(N C)
identity is tested against; N x N memory, for small N):

    out_i = mean_{j: labels_j = labels_i} KL(p_i || p_j),   KL = sum_c p_ic (l_ic - l_jc),
    l = log max(p, eps)   (j = i included, contributing 0)."""
from __future__ import annotations

import torch


def class_pairwise_kl(probs: torch.Tensor, labels: torch.Tensor, eps: float) -> torch.Tensor:
    log_probs = torch.log(torch.clamp(probs, min=eps))
    self_term = (probs * log_probs).sum(1)                 # sum_c p_ic l_ic
    cross = probs @ log_probs.T                            # [i, j] = sum_c p_ic l_jc
    kl = self_term[:, None] - cross
    same_class = (labels[:, None] == labels[None, :]).to(probs.dtype)
    return (kl * same_class).sum(1) / same_class.sum(1)

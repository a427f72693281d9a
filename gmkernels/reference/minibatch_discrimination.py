"""Reference minibatch discrimination (Salimans et al. 2016), literal N x N x B x C form:

    o_ib = sum_{j != i} exp(-||M_ib - M_jb||_1)

The self term (exactly 1) is masked out rather than subtracted, so no precision is lost; the L1
subgradient at ties is 0 (torch.abs)."""
from __future__ import annotations

import torch


def minibatch_discrimination(M: torch.Tensor) -> torch.Tensor:
    l1 = (M[:, None, :, :] - M[None, :, :, :]).abs().sum(-1)          # (N, N, B)
    self_pair = torch.eye(M.shape[0], dtype=torch.bool, device=M.device)[:, :, None]
    return torch.exp(-l1).masked_fill(self_pair, 0.0).sum(1)

"""Reference Gaussian-mixture log-likelihood, literal and float64-safe:

    log p(x_b) = logsumexp_i [ log w_i + log N(x_b; mean_i, diag(var_i)) ]

with var_i broadcast from a 0-dim, (C,), (C, d) or (1, d) tensor. Builds the B x C x d
difference tensor on purpose: it is the readable ground truth, not the fast path."""
from __future__ import annotations

import math

import torch


def variance_table(var: torch.Tensor, num_components: int, dim: int) -> torch.Tensor:
    """var as a (C, d) table."""
    if var.dim() == 0:
        return var.expand(num_components, dim)
    if var.dim() == 1:
        return var[:, None].expand(num_components, dim)
    return var.expand(num_components, dim)


def component_log_densities(x: torch.Tensor, means: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """(B, C) table of log N(x_b; mean_i, diag(var_i))."""
    var_cd = variance_table(var, means.shape[0], means.shape[1])
    squared = (x[:, None, :] - means[None, :, :]) ** 2 / var_cd[None]
    log_norm = torch.log(2 * math.pi * var_cd).sum(-1)
    return -0.5 * (squared.sum(-1) + log_norm[None, :])


def mixture_log_likelihood(x: torch.Tensor, means: torch.Tensor, var: torch.Tensor,
                           log_weights: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(component_log_densities(x, means, var) + log_weights[None, :], dim=1)

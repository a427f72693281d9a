"""Reference mixture_sample: z[s] = mu[c_s] + S[c_s] eps[s], with eps from the shared Philox
stream (gmkernels/reference/philox.py) so it reproduces the fused kernels' z for the same seed."""
from __future__ import annotations

import torch

from .philox import normal_rows


def mixture_sample(mu: torch.Tensor, scale: torch.Tensor, component: torch.Tensor,
                   seed: torch.Tensor) -> torch.Tensor:
    num_samples, dim = component.shape[0], mu.shape[1]
    eps = normal_rows(seed, num_samples, dim, device=mu.device).to(mu.dtype)
    return mixture_sample_given_eps(mu, scale, component, eps)


def mixture_sample_given_eps(mu: torch.Tensor, scale: torch.Tensor, component: torch.Tensor,
                             eps: torch.Tensor) -> torch.Tensor:
    """The reparameterization for a given eps (n, K); scale (N, K) diagonal or (N, K, K) read as
    lower-triangular (the upper triangle gets zero gradient)."""
    if scale.dim() == 2:
        return mu[component] + scale[component] * eps
    scale_tril = torch.tril(scale)[component]
    return mu[component] + (scale_tril @ eps.unsqueeze(-1)).squeeze(-1)

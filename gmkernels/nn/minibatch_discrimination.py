"""MinibatchDiscrimination: the layer of Salimans et al. (2016) on the fused op."""
from __future__ import annotations

import torch
from torch import nn

from ..ops.minibatch_discrimination import minibatch_discrimination


class MinibatchDiscrimination(nn.Module):
    """x (N, in_features) -> cat([x, o], 1) with o_b = sum_{j != i} exp(-||M_ib - M_jb||_1) + b_b
    and M = (x T).view(N, B, C), as improved-gan's ``MinibatchLayer``: T ~ N(0, init_std) with
    init_std = 0.05, bias initialised to -1, self term excluded (``include_self=True`` adds it
    back: +1, as DeLiGAN's MNIST variant). The original's weight normalisation and data-dependent
    init are left out."""

    def __init__(self, in_features: int, num_kernels: int = 100, kernel_dim: int = 5, *,
                 include_self: bool = False, bias: bool = True, init_std: float = 0.05):
        super().__init__()
        if min(in_features, num_kernels, kernel_dim) < 1:
            raise ValueError("in_features, num_kernels and kernel_dim must be >= 1")
        self.in_features, self.num_kernels, self.kernel_dim = in_features, num_kernels, kernel_dim
        self.include_self = include_self
        self.T = nn.Parameter(torch.randn(in_features, num_kernels * kernel_dim) * init_std)
        self.bias = nn.Parameter(torch.full((num_kernels,), -1.0)) if bias else None

    @property
    def out_features(self) -> int:
        return self.in_features + self.num_kernels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"x must be (N, {self.in_features}), got shape {tuple(x.shape)}")
        M = (x @ self.T).view(x.shape[0], self.num_kernels, self.kernel_dim)
        features = minibatch_discrimination(M)
        if self.include_self:
            features = features + 1
        if self.bias is not None:
            features = features + self.bias
        return torch.cat([x, features], 1)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, num_kernels={self.num_kernels}, "
                f"kernel_dim={self.kernel_dim}, include_self={self.include_self}")

"""MinibatchDiscrimination: the layer of Salimans et al. (2016) on the fused op."""
from __future__ import annotations

import torch
from torch import nn

from ..ops.minibatch_discrimination import minibatch_discrimination


class MinibatchDiscrimination(nn.Module):
    """x (N, in_features) -> cat([x, o], 1), o_ib = sum_{j != i} exp(-||M_ib - M_jb||_1) + b_b,
    M = (x T).view(N, num_kernels, kernel_dim), as improved-gan's ``MinibatchLayer``
    (openai/improved-gan ``mnist_svhn_cifar10/nn.py``).

    * Initialisation as improved-gan: T ~ N(0, init_std) with init_std = 0.05 (lasagne's
      ``Normal(0.05)``), bias b = -1. The original also reparameterises T with weight
      normalisation and a data-dependent init of its scale; those are left out (wrap T with
      ``torch.nn.utils.parametrizations.weight_norm`` if wanted). torchgan uses N(0, 1) instead.
    * The self term exp(0) = 1 is excluded (improved-gan adds 1e6 to the diagonal distance);
      ``include_self=True`` keeps it (+1, as DeLiGAN's MNIST variant and torchgan before its -1).
    * Inputs with more than two dimensions are flattened to (N, in_features) first, as the
      original does; the output concatenates the flattened input and o: (N, in_features + B).

    The pairwise term runs on the fused op (O(N B C) memory, any backend); the gradient reaches
    x, T and b.
    """

    def __init__(self, in_features: int, num_kernels: int = 100, kernel_dim: int = 5, *,
                 include_self: bool = False, bias: bool = True, init_std: float = 0.05):
        super().__init__()
        if min(in_features, num_kernels, kernel_dim) < 1:
            raise ValueError(
                f"in_features, num_kernels and kernel_dim must be >= 1, got {in_features}, "
                f"{num_kernels}, {kernel_dim}")
        self.in_features, self.num_kernels, self.kernel_dim = in_features, num_kernels, kernel_dim
        self.include_self = include_self
        self.T = nn.Parameter(torch.randn(in_features, num_kernels * kernel_dim) * init_std)
        self.bias = nn.Parameter(torch.full((num_kernels,), -1.0)) if bias else None

    @property
    def out_features(self) -> int:
        return self.in_features + self.num_kernels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() < 2:
            raise ValueError(f"x must be (N, {self.in_features}) or (N, ...) with "
                             f"{self.in_features} features per sample")
        x = x.flatten(1)
        if x.shape[1] != self.in_features:
            raise ValueError(f"x must have {self.in_features} features per sample, got {x.shape[1]}")
        M = (x @ self.T).view(x.shape[0], self.num_kernels, self.kernel_dim)
        features = minibatch_discrimination(M)
        if self.include_self:
            features = features + 1
        if self.bias is not None:
            features = features + self.bias
        return torch.cat([x, features], 1)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, num_kernels={self.num_kernels}, "
                f"kernel_dim={self.kernel_dim}, include_self={self.include_self}, "
                f"bias={self.bias is not None}")

"""The 2-D mixtures of the mode-collapse tables (MD-GAN Tables 1-2, PacGAN, VEEGAN).

grid25: 25 Gaussians at {-4, -2, 0, 2, 4}^2, std 0.05, equal weights; 10,000 training points,
exactly 400 per mode (MD-GAN's data.py). ring8: 8 Gaussians at angles 2 pi k / 8 (k = 0..7) on a
circle of radius 1, std 0.01 (PacGAN's values; VEEGAN's and MD-GAN's are not published in code);
10,000 points, 1,250 per mode. The points are drawn once from ``data_seed``, so every run seed
sees the same training set.
"""
from __future__ import annotations

import math

import torch

GRID25_MEANS = torch.tensor([[x, y] for x in (-4.0, -2.0, 0.0, 2.0, 4.0) for y in (-4.0, -2.0, 0.0, 2.0, 4.0)])
GRID25_STD = 0.05
RING8_RADIUS = 1.0
RING8_MEANS = torch.tensor([[RING8_RADIUS * math.cos(2 * math.pi * k / 8),
                             RING8_RADIUS * math.sin(2 * math.pi * k / 8)] for k in range(8)])
RING8_STD = 0.01
TRAIN_POINTS = 10000

TOY = {"grid25": (GRID25_MEANS, GRID25_STD), "ring8": (RING8_MEANS, RING8_STD)}


def sample_mixture(means: torch.Tensor, std: float, points: int, generator: torch.Generator):
    """points / M points per mode (equal counts, as MD-GAN's data.py), shuffled; (x, mode)."""
    per_mode = points // means.shape[0]
    mode = torch.arange(means.shape[0]).repeat_interleave(per_mode)
    mode = mode[torch.randperm(mode.numel(), generator=generator)]
    x = means[mode] + std * torch.randn(mode.numel(), 2, generator=generator)
    return x, mode


def toy_data(name: str, data_seed: int):
    """(train x, train mode labels, means, std) of grid25 or ring8."""
    means, std = TOY[name]
    generator = torch.Generator().manual_seed(data_seed)
    x, mode = sample_mixture(means, std, TRAIN_POINTS, generator)
    return x, mode, means.clone(), std

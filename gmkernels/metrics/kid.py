"""Kernel Inception Distance (Binkowski et al. 2018) as torch-fidelity computes it.

For each of ``subsets`` rounds, m = ``subset_size`` rows are drawn without replacement from each
feature set (X from ``a``, Y from ``b``) and the unbiased MMD^2 with the cubic polynomial kernel
k(x, y) = (x . y / d + 1)^3 is

    MMD^2 = (sum_{i != j} k(x_i, x_j) + sum_{i != j} k(y_i, y_j)) / (m (m - 1)) - 2 sum_{i, j} k(x_i, y_j) / m^2

KID is the mean of the rounds' values and its spread their std (ddof 0, numpy's default, as
torch-fidelity reports it). Only the three m x m kernel blocks of one round exist at a time, in
float64; nothing of size N x N. The rows of a round are ``torch.randperm(N_a)[:m]`` then
``torch.randperm(N_b)[:m]`` from the given generator (seed 0 by default, so a call is
reproducible), rounds one after another.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..ops import _checks


@dataclasses.dataclass(frozen=True)
class KIDResult:
    mean: float              # KID: the mean unbiased MMD^2 over the subsets
    std: float               # std over the subsets (ddof 0)
    values: torch.Tensor     # (subsets,) float64: each subset's MMD^2


def _features(value, name: str) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    value = _checks.float_tensor(value, name)
    if value.dim() != 2:
        raise ValueError(f"{name} must be (N, d) features, got shape {tuple(value.shape)}")
    return value


def polynomial_mmd2(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Unbiased MMD^2 of two (m, d) float64 sets under k(x, y) = (x . y / d + 1)^3."""
    m, d = x.shape

    def kernel_sum(u, v, drop_diagonal: bool):
        k = (u @ v.T / d + 1) ** 3
        return k.sum() - (k.diagonal().sum() if drop_diagonal else 0)

    within = kernel_sum(x, x, True) + kernel_sum(y, y, True)
    return within / (m * (m - 1)) - 2 * kernel_sum(x, y, False) / (m * m)


def kernel_inception_distance(a, b, subsets: int = 100, subset_size: int = 1000, *,
                              generator: torch.Generator | int | None = None) -> KIDResult:
    """KID of feature sets a (N_a, d) and b (N_b, d) (module docstring).

    Args:
        a, b: float32/float64 tensors (or numpy arrays) of features, e.g. a classifier's, on any
            device; computed in float64.
        subsets: rounds (torch-fidelity's 100).
        subset_size: rows per set per round, 2 <= subset_size <= min(N_a, N_b) (torch-fidelity's
            1000; like it, a larger value is an error, not silently reduced).
        generator: a torch.Generator on the CPU, or an int seed; None is seed 0.
    Returns:
        KIDResult(mean, std, values).
    """
    a, b = _features(a, "a"), _features(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b must have the same feature size, got {a.shape[1]} and {b.shape[1]}")
    if a.shape[1] == 0:
        raise ValueError("a and b must have at least one feature")
    _checks.same_device({"a": a, "b": b})
    subsets = _checks.int_at_least(subsets, "subsets", 1)
    subset_size = _checks.int_at_least(subset_size, "subset_size", 2)
    if subset_size > min(len(a), len(b)):
        raise ValueError(f"subset_size ({subset_size}) must not exceed the rows of a ({len(a)}) and b ({len(b)})")
    if generator is None or (isinstance(generator, (int, np.integer)) and not isinstance(generator, bool)):
        generator = torch.Generator().manual_seed(int(generator or 0))
    elif not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, an int seed or None, got {type(generator).__name__}")
    values = torch.empty(subsets, dtype=torch.float64)
    for index in range(subsets):
        rows_a = torch.randperm(len(a), generator=generator)[:subset_size].to(a.device)
        rows_b = torch.randperm(len(b), generator=generator)[:subset_size].to(b.device)
        values[index] = polynomial_mmd2(a[rows_a].double(), b[rows_b].double()).cpu()
    return KIDResult(mean=float(values.mean()), std=float(values.std(correction=0)), values=values)

"""mixture_log_likelihood: log sum_i w_i N(x; mean_i, diag(var_i)) for every row of x, and the
regular simplex used by MD-GAN."""
from __future__ import annotations

import math

import torch

from .. import backend
from ..reference import mixture_log_likelihood as reference
from . import _checks

IMPLEMENTED = ("reference",)


def _check(x, means, var, log_weights):
    x = _checks.float_tensor(x, "x")
    means = _checks.float_tensor(means, "means")
    _checks.ndim(x, "x", 2, "(B, d)")
    _checks.ndim(means, "means", 2, "(C, d)")
    num_components, dim = means.shape
    if num_components == 0:
        raise ValueError("means must have at least one component (C >= 1), got shape (0, d)")
    if x.shape[1] != dim:
        raise ValueError(f"x must be (B, d) with d = {dim} (from means), got shape {tuple(x.shape)}")
    if isinstance(var, bool) or not isinstance(var, (int, float, torch.Tensor)):
        raise TypeError(f"var must be a float or a tensor, got {type(var).__name__}")
    if isinstance(var, torch.Tensor):
        _checks.float_tensor(var, "var")
        allowed = ((), (num_components,), (num_components, dim), (1, dim))
        if tuple(var.shape) not in allowed:
            raise ValueError(
                f"var must be a float or of shape (), (C,) = ({num_components},), (C, d) ="
                f" {(num_components, dim)} or (1, d) = {(1, dim)}; got {tuple(var.shape)}"
            )
        if _checks.checking_values() and var.numel():
            smallest = float(var.min())
            if not smallest > 0 or not bool(torch.isfinite(var).all()):
                raise ValueError(f"var must be finite and > 0, got min {smallest}")
    elif not (var > 0 and math.isfinite(var)):
        raise ValueError(f"var must be finite and > 0, got {var}")
    if log_weights is not None:
        _checks.float_tensor(log_weights, "log_weights")
        if tuple(log_weights.shape) != (num_components,):
            raise ValueError(
                f"log_weights must have shape (C,) = ({num_components},), got {tuple(log_weights.shape)}"
            )
        if _checks.checking_values() and bool(torch.isnan(log_weights).any() | (log_weights == math.inf).any()):
            raise ValueError("log_weights must not hold NaN or +inf (-inf switches a component off)")
    named = {"x": x, "means": means, "var": var if isinstance(var, torch.Tensor) else None,
             "log_weights": log_weights}
    _checks.same_dtype(named)
    _checks.same_device(named)


def mixture_log_likelihood(x: torch.Tensor, means: torch.Tensor, var, log_weights=None):
    """Log-density of each row of x under a Gaussian mixture.

    Args:
        x: (B, d) points.
        means: (C, d) component means.
        var: variance (not std): a float, a (C,) per-component isotropic variance, a (C, d)
            per-component diagonal, or (1, d) for one diagonal shared by all components.
        log_weights: optional (C,) log mixture weights, used as given (pass
            ``log_softmax(logits)`` for learned weights); ``-inf`` switches a component off.
            Uniform weights if None.

    Returns:
        (B,) log-likelihoods, differentiable in x, means, var and log_weights.
    """
    _check(x, means, var, log_weights)
    num_components = means.shape[0]
    if not isinstance(var, torch.Tensor):
        var = torch.tensor(float(var), dtype=x.dtype, device=x.device)
    if log_weights is None:
        log_weights = torch.full((num_components,), -math.log(num_components),
                                 dtype=x.dtype, device=x.device)
    backend.resolve("mixture_log_likelihood", IMPLEMENTED, x.device)
    return reference.mixture_log_likelihood(x, means, var, log_weights)


def simplex_vertices(d: int, radius: float = 1.0, *, dtype=torch.float64, device=None) -> torch.Tensor:
    """The d + 1 vertices (rows) of a regular simplex in R^d, centred at the origin, each at
    distance ``radius`` from it (circumradius); pairwise distances all radius * sqrt(2 (d+1) / d).

    Built from the Helmert basis of the hyperplane orthogonal to (1, ..., 1) in R^(d+1): the
    projections of the d + 1 standard basis vectors, scaled to the radius."""
    d = _checks.non_negative_int(d, "d")
    if d < 1:
        raise ValueError(f"d must be >= 1, got {d}")
    if not (isinstance(radius, (int, float)) and radius > 0 and math.isfinite(radius)):
        raise ValueError(f"radius must be a finite float > 0, got {radius}")
    helmert = torch.zeros(d, d + 1, dtype=torch.float64)
    for k in range(1, d + 1):
        helmert[k - 1, :k] = 1.0
        helmert[k - 1, k] = -float(k)
        helmert[k - 1] /= math.sqrt(k * (k + 1))
    vertices = helmert.T * (radius / math.sqrt(d / (d + 1)))
    return vertices.to(dtype=dtype, device=device)

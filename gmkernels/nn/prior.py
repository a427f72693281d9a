"""GaussianMixturePrior: the learnable (or fixed) mixture latent of DeLiGAN and GM-GAN."""
from __future__ import annotations

import math
import numbers

import torch
from torch import nn

from ..ops import _checks
from ..ops.mixture_sample import mixture_sample

COVARIANCES = ("diag", "full", "fixed")
ASSIGNMENTS = ("uniform", "per_row")
REDUCTIONS = ("mean", "per_component")


def _real(value, name: str, low: float, inclusive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    if value < low or (value == low and not inclusive):
        raise ValueError(f"{name} must be {'>=' if inclusive else '>'} {low}, got {value}")
    return float(value)


class GaussianMixturePrior(nn.Module):
    """p(z) = sum_i w_i N(z; mu_i, Sigma_i), sampled with gmkernels.mixture_sample.

    Presets for the published models: :meth:`deligan`, :meth:`gmgan_static`,
    :meth:`gmgan_dynamic`.

    Args:
        num_components: N.
        dim: K, the latent dimension.
        covariance: ``"diag"`` learns a (N, K) std, Sigma_i = diag(sigma_i)^2 (DeLiGAN);
            ``"full"`` learns a (N, K, K) lower-triangular factor A, Sigma_i = A_i A_i^T (GM-GAN
            dynamic; the upper triangle is ignored); ``"fixed"`` keeps Sigma_i = std^2 I and, by
            default, the means fixed (GM-GAN static).
        mean_range: means drawn from U(-mean_range, mean_range)^K (DeLiGAN: 1; GM-GAN: c).
        std: initial (or fixed) standard deviation; a full factor starts at std * I.
        learn_means: whether mu is a parameter (default: yes unless covariance is "fixed").
        weights: optional (N,) non-negative mixture weights (default uniform).
        assignment: ``"uniform"`` draws a component per sample (from ``weights`` if given);
            ``"per_row"`` gives row s component s mod N, as DeLiGAN's published code does (its
            batch size is N, so row i always uses component i).
        generator: optional torch.Generator for the initialisation.
    """

    def __init__(self, num_components: int, dim: int, covariance: str = "diag", *,
                 mean_range: float = 1.0, std: float = 0.2, learn_means: bool | None = None,
                 weights: torch.Tensor | None = None, assignment: str = "uniform",
                 generator: torch.Generator | None = None):
        super().__init__()
        if covariance not in COVARIANCES:
            raise ValueError(f"covariance must be one of {COVARIANCES}, got {covariance!r}")
        if assignment not in ASSIGNMENTS:
            raise ValueError(f"assignment must be one of {ASSIGNMENTS}, got {assignment!r}")
        num_components = _checks.int_at_least(num_components, "num_components", 1)
        dim = _checks.int_at_least(dim, "dim", 1)
        mean_range = _real(mean_range, "mean_range", 0.0, inclusive=True)
        std = _real(std, "std", 0.0, inclusive=False)
        self.num_components, self.dim = num_components, dim
        self.covariance, self.assignment = covariance, assignment
        mu = (torch.rand(num_components, dim, generator=generator) * 2 - 1) * mean_range
        learn_means = covariance != "fixed" if learn_means is None else bool(learn_means)
        if learn_means:
            self.mu = nn.Parameter(mu)
        else:
            self.register_buffer("mu", mu)
        if covariance == "diag":
            self.scale = nn.Parameter(torch.full((num_components, dim), std))
        elif covariance == "full":
            self.scale = nn.Parameter(torch.eye(dim).repeat(num_components, 1, 1) * std)
        else:
            self.register_buffer("scale", torch.full((num_components, dim), std))
        if weights is not None:
            weights = torch.as_tensor(weights, dtype=torch.float32)
            if weights.shape != (num_components,):
                raise ValueError(f"weights must have shape (num_components,) = "
                                 f"({num_components},), got {tuple(weights.shape)}")
            if not (bool(torch.isfinite(weights).all()) and bool((weights >= 0).all())
                    and float(weights.sum()) > 0):
                raise ValueError("weights must be finite and >= 0 with a positive sum")
        self.register_buffer("weights", weights)

    @classmethod
    def deligan(cls, num_components: int, dim: int, *, std: float = 0.2, **kwargs):
        """DeLiGAN (val-iisc/deligan): learned means mu ~ U(-1, 1) and learned diagonal std
        starting at 0.2 (MNIST, sketches; the toy script uses 0.02). Pass
        ``assignment="per_row"`` for the published one-component-per-batch-row sampling."""
        return cls(num_components, dim, "diag", mean_range=1.0, std=std, **kwargs)

    @classmethod
    def gmgan_static(cls, num_components: int, dim: int, *, c: float = 1.0,
                     variance: float = 0.04, **kwargs):
        """GM-GAN static: fixed mu ~ U[-c, c]^d and Sigma = variance * I, nothing learned. The
        paper leaves c and the variance to the user; the defaults (c = 1, variance 0.04, i.e.
        std 0.2) put the means on DeLiGAN's scale."""
        variance = _real(variance, "variance", 0.0, inclusive=False)
        return cls(num_components, dim, "fixed", mean_range=c, std=math.sqrt(variance), **kwargs)

    @classmethod
    def gmgan_dynamic(cls, num_components: int, dim: int, *, c: float = 1.0,
                      variance: float = 0.04, **kwargs):
        """GM-GAN dynamic: learned mu (initialised U[-c, c]^d) and learned factor A with
        Sigma = A A^T (initialised sqrt(variance) * I)."""
        variance = _real(variance, "variance", 0.0, inclusive=False)
        return cls(num_components, dim, "full", mean_range=c, std=math.sqrt(variance), **kwargs)

    def _scaled(self, temperature) -> torch.Tensor:
        temperature = _real(temperature, "temperature", 0.0, inclusive=True)
        return self.scale if temperature == 1.0 else self.scale * temperature

    def sample(self, n: int, *, generator: torch.Generator | None = None,
               temperature: float = 1.0):
        """(z, component) for n samples, differentiable in the learned mu and scale.

        ``temperature`` multiplies every std (the covariance by temperature^2): GM-GAN's
        quality-diversity trade-off (< 1: samples nearer the means, higher quality; > 1: more
        diverse; 0: the means themselves)."""
        scale = self._scaled(temperature)
        component = None
        if self.assignment == "per_row":
            component = torch.arange(n, device=self.mu.device) % self.num_components
        weights = None
        if component is None and self.weights is not None:
            weights = self.weights.to(device=self.mu.device, dtype=self.mu.dtype)
        return mixture_sample(self.mu, scale, n, component=component, generator=generator,
                              weights=weights)

    def sample_component(self, k: int, n: int, *, generator: torch.Generator | None = None,
                         temperature: float = 1.0) -> torch.Tensor:
        """n samples of component k (GM-GAN: generate per Gaussian, e.g. for its clustering)."""
        k = _checks.int_at_least(k, "k", 0)
        if k >= self.num_components:
            raise ValueError(f"k must be in [0, {self.num_components}), got {k}")
        n = _checks.non_negative_int(n, "n")
        component = torch.full((n,), k, dtype=torch.int64, device=self.mu.device)
        z, _ = mixture_sample(self.mu, self._scaled(temperature), n, component=component,
                              generator=generator)
        return z

    def penalty(self, reduction: str = "mean") -> torch.Tensor:
        """DeLiGAN's sigma penalty (multiply by the coefficient yourself: MNIST 1/3, toy 0.1,
        sketches 0.05).

        ``"mean"`` (default): mean((1 - sigma)^2) over all N K entries, what the published code
        computes; ``"per_component"``: sum_i ||1 - sigma_i||^2 / N, the paper's form (K times
        larger). For a full factor A, sigma is its diagonal."""
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        sigma = self.scale
        if sigma.dim() == 3:
            sigma = torch.diagonal(sigma, dim1=-2, dim2=-1)
        squared = (1 - sigma) ** 2
        if reduction == "mean":
            return squared.mean()
        return squared.sum() / self.num_components

    def extra_repr(self) -> str:
        return (f"num_components={self.num_components}, dim={self.dim}, "
                f"covariance={self.covariance!r}, assignment={self.assignment!r}")

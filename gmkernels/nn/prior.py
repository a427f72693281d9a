"""GaussianMixturePrior: the learnable (or fixed) mixture latent of DeLiGAN and GM-GAN."""
from __future__ import annotations

import torch
from torch import nn

from ..ops.mixture_sample import mixture_sample

COVARIANCES = ("diag", "full", "fixed")
ASSIGNMENTS = ("uniform", "per_row")


class GaussianMixturePrior(nn.Module):
    """p(z) = sum_i w_i N(z; mu_i, Sigma_i), sampled with gmkernels.mixture_sample.

    Args:
        num_components: N.
        dim: K, the latent dimension.
        covariance: ``"diag"`` learns a (N, K) std (DeLiGAN); ``"full"`` learns a (N, K, K)
            lower-triangular factor A, Sigma = A A^T (GM-GAN dynamic); ``"fixed"`` keeps
            Sigma = std^2 I and the means fixed (GM-GAN static).
        mean_range: means drawn from U(-mean_range, mean_range)^K (DeLiGAN: 1; GM-GAN: c).
        std: initial (or fixed) standard deviation (DeLiGAN: 0.2 MNIST, 0.02 toy).
        learn_means: whether mu is a parameter (default: yes unless covariance is "fixed").
        weights: optional (N,) mixture weights (default uniform).
        assignment: ``"uniform"`` draws a component per sample; ``"per_row"`` gives row s
            component s mod N, as DeLiGAN's published code does (N = batch size there).
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
        if num_components < 1 or dim < 1:
            raise ValueError(f"num_components and dim must be >= 1, got {num_components}, {dim}")
        if not std > 0:
            raise ValueError(f"std must be > 0, got {std}")
        self.num_components, self.dim = num_components, dim
        self.covariance, self.assignment = covariance, assignment
        mu = (torch.rand(num_components, dim, generator=generator) * 2 - 1) * mean_range
        learn_means = covariance != "fixed" if learn_means is None else learn_means
        if learn_means:
            self.mu = nn.Parameter(mu)
        else:
            self.register_buffer("mu", mu)
        if covariance == "diag":
            self.scale = nn.Parameter(torch.full((num_components, dim), float(std)))
        elif covariance == "full":
            self.scale = nn.Parameter(torch.eye(dim).repeat(num_components, 1, 1) * std)
        else:
            self.register_buffer("scale", torch.full((num_components, dim), float(std)))
        self.register_buffer("weights", None if weights is None else torch.as_tensor(weights, dtype=torch.float32))

    def _components(self, n: int, generator) -> torch.Tensor | None:
        if self.assignment == "per_row":
            return torch.arange(n, device=self.mu.device) % self.num_components
        return None

    def sample(self, n: int, *, generator: torch.Generator | None = None,
               temperature: float = 1.0):
        """(z, component) for n samples. ``temperature`` multiplies every std (the covariance by
        temperature^2): GM-GAN's quality-diversity trade-off (< 1 sharper, > 1 more diverse)."""
        component = self._components(n, generator)
        weights = None if component is not None or self.weights is None else self.weights.to(self.mu.dtype)
        return mixture_sample(self.mu, self.scale * temperature, n, component=component,
                              generator=generator, weights=weights)

    def sample_component(self, k: int, n: int, *, generator: torch.Generator | None = None,
                         temperature: float = 1.0) -> torch.Tensor:
        """n samples of component k (GM-GAN: generate per Gaussian)."""
        if not 0 <= k < self.num_components:
            raise ValueError(f"k must lie in [0, {self.num_components}), got {k}")
        component = torch.full((n,), k, dtype=torch.int64, device=self.mu.device)
        z, _ = mixture_sample(self.mu, self.scale * temperature, n, component=component, generator=generator)
        return z

    def penalty(self, reduction: str = "mean") -> torch.Tensor:
        """DeLiGAN's sigma penalty. ``"mean"``: mean((1 - sigma)^2) over all N K entries, as the
        published code computes it; ``"per_component"``: sum_i ||1 - sigma_i||^2 / N, the deck's
        form (K times larger). For a full factor, sigma is its diagonal."""
        sigma = torch.diagonal(self.scale, dim1=-2, dim2=-1) if self.scale.dim() == 3 else self.scale
        squared = (1 - sigma) ** 2
        if reduction == "mean":
            return squared.mean()
        if reduction == "per_component":
            return squared.sum() / self.num_components
        raise ValueError(f"reduction must be 'mean' or 'per_component', got {reduction!r}")

    def extra_repr(self) -> str:
        return (f"num_components={self.num_components}, dim={self.dim}, covariance={self.covariance!r}, "
                f"assignment={self.assignment!r}")

"""SimplexGMM: MD-GAN's scoring of discriminator embeddings by a simplex Gaussian mixture, with
its losses in log space."""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from torch import nn

from ..ops.mixture_log_likelihood import mixture_log_likelihood, simplex_vertices
from ..reference.mixture_log_likelihood import mixture_log_likelihood as reference_log_likelihood


def log1mexp(a: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(a)) for a <= 0, accurate on both sides of -log 2 (Maechler 2012)."""
    a = torch.clamp(a, max=0.0)
    return torch.where(a > -math.log(2), torch.log(-torch.expm1(a)), torch.log1p(-torch.exp(a)))


def max_log_likelihood(vertices: torch.Tensor, var: float) -> float:
    """log max_e lk(e) for an equal-weight isotropic mixture centred on a regular simplex.

    By the simplex's symmetry the maximum lies at the centroid or on a segment from the centroid
    to a vertex: search t in [0, 1] along centroid -> vertex 0 on a dense grid, refine with a
    bounded Brent step around the best grid point, all in float64."""
    vertices = vertices.double()
    direction = vertices[0]
    weights = torch.full((vertices.shape[0],), -math.log(vertices.shape[0]), dtype=torch.float64)
    variance = torch.tensor(float(var), dtype=torch.float64)

    def log_lk(t: np.ndarray) -> np.ndarray:
        points = torch.as_tensor(np.atleast_1d(t), dtype=torch.float64)[:, None] * direction
        return reference_log_likelihood(points, vertices, variance, weights).numpy()

    grid = np.linspace(0.0, 1.0, 2001)
    values = log_lk(grid)
    best = int(values.argmax())
    low, high = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    refined = minimize_scalar(lambda t: -float(log_lk(t)[0]), bounds=(low, high), method="bounded",
                              options={"xatol": 1e-12})
    return float(max(values[best], -refined.fun))


class SimplexGMM(nn.Module):
    """lk(e) = sum_i 1/(d+1) N(e; v_i, var I) over the d + 1 vertices v_i of a regular simplex of
    circumradius ``radius`` (MD-GAN: d = 9, var = 0.25).

    ``log_lambda`` is log max_e lk(e), computed once in float64 (the deck's lambda; with var 0.25
    the maximum is at the centroid, above every vertex). Losses use
    log(lambda - lk) = log lambda + log(1 - exp(log lk - log lambda)), never NaN. ``reg`` (1e-8 in
    the published code, which works in the linear domain) is added inside every log:
    log(lk + reg) and log(lambda - lk + reg).
    """

    def __init__(self, d: int, var: float = 0.25, radius: float = 1.0, *, reg: float = 0.0,
                 vertices: torch.Tensor | None = None):
        super().__init__()
        if not var > 0:
            raise ValueError(f"var must be > 0, got {var}")
        if reg < 0:
            raise ValueError(f"reg must be >= 0, got {reg}")
        vertices = simplex_vertices(d, radius) if vertices is None else vertices.double()
        if tuple(vertices.shape) != (d + 1, d):
            raise ValueError(f"vertices must be (d + 1, d) = {(d + 1, d)}, got {tuple(vertices.shape)}")
        self.d, self.var, self.reg = d, float(var), float(reg)
        self.register_buffer("vertices", vertices.float())
        self.log_lambda = max_log_likelihood(vertices, var)

    @property
    def lam(self) -> float:
        return math.exp(self.log_lambda)

    def log_likelihood(self, embedding: torch.Tensor) -> torch.Tensor:
        """log lk(e) for each row of embedding (B, d)."""
        return mixture_log_likelihood(embedding, self.vertices.to(embedding.dtype), self.var)

    def _log_lk_reg(self, log_lk: torch.Tensor) -> torch.Tensor:
        if self.reg == 0:
            return log_lk
        return torch.logaddexp(log_lk, torch.full_like(log_lk, math.log(self.reg)))

    def log_lambda_minus_lk(self, log_lk: torch.Tensor) -> torch.Tensor:
        """log(lambda - lk + reg)."""
        log_top = math.log(self.lam + self.reg)
        return log_top + log1mexp(log_lk - log_top)

    def discriminator_loss(self, real_embedding: torch.Tensor, fake_embedding: torch.Tensor) -> torch.Tensor:
        """-mean[log lk(D(x)) + log(lambda - lk(D(G(z))))] (MD-GAN, published code)."""
        real = self._log_lk_reg(self.log_likelihood(real_embedding))
        fake = self.log_lambda_minus_lk(self.log_likelihood(fake_embedding))
        return -(real.mean() + fake.mean())

    def generator_loss(self, fake_embedding: torch.Tensor, saturating: bool = True) -> torch.Tensor:
        """The paper's saturating loss mean log(lambda - lk(D(G(z)))), or with
        ``saturating=False`` the non-saturating -mean log lk(D(G(z)))."""
        log_lk = self.log_likelihood(fake_embedding)
        if saturating:
            return self.log_lambda_minus_lk(log_lk).mean()
        return -self._log_lk_reg(log_lk).mean()

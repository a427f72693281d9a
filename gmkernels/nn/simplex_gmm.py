"""SimplexGMM: MD-GAN's scoring of discriminator embeddings by a simplex Gaussian mixture, with
its losses in log space."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ..ops.mixture_log_likelihood import SIMPLEX_LAYOUTS, mixture_log_likelihood, simplex_vertices


def log1mexp(a: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(a)) for a < 0, accurate on both sides of -log 2 (Maechler 2012).

    Each branch sees only inputs in its own safe range (the "double where"), so the branch that
    is not selected never produces an inf whose zero-weighted gradient would still be NaN."""
    use_expm1 = a > -math.log(2)
    near_zero = torch.where(use_expm1, a, torch.full_like(a, -1.0))
    far = torch.where(use_expm1, torch.full_like(a, -1.0), a)
    return torch.where(use_expm1, torch.log(-torch.expm1(near_zero)), torch.log1p(-torch.exp(far)))


def _log_lk(points: np.ndarray, vertices: np.ndarray, var: float) -> np.ndarray:
    """log lk(e) = log (1/C) sum_i N(e; v_i, var I) for each row of points, float64."""
    # scipy is imported where it is used: at the top, `import gmkernels` loaded it (0.3 s) and
    # its two OpenBLAS builds with their thread pools, for the one function that needs it.
    from scipy.special import logsumexp

    squared = ((points[:, None, :] - vertices[None, :, :]) ** 2).sum(-1)
    dim = vertices.shape[1]
    log_norm = -0.5 * dim * math.log(2 * math.pi * var) - math.log(vertices.shape[0])
    return logsumexp(-0.5 * squared / var, axis=1) + log_norm


def _mean_shift(start: np.ndarray, vertices: np.ndarray, var: float, steps: int = 5000) -> np.ndarray:
    """Fixed-point ascent e <- sum_i r_i(e) v_i (r the responsibilities): for equal isotropic
    covariances every step increases lk, and the fixed points are its stationary points."""
    point = start.copy()
    for _ in range(steps):
        log_r = -0.5 * ((point - vertices) ** 2).sum(1) / var
        r = np.exp(log_r - log_r.max())
        moved = (r / r.sum()) @ vertices
        if np.abs(moved - point).max() <= 1e-15:
            return moved
        point = moved
    return point


def max_log_likelihood(vertices: torch.Tensor, var: float) -> tuple:
    """(log max_e lk(e), argmax e) for lk the equal-weight mixture of N(v_i, var I) over the rows
    v_i of ``vertices``, all in float64.

    For a regular simplex centred at the origin, a maximiser fixed by the permutations of a
    subset S of the vertices (and of its complement) lies on the line through the origin and the
    centroid of S; the candidates are therefore the segments from the centroid to the centroids
    of the first k vertices, k = 1..d (k = 1 is the centroid -> vertex segment; its continuation
    beyond the centroid is the segment for the complementary k). Each segment is searched on a
    grid and refined with a bounded Brent step; the best point is then polished by mean-shift in
    the full space, as are the centroid and every vertex (which covers maximisers off those lines
    and vertices that do not form a regular simplex). tests/test_simplex_gmm.py checks the result
    against dense random search and many mean-shift runs."""
    from scipy.optimize import minimize_scalar

    points = vertices.detach().double().cpu().numpy()
    num_vertices, dim = points.shape
    centroid = points.mean(0)
    grid = np.linspace(0.0, 1.0, 401)
    candidates = [centroid]
    for k in range(1, num_vertices):
        direction = points[:k].mean(0) - centroid
        values = _log_lk(centroid + grid[:, None] * direction, points, var)
        best = int(values.argmax())
        low, high = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
        refined = minimize_scalar(
            lambda t: -float(_log_lk((centroid + t * direction)[None], points, var)[0]),
            bounds=(low, high), method="bounded", options={"xatol": 1e-13})
        t = refined.x if -refined.fun > values[best] else grid[best]
        candidates.append(centroid + t * direction)
    values = _log_lk(np.stack(candidates), points, var)
    starts = [candidates[int(values.argmax())], centroid] + list(points)
    polished = np.stack([_mean_shift(start, points, var) for start in starts])
    everything = np.concatenate([np.stack(candidates), polished])
    values = _log_lk(everything, points, var)
    best = int(values.argmax())
    return float(values[best]), torch.from_numpy(everything[best].copy())


class SimplexGMM(nn.Module):
    """lk(e) = sum_i 1/(d+1) N(e; v_i, var I) over the d + 1 vertices v_i of a regular simplex
    (MD-GAN: d = 9, var = 0.25).

    Args:
        d: embedding dimension (d + 1 components).
        var: the components' variance (not std).
        radius: scale of the simplex (see :func:`gmkernels.simplex_vertices`).
        layout: ``"regular"`` (circumradius ``radius``) or ``"mdgan"`` (the published code's
            vertices, norm 0.9436 for d = 9, times ``radius``).
        reg: added inside every log as the published code does (1e-8 there): log(lk + reg) and
            log(lambda - lk + reg). Default 0.
        vertices: optional (d + 1, d) means replacing the simplex.

    ``log_lambda`` is log max_e lk(e), computed once in float64 (the deck's lambda; with var 0.25
    the maximum is at the centroid, above every vertex) and ``mode`` the point where it is
    reached. Losses use log(lambda - lk) = log lambda + log(1 - exp(log lk - log lambda)) with
    log lk - log lambda clamped to <= -eps of the dtype: an lk within rounding of lambda gives
    log(lambda eps) rather than -inf, so losses and gradients are never NaN or infinite.
    """

    def __init__(self, d: int, var: float = 0.25, radius: float = 1.0, *, layout: str = "regular",
                 reg: float = 0.0, vertices: torch.Tensor | None = None):
        super().__init__()
        if not var > 0:
            raise ValueError(f"var must be > 0, got {var}")
        if reg < 0:
            raise ValueError(f"reg must be >= 0, got {reg}")
        if layout not in SIMPLEX_LAYOUTS:
            raise ValueError(f"layout must be one of {SIMPLEX_LAYOUTS}, got {layout!r}")
        vertices = simplex_vertices(d, radius, layout=layout) if vertices is None else vertices.double()
        if tuple(vertices.shape) != (d + 1, d):
            raise ValueError(f"vertices must be (d + 1, d) = {(d + 1, d)}, got {tuple(vertices.shape)}")
        self.d, self.var, self.reg, self.layout = d, float(var), float(reg), layout
        self.register_buffer("vertices", vertices.float())
        self.log_lambda, mode = max_log_likelihood(vertices, var)
        self.register_buffer("mode", mode.float(), persistent=False)

    @property
    def lam(self) -> float:
        return math.exp(self.log_lambda)

    def log_likelihood(self, embedding: torch.Tensor) -> torch.Tensor:
        """log lk(e) for each row of embedding (B, d)."""
        return mixture_log_likelihood(embedding, self.vertices.to(embedding.dtype), self.var)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        """``head(e)``: log lk(e) for each row of embedding (B, d), as ``log_likelihood``."""
        return self.log_likelihood(embedding)

    def _log_lk_reg(self, log_lk: torch.Tensor) -> torch.Tensor:
        """log(lk + reg)."""
        if self.reg == 0:
            return log_lk
        return torch.logaddexp(log_lk, torch.full_like(log_lk, math.log(self.reg)))

    def log_lambda_minus_lk(self, log_lk: torch.Tensor) -> torch.Tensor:
        """log(lambda - lk + reg), never NaN (see the class note on lk within rounding of
        lambda)."""
        below = torch.clamp(log_lk - self.log_lambda, max=-torch.finfo(log_lk.dtype).eps)
        gap = self.log_lambda + log1mexp(below)
        if self.reg == 0:
            return gap
        return torch.logaddexp(gap, torch.full_like(gap, math.log(self.reg)))

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

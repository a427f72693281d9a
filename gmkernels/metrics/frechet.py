"""Fréchet distance between Gaussians fitted to two sets of features (FID when the features are
Inception pool3 activations), and streaming moments so that features can be gathered batch by
batch and across torch.distributed ranks without keeping them.

    d^2 = ||mu_a - mu_b||^2 + tr S_a + tr S_b - 2 tr sqrt(S_a S_b)

pytorch-fid (mseitzer/pytorch-fid, src/pytorch_fid/fid_score.py) takes scipy.linalg.sqrtm(S_a S_b)
of a non-symmetric product, retries with an epsilon and fails on imaginary parts. Here
tr sqrt(S_a S_b) = sum_i sqrt(lambda_i) with lambda the eigenvalues of the symmetric PSD matrix
sqrt(S_a) S_b sqrt(S_a) (same spectrum as S_a S_b), by eigh in float64, eigenvalues clamped at
0 (and those below the rounding level d eps lambda_max treated as 0): real, never negative, and
correct for rank-deficient covariances (fewer samples than dimensions), where the square roots of
rounding noise in the null space would otherwise add up (to ~1e-7 at d = 50).
Covariances use ddof=1, as np.cov.
"""
from __future__ import annotations

import torch

from ..ops import _checks


def _as_float64(value, name: str, shape: tuple) -> torch.Tensor:
    tensor = torch.as_tensor(value).detach()
    if not (tensor.is_floating_point() or tensor.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"{name} must be a real tensor or array, got dtype {tensor.dtype}")
    tensor = tensor.to(torch.float64)
    if tuple(tensor.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(tensor.shape)}")
    _checks.finite(tensor, name)
    return tensor


def _resolved(values: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of a symmetric PSD matrix with those below its rounding level (d eps
    lambda_max, numpy.linalg.matrix_rank's cutoff) set to 0. An exact zero comes out of eigh as
    +-1e-16 lambda_max, whose square root (1e-8) would otherwise add up over a rank-deficient
    covariance's null space."""
    cutoff = values.shape[0] * torch.finfo(values.dtype).eps * values.abs().max()
    return torch.where(values > cutoff, values, torch.zeros_like(values))


def _trace_sqrt_product(cov_a: torch.Tensor, cov_b: torch.Tensor) -> torch.Tensor:
    """tr sqrt(S_a S_b) = sum sqrt(eigvalsh(sqrt(S_a) S_b sqrt(S_a))), eigenvalues clamped at 0
    (below the rounding level, see _resolved)."""
    values, vectors = torch.linalg.eigh(cov_a)
    root_a = (vectors * _resolved(values).sqrt()) @ vectors.T
    middle = root_a @ cov_b @ root_a
    middle = (middle + middle.T) / 2  # symmetric up to rounding; eigvalsh reads one triangle
    return _resolved(torch.linalg.eigvalsh(middle)).sqrt().sum()


def frechet_distance_from_moments(mean_a, cov_a, mean_b, cov_b) -> float:
    """Fréchet distance between N(mean_a, cov_a) and N(mean_b, cov_b) (tensors or numpy arrays,
    e.g. pytorch-fid's saved mu / sigma), computed in float64 on mean_a's device.

    Returns:
        d^2 >= 0 as a Python float (clamped at 0: with identical moments rounding could otherwise
        leave -1e-13).
    """
    mean_a = torch.as_tensor(mean_a)
    if mean_a.dim() != 1:
        raise ValueError(f"mean_a must have shape (d,), got {tuple(mean_a.shape)}")
    dim = mean_a.shape[0]
    device = mean_a.device
    mean_a = _as_float64(mean_a, "mean_a", (dim,))
    mean_b = _as_float64(mean_b, "mean_b", (dim,)).to(device)
    cov_a = _as_float64(cov_a, "cov_a", (dim, dim)).to(device)
    cov_b = _as_float64(cov_b, "cov_b", (dim, dim)).to(device)
    cov_a, cov_b = (cov_a + cov_a.T) / 2, (cov_b + cov_b.T) / 2
    difference = mean_a - mean_b
    distance = (difference @ difference + torch.trace(cov_a) + torch.trace(cov_b)
                - 2 * _trace_sqrt_product(cov_a, cov_b))
    return max(float(distance), 0.0)


class GaussianMoments:
    """Streaming mean and covariance (ddof=1) of feature vectors, in float64.

    ``update(batch)`` folds in a (B, d) batch (Chan et al.'s pairwise update of mean and scatter
    matrix: no catastrophic cancellation, unlike sums of x and x x^T); ``merge(other)`` folds in
    another accumulator; ``all_reduce()`` combines the accumulators of all torch.distributed ranks
    (every rank then holds the moments of all features). Sums live on the device of the first
    batch (or ``device``).
    """

    def __init__(self, dim: int | None = None, device=None):
        self.count = 0
        self._mean = None
        self._scatter = None  # sum over features of (x - mean)(x - mean)^T
        self._dim = None
        self._device = device
        if dim is not None:
            self._allocate(_checks.non_negative_int(dim, "dim"), device)

    def _allocate(self, dim: int, device) -> None:
        self._dim = dim
        self._device = torch.device(device) if device is not None else torch.device("cpu")
        self._mean = torch.zeros(dim, dtype=torch.float64, device=self._device)
        self._scatter = torch.zeros(dim, dim, dtype=torch.float64, device=self._device)

    @property
    def dim(self) -> int | None:
        return self._dim

    def _combine(self, count: int, mean: torch.Tensor, scatter: torch.Tensor) -> None:
        if count == 0:
            return
        total = self.count + count
        delta = mean - self._mean
        self._scatter += scatter + torch.outer(delta, delta) * (self.count * count / total)
        self._mean += delta * (count / total)
        self.count = total

    def update(self, features: torch.Tensor, name: str = "features") -> "GaussianMoments":
        """Add a (B, d) batch of features (any float dtype; used in float64). ``name`` is the
        argument named in error messages."""
        features = _checks.tensor(features, name)
        if not features.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {features.dtype}")
        if features.dim() != 2:
            raise ValueError(f"{name} must be (B, d), got shape {tuple(features.shape)}")
        if self._dim is None:
            self._allocate(features.shape[1], self._device if self._device is not None
                           else features.device)
        if features.shape[1] != self._dim:
            raise ValueError(f"{name} must have d = {self._dim} columns, got {features.shape[1]}")
        features = features.detach().to(device=self._device, dtype=torch.float64)
        _checks.finite(features, name)
        if features.shape[0] == 0:
            return self
        batch_mean = features.mean(0)
        centred = features - batch_mean
        self._combine(features.shape[0], batch_mean, centred.T @ centred)
        return self

    def merge(self, other: "GaussianMoments") -> "GaussianMoments":
        """Add the features of another accumulator (e.g. another shard) into this one."""
        if not isinstance(other, GaussianMoments):
            raise TypeError(f"other must be a GaussianMoments, got {type(other).__name__}")
        if other.count == 0:
            return self
        if self._dim is None:
            self._allocate(other._dim, self._device if self._device is not None else other._device)
        if other._dim != self._dim:
            raise ValueError(f"other has d = {other._dim}, this accumulator d = {self._dim}")
        self._combine(other.count, other._mean.to(self._device), other._scatter.to(self._device))
        return self

    def all_reduce(self, group=None) -> "GaussianMoments":
        """Replace this rank's moments by those of the features of every rank in ``group``
        (default: the world) when torch.distributed is initialized; otherwise leave them. Two
        all_reduce calls: (n, n mean) for the global mean, then each rank's scatter matrix
        re-centred on it. Every rank must know d (have seen a batch, or pass ``dim``)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        if self._dim is None:
            raise ValueError("GaussianMoments.all_reduce needs d on every rank: update it with a"
                             " batch or construct it with dim=")
        device = self._device
        if dist.get_backend(group) == "nccl" and device.type != "cuda":
            device = torch.device("cuda", torch.cuda.current_device())
        packed = torch.cat([torch.tensor([float(self.count)], dtype=torch.float64, device=device),
                            (self._mean * self.count).to(device)])
        dist.all_reduce(packed, group=group)
        total = int(round(float(packed[0])))
        global_mean = packed[1:] / max(total, 1)
        offset = self._mean.to(device) - global_mean
        scatter = self._scatter.to(device) + torch.outer(offset, offset) * self.count
        dist.all_reduce(scatter, group=group)
        self.count = total
        self._mean = global_mean.to(self._device)
        self._scatter = scatter.to(self._device)
        return self

    @property
    def mean(self) -> torch.Tensor:
        if self.count < 1:
            raise ValueError("GaussianMoments.mean needs at least one feature vector")
        return self._mean.clone()

    @property
    def covariance(self) -> torch.Tensor:
        """Sample covariance with ddof=1 (np.cov's default)."""
        if self.count < 2:
            raise ValueError(f"GaussianMoments.covariance needs at least 2 feature vectors, got {self.count}")
        return self._scatter / (self.count - 1)

    def frechet_distance(self, other: "GaussianMoments") -> float:
        """Fréchet distance between the Gaussians fitted to this accumulator and ``other``."""
        return frechet_distance_from_moments(self.mean, self.covariance,
                                             other.mean.to(self._device),
                                             other.covariance.to(self._device))


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two sets of (N, d) features (N >= 2 each,
    covariances with ddof=1), computed in float64. FID when the features are Inception-v3 pool3
    activations of real and generated images."""
    moments_a = GaussianMoments().update(features_a, "features_a")
    moments_b = GaussianMoments(dim=moments_a.dim, device=moments_a._device)
    moments_b.update(features_b, "features_b")
    for name, moments in (("features_a", moments_a), ("features_b", moments_b)):
        if moments.count < 2:
            raise ValueError(f"{name} must have at least 2 rows (a covariance), got {moments.count}")
    return moments_a.frechet_distance(moments_b)

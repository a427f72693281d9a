"""Parzen-window log-likelihood of test data under generated samples, the protocol of
goodfeli/adversarial ``parzen_ll.py``:

    LL(x) = logmeanexp_j( -||x - mu_j||^2 / (2 sigma^2) ) - d log(sigma sqrt(2 pi))

with the mu_j the generated samples, sigma (a standard deviation) chosen from
``logspace(-1, 0, 10)`` by the best mean LL on a validation set, reported as the mean over the
test points +- std / sqrt(N_test) (std with ddof 0, as numpy's default there). LL(x) is the
log-density of an equal-weight isotropic Gaussian mixture centred on the samples, which is what
:func:`gmkernels.mixture_log_likelihood` computes without a test x samples matrix.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from ..ops import _checks
from ..ops.mixture_log_likelihood import mixture_log_likelihood

PUBLISHED_SIGMAS = tuple(float(s) for s in np.logspace(-1, 0, 10))


@dataclasses.dataclass(frozen=True)
class ParzenResult:
    mean: float                    # mean LL over the test points
    stderr: float                  # std (ddof 0) / sqrt(N_test)
    sigma: float                   # the bandwidth used (given, or chosen on validation)
    log_likelihood: torch.Tensor   # (N_test,) per test point
    validation_means: dict         # sigma -> mean validation LL (empty when sigma was given)


def _as_rows(value, name: str, dtype=None) -> torch.Tensor:
    """A (N, d) float tensor: arrays become tensors, images (N, ...) are flattened."""
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    value = _checks.float_tensor(value, name)
    if value.dim() < 2:
        raise ValueError(f"{name} must be (N, d) or (N, ...) images, got shape {tuple(value.shape)}")
    return value.reshape(value.shape[0], -1)


def _log_likelihoods(points: torch.Tensor, samples: torch.Tensor, sigma: float, batch_size: int,
                     bar) -> torch.Tensor:
    parts = []
    for begin in range(0, points.shape[0], batch_size):
        parts.append(mixture_log_likelihood(points[begin:begin + batch_size], samples, sigma * sigma))
        bar.update(1)
    return torch.cat(parts) if parts else points.new_empty(0)


def parzen_log_likelihood(samples, test, sigma: float | None = None, validation=None,
                          sigmas=PUBLISHED_SIGMAS, batch_size: int = 1000,
                          progress: bool = True) -> ParzenResult:
    """Parzen-window log-likelihood of ``test`` under a Gaussian kernel density on ``samples``.

    Args:
        samples: (N, d) generated samples (or (N, ...) images, flattened), the kernel centres
            (10,000 in the published protocol).
        test: (N_test, d) test points (same dtype as samples).
        sigma: kernel standard deviation; if None it is chosen on ``validation``.
        validation: (N_val, d) held-out points (1,000 in the published protocol) used to choose
            sigma from ``sigmas`` by the best mean LL; required when sigma is None.
        sigmas: the candidate bandwidths (default ``logspace(-1, 0, 10)``, the published grid).
        batch_size: test (and validation) points per call of the fused kernel.
        progress: show a tqdm progress bar over the batches.

    Returns:
        ParzenResult with ``mean``, ``stderr``, ``sigma``, the per-point ``log_likelihood`` and
        the ``validation_means`` per candidate sigma.
    """
    samples = _as_rows(samples, "samples")
    test = _as_rows(test, "test")
    if test.shape[1] != samples.shape[1]:
        raise ValueError(f"test must have d = {samples.shape[1]} (from samples), got shape {tuple(test.shape)}")
    if samples.shape[0] == 0:
        raise ValueError("samples must hold at least one point")
    batch_size = _checks.int_at_least(batch_size, "batch_size", 1)
    if sigma is not None:
        if not (isinstance(sigma, (int, float)) and sigma > 0 and math.isfinite(sigma)):
            raise ValueError(f"sigma must be a finite float > 0, got {sigma!r}")
        candidates = ()
    else:
        if validation is None:
            raise ValueError("pass sigma, or a validation set to choose it on")
        validation = _as_rows(validation, "validation")
        if validation.shape[1] != samples.shape[1] or validation.shape[0] == 0:
            raise ValueError(f"validation must be (N_val >= 1, {samples.shape[1]}), got shape {tuple(validation.shape)}")
        candidates = tuple(float(s) for s in sigmas)
        if not candidates or not all(s > 0 and math.isfinite(s) for s in candidates):
            raise ValueError(f"sigmas must be a non-empty sequence of finite floats > 0, got {sigmas!r}")

    from tqdm.auto import tqdm

    batches = lambda n: -(-n // batch_size)  # noqa: E731
    total = len(candidates) * (batches(validation.shape[0]) if candidates else 0) + batches(test.shape[0])
    validation_means = {}
    with torch.no_grad(), tqdm(total=total, desc="parzen", disable=not progress, leave=False) as bar:
        for candidate in candidates:
            bar.set_postfix(sigma=f"{candidate:.4g}")
            scores = _log_likelihoods(validation, samples, candidate, batch_size, bar)
            validation_means[candidate] = float(scores.double().mean())
        if candidates:
            sigma = max(candidates, key=lambda s: validation_means[s])  # first of ties, as argmax
            bar.set_postfix(sigma=f"{sigma:.4g}", split="test")
        log_likelihood = _log_likelihoods(test, samples, float(sigma), batch_size, bar)
    values = log_likelihood.double()
    count = values.shape[0]
    mean = float(values.mean()) if count else math.nan
    stderr = float(values.std(unbiased=False) / math.sqrt(count)) if count else math.nan
    return ParzenResult(mean, stderr, float(sigma), log_likelihood, validation_means)

"""class_pairwise_kl: for each sample, the mean KL divergence to the samples of its class — the
inner quantity of DeLiGAN's modified inception score."""
from __future__ import annotations

import torch

from .. import backend
from ..reference import class_pairwise_kl as reference
from . import _checks

IMPLEMENTED = ("reference",)


def _check(probs, labels, eps):
    probs = _checks.float_tensor(probs, "probs")
    _checks.ndim(probs, "probs", 2, "(N, C)")
    num_samples, num_classes = probs.shape
    if num_classes == 0:
        raise ValueError("probs must have at least one class (C >= 1), got shape (N, 0)")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"eps must be a float > 0, got {eps!r}")
    if _checks.checking_values() and num_samples:
        if not bool(torch.isfinite(probs).all()):
            raise ValueError("probs must be finite")
        if float(probs.min()) < 0:
            raise ValueError(f"probs must be >= 0, got min {float(probs.min())}")
        row_sums = probs.sum(1)
        worst = float((row_sums - 1).abs().max())
        tolerance = 1e-3 if probs.dtype == torch.float32 else 1e-5
        if worst > tolerance:
            raise ValueError(f"probs rows must sum to 1 (within {tolerance}), worst row is off by {worst:.3g}")
    if labels is not None:
        _checks.int64_tensor(labels, "labels")
        if tuple(labels.shape) != (num_samples,):
            raise ValueError(f"labels must have shape (N,) = ({num_samples},), got {tuple(labels.shape)}")
        _checks.same_device({"probs": probs, "labels": labels})
        _checks.index_range(labels, "labels", num_classes)


def class_pairwise_kl(probs: torch.Tensor, labels: torch.Tensor | None = None,
                      eps: float = 1e-12) -> torch.Tensor:
    """out_i = mean over j with labels_j == labels_i (j = i included) of KL(p_i || p_j), with
    log p clamped as log max(p, eps).

    Args:
        probs: (N, C) class probabilities (rows sum to 1).
        labels: (N,) int64 in [0, C); default argmax of probs (ties to the lowest index).
        eps: clamp of the probabilities inside the logarithm.

    Returns:
        (N,) mean KL divergences, differentiable in probs.
    """
    _check(probs, labels, eps)
    if labels is None:
        labels = probs.argmax(1)
    backend.resolve("class_pairwise_kl", IMPLEMENTED, probs.device)
    return reference.class_pairwise_kl(probs, labels, eps)

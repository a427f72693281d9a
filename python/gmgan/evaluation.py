"""The one place that calls gmkernels.metrics (IS, mIS, FID, Parzen): it adapts their signatures
to what gmgan reports, so a change of theirs is fixed in this file only."""
from __future__ import annotations

import torch
from gmkernels import metrics


def inception_score(probs: torch.Tensor, splits: int = 10) -> tuple:
    """(mean, std) over contiguous splits (improved-gan's protocol)."""
    mean, std = metrics.inception_score(probs, splits=splits)
    return float(mean), float(std)


def modified_inception_score(probs: torch.Tensor, labels: torch.Tensor | None = None) -> tuple:
    """(mean, std) over predicted classes (DeLiGAN's published per-class form)."""
    mean, std = metrics.modified_inception_score(probs, labels=labels, mode="per_class")
    return float(mean), float(std)


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    return float(metrics.frechet_distance(features_a.double(), features_b.double()))


def parzen_log_likelihood(samples: torch.Tensor, test: torch.Tensor, validation: torch.Tensor,
                          progress: bool = False) -> dict:
    """{"mean", "stderr", "sigma"}: Parzen-window LL of test under samples, sigma chosen on
    validation from the published grid (goodfellow/adversarial's protocol)."""
    result = metrics.parzen_log_likelihood(samples, test, validation=validation, progress=progress)
    return {"mean": float(result.mean), "stderr": float(result.stderr), "sigma": float(result.sigma)}

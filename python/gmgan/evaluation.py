"""The one place that calls gmkernels.metrics (IS, mIS, FID, Parzen).

Those metrics are written in parallel with this layer; everything here adapts their final
signatures to what gmgan reports, so a signature change is fixed in this file only. A metric that
has not landed raises :class:`MetricUnavailable` (the callers record it as unavailable).
"""
from __future__ import annotations

import torch


class MetricUnavailable(RuntimeError):
    pass


def _metric(name: str):
    import gmkernels.metrics as metrics

    function = getattr(metrics, name, None)
    if function is None:
        raise MetricUnavailable(f"gmkernels.metrics.{name} is not available in this gmkernels build")
    return function


def available() -> dict:
    """name -> whether gmkernels.metrics provides it."""
    import gmkernels.metrics as metrics

    names = ("inception_score", "modified_inception_score", "frechet_distance", "parzen_log_likelihood")
    return {name: hasattr(metrics, name) for name in names}


def inception_score(probs: torch.Tensor, splits: int = 10) -> tuple:
    """(mean, std) over contiguous splits (improved-gan's protocol)."""
    mean, std = _metric("inception_score")(probs, splits=splits)
    return float(mean), float(std)


def modified_inception_score(probs: torch.Tensor, labels: torch.Tensor | None = None) -> tuple:
    """(mean, std) over predicted classes (DeLiGAN's published per-class form)."""
    mean, std = _metric("modified_inception_score")(probs, labels=labels, mode="per_class")
    return float(mean), float(std)


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    return float(_metric("frechet_distance")(features_a.double(), features_b.double()))


def parzen_log_likelihood(samples: torch.Tensor, test: torch.Tensor, validation: torch.Tensor,
                          progress: bool = False) -> dict:
    """{"mean", "stderr", "sigma"}: Parzen-window LL of test under samples, sigma chosen on
    validation from the published grid (goodfellow/adversarial's protocol)."""
    result = _metric("parzen_log_likelihood")(samples, test, validation=validation, progress=progress)
    return {"mean": float(result.mean), "stderr": float(result.stderr), "sigma": float(result.sigma)}

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


def _pair(result) -> tuple:
    if isinstance(result, dict):
        return float(result["mean"]), float(result["std"])
    mean, std = result
    return float(mean), float(std)


def inception_score(probs: torch.Tensor, splits: int = 10) -> tuple:
    """(mean, std) over contiguous splits (improved-gan's protocol)."""
    return _pair(_metric("inception_score")(probs, splits=splits))


def modified_inception_score(probs: torch.Tensor, labels: torch.Tensor | None = None) -> tuple:
    """(mean, std) over predicted classes (DeLiGAN's published per-class form)."""
    return _pair(_metric("modified_inception_score")(probs, labels=labels, mode="per_class"))


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    return float(_metric("frechet_distance")(features_a.double(), features_b.double()))


def parzen_log_likelihood(samples: torch.Tensor, test: torch.Tensor, validation: torch.Tensor) -> dict:
    """{"mean", "stderr", "sigma"}: Parzen-window LL of test under samples, sigma chosen on
    validation (goodfellow/adversarial's protocol)."""
    result = _metric("parzen_log_likelihood")(samples, test, validation=validation)
    if isinstance(result, dict):
        return {"mean": float(result["mean"]), "stderr": float(result.get("stderr", result.get("std_error"))),
                "sigma": float(result["sigma"])}
    if hasattr(result, "mean") and not isinstance(result, tuple):
        return {"mean": float(result.mean), "stderr": float(getattr(result, "stderr", getattr(result, "std_error", 0))),
                "sigma": float(result.sigma)}
    mean, stderr, sigma = result
    return {"mean": float(mean), "stderr": float(stderr), "sigma": float(sigma)}

"""Run any classifier or feature extractor (a callable) over many images in batches, and the
metrics on top of it. The callable is the caller's choice (an Inception-v3 for IS / FID, a
dataset-specific classifier for MNIST or sketches); put it in eval mode first."""
from __future__ import annotations

from typing import Callable, Iterable

import torch

from ..ops import _checks
from .frechet import GaussianMoments
from .inception import inception_score, modified_inception_score

Inputs = "torch.Tensor | Iterable[torch.Tensor]"  # annotation only


def _batches(inputs, batch_size: int, device):
    if isinstance(inputs, torch.Tensor):
        batch_size = _checks.int_at_least(batch_size, "batch_size", 1)
        batches = inputs.split(batch_size)
    else:
        batches = inputs
    for batch in batches:
        if not isinstance(batch, torch.Tensor):
            raise TypeError(f"inputs must be a tensor or an iterable of tensors, got a batch of"
                            f" {type(batch).__name__}")
        yield batch if device is None else batch.to(device)


def apply_in_batches(fn: Callable[[torch.Tensor], torch.Tensor], inputs: Inputs,
                     batch_size: int = 100, device=None) -> torch.Tensor:
    """fn applied to ``inputs`` batch by batch under torch.no_grad, outputs concatenated along
    dim 0 (on the device fn returns them on).

    Args:
        fn: callable mapping a (B, ...) batch to a (B, ...) tensor, e.g. ``lambda x:
            model(x).softmax(1)`` for class probabilities.
        inputs: a (N, ...) tensor, split into batches of ``batch_size`` rows; or any iterable of
            tensors (e.g. a DataLoader of image batches), used as given.
        device: where each batch is moved before ``fn`` (default: left where it is).
    """
    with torch.no_grad():
        outputs = [fn(batch) for batch in _batches(inputs, batch_size, device)]
    if not outputs:
        raise ValueError("inputs must hold at least one batch")
    return torch.cat(outputs)


def feature_moments(extractor: Callable[[torch.Tensor], torch.Tensor], inputs: Inputs,
                    batch_size: int = 100, device=None, all_reduce: bool = True) -> GaussianMoments:
    """Streaming mean and covariance of ``extractor``'s (B, d) features over ``inputs`` (see
    :func:`apply_in_batches` for the arguments), without keeping the features. With
    ``all_reduce`` (default) and torch.distributed initialized, each rank passes its shard and
    every rank gets the moments of all shards."""
    moments = GaussianMoments()
    with torch.no_grad():
        for batch in _batches(inputs, batch_size, device):
            moments.update(extractor(batch))
    return moments.all_reduce() if all_reduce else moments


def frechet_distance_of(extractor: Callable[[torch.Tensor], torch.Tensor], inputs_a: Inputs,
                        inputs_b: Inputs, batch_size: int = 100, device=None) -> float:
    """Fréchet distance between the features of two image sets (FID with an Inception-v3 pool3
    extractor), streamed batch by batch (and across ranks, see :func:`feature_moments`)."""
    moments_a = feature_moments(extractor, inputs_a, batch_size, device)
    moments_b = feature_moments(extractor, inputs_b, batch_size, device)
    return moments_a.frechet_distance(moments_b)


def inception_score_of(classifier: Callable[[torch.Tensor], torch.Tensor], inputs: Inputs,
                       splits: int = 10, batch_size: int = 100, device=None) -> tuple:
    """:func:`inception_score` of ``classifier``'s (B, C) probabilities over ``inputs``."""
    return inception_score(apply_in_batches(classifier, inputs, batch_size, device), splits)


def modified_inception_score_of(classifier: Callable[[torch.Tensor], torch.Tensor], inputs: Inputs,
                                mode: str = "per_class", batch_size: int = 100,
                                device=None) -> tuple:
    """:func:`modified_inception_score` of ``classifier``'s (B, C) probabilities over ``inputs``
    (classes = predicted classes)."""
    return modified_inception_score(apply_in_batches(classifier, inputs, batch_size, device),
                                    mode=mode)

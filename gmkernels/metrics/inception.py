"""Inception score (Salimans et al. 2016) and DeLiGAN's modified inception score, from class
probabilities p(y | x) of any classifier (apply it with gmkernels.metrics.apply_in_batches).

Both follow the published code, not the papers' formulas alone (docs/protocols.md):
  * IS:  openai/improved-gan, inception_score/model.py, get_inception_score;
  * mIS: val-iisc/deligan, src/modified_inception_scores/cifar10/transfer_cifar10_softmax_b1.py.
Everything is computed in float64.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ..ops import _checks
from ..ops.class_pairwise_kl import (check_eps, check_labels, check_num_classes,
                                     check_probabilities, class_pairwise_kl)


def _mean_std(values: torch.Tensor) -> tuple:
    """(mean, population std, ddof=0) of the finite entries, as Python floats (numpy's default)."""
    values = values[torch.isfinite(values)]
    if values.numel() == 0:
        return math.nan, math.nan
    return float(values.mean()), float(values.std(correction=0))


def inception_score(probs: torch.Tensor, splits: int = 10) -> tuple:
    """IS = exp(E_x KL(p(y|x) || p(y))) exactly as improved-gan's ``get_inception_score``.

    The N rows are cut into ``splits`` contiguous parts in the given order (no shuffle):
    part s = rows [s N // splits, (s + 1) N // splits). Per part, p(y) is the part's mean row and
    score_s = exp(mean over the part's rows of sum_c p_c (log p_c - log p(y)_c)). Returned:
    (mean, std) of the ``splits`` scores, std with ddof=0 (``np.std``). torch-fidelity shuffles
    before splitting and StudioGAN uses ddof=1: their numbers differ slightly.

    Args:
        probs: (N, C) softmax probabilities (rows sum to 1), N >= splits.
        splits: number of parts (improved-gan: 10).

    Returns:
        (mean, std) as Python floats. A zero probability contributes 0 (0 log 0 = 0), where
        improved-gan's code would give NaN.
    """
    probs = check_probabilities(probs, "probs")
    splits = _checks.int_at_least(splits, "splits", 1)
    num_samples = probs.shape[0]
    if num_samples < splits:
        raise ValueError(f"probs must have at least splits = {splits} rows, got {num_samples}")
    probs = probs.detach().double()
    scores = []
    for s in range(splits):
        part = probs[s * num_samples // splits:(s + 1) * num_samples // splits]
        marginal = part.mean(0, keepdim=True)
        kl = (torch.special.xlogy(part, part) - torch.special.xlogy(part, marginal)).sum(1)
        scores.append(torch.exp(kl.mean()))
    return _mean_std(torch.stack(scores))


class ClassScores(NamedTuple):
    """Per-class modified inception scores, as DeLiGAN's script prints them (tensors of shape
    (K,), float64; NaN for classes without samples)."""
    score: torch.Tensor       # exp(mean over the class's samples of class_pairwise_kl)
    count: torch.Tensor       # samples per class (int64)
    split_mean: torch.Tensor  # mean over the class's splits of exp(mean kl in the split)
    split_std: torch.Tensor   # their std, ddof=0 (the "± 0.01" of the paper's table cells)


def _class_setup(probs, labels, eps, num_classes):
    probs = check_probabilities(probs, "probs")
    num_samples, num_categories = probs.shape
    if num_samples == 0:
        raise ValueError("probs must have at least one row")
    eps = check_eps(eps, torch.float64)
    num_classes = check_num_classes(num_classes, num_categories)
    if labels is None:
        if num_classes < num_categories:
            raise ValueError(f"num_classes must be >= C = {num_categories} when labels default to"
                             f" argmax(probs), got {num_classes}")
        labels = probs.argmax(1)
    else:
        check_labels(labels, num_samples, num_classes, probs.device)
    probs = probs.detach().double()
    return probs, labels, eps, num_classes


def modified_inception_score_per_class(probs: torch.Tensor, labels: torch.Tensor | None = None,
                                       splits: int = 10, *, eps: float = 1e-12,
                                       num_classes: int | None = None) -> ClassScores:
    """Per-class modified inception scores exactly as DeLiGAN's published script computes them.

    Class c = the samples whose label is c (default: predicted class, argmax p). For each such
    sample i, kl_i = mean over ALL samples j of class c (j = i included) of KL(p_i || p_j)
    (gmkernels.class_pairwise_kl, O(N C)); score_c = exp(mean_{i in c} kl_i). For the table cells'
    spread, the class's kl_i (in sample order) are cut into ``splits`` contiguous parts
    [j n_c // splits, (j + 1) n_c // splits); split_mean / split_std are the mean and the ddof=0
    std of exp(mean kl in part j). Differences from the script: log max(p, eps) where it takes
    log p (a zero probability gave NaN there), and empty parts (classes with fewer than
    ``splits`` samples) are skipped where the script produced NaN.
    """
    probs, labels, eps, num_classes = _class_setup(probs, labels, eps, num_classes)
    splits = _checks.int_at_least(splits, "splits", 1)
    kl = class_pairwise_kl(probs, labels, eps, num_classes=num_classes)
    device = probs.device
    count = torch.bincount(labels, minlength=num_classes)
    sums = torch.zeros(num_classes, dtype=torch.float64, device=device).index_add_(0, labels, kl)
    score = torch.exp(sums / count)  # 0 / 0 = NaN for empty classes
    # Contiguous parts of each class's kl in sample order, by prefix sums over the class-sorted kl.
    order = torch.argsort(labels, stable=True)
    prefix = torch.zeros(labels.shape[0] + 1, dtype=torch.float64, device=device)
    prefix[1:] = torch.cumsum(kl[order], 0)
    class_begin = torch.cumsum(count, 0) - count
    part = torch.arange(splits + 1, device=device)
    bounds = class_begin[:, None] + (part[None, :] * count[:, None]) // splits   # (K, splits + 1)
    part_size = (bounds[:, 1:] - bounds[:, :-1]).double()
    part_score = torch.exp((prefix[bounds[:, 1:]] - prefix[bounds[:, :-1]]) / part_size)
    part_score = torch.where(part_size > 0, part_score, torch.nan)
    valid = torch.isfinite(part_score)
    parts = valid.sum(1)
    split_mean = torch.where(valid, part_score, 0).sum(1) / parts
    split_var = torch.where(valid, (part_score - split_mean[:, None]) ** 2, 0).sum(1) / parts
    return ClassScores(score, count, split_mean, split_var.sqrt())


def modified_inception_score(probs: torch.Tensor, labels: torch.Tensor | None = None,
                             mode: str = "per_class", *, eps: float = 1e-12,
                             num_classes: int | None = None) -> tuple:
    """DeLiGAN's modified inception score, mIS = exp(E_i E_j KL(p(y|x_i) || p(y|x_j))) with x_j
    ranging over the samples of x_i's class (predicted class unless ``labels`` are given).

    mode="per_class" (default, the published code): score_c = exp(mean_{i in c} kl_i) per class
    with samples (see :func:`modified_inception_score_per_class`); returns (mean, std) over
    those classes, std with ddof=0 — how the paper's "Overall" column is made (the sketch table
    in seed 000 reproduces under this rule).
    mode="global" (the slide deck's formula): exp(mean over all N samples of kl_i), a single
    number; returned as (score, nan).

    Returns:
        (mean, std) as Python floats.
    """
    if mode not in ("per_class", "global"):
        raise ValueError(f"mode must be 'per_class' or 'global', got {mode!r}")
    if mode == "global":
        probs, labels, eps, num_classes = _class_setup(probs, labels, eps, num_classes)
        kl = class_pairwise_kl(probs, labels, eps, num_classes=num_classes)
        return float(torch.exp(kl.mean())), math.nan
    scores = modified_inception_score_per_class(probs, labels, eps=eps, num_classes=num_classes)
    return _mean_std(scores.score)

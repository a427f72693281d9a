"""Improved precision and recall (Kynkäänniemi et al. 2019) and density and coverage (Naeem et al.
2020) of generated features against real ones, from k-nearest-neighbour balls:

- the radius r(x) of a sample x is the distance to its k-th nearest neighbour within its own set,
  excluding x itself once by index (a duplicate of x is a neighbour at distance 0: the published
  code of both papers takes the (k+1)-th smallest distance with the self distance among them);
- precision: the fraction of fake samples inside some real ball (dist(real, fake) <= r(real));
- recall: the fraction of real samples inside some fake ball;
- density: (1 / (k M)) * sum over fake samples of the number of real balls containing them
  (M fake samples; it can exceed 1);
- coverage: the fraction of real samples whose nearest fake sample lies inside their own ball.

A sample on a ball's boundary is inside (``<=``, as the improved precision/recall code compares;
the density/coverage code compares with ``<``, which differs only on exact ties, e.g. duplicates
with a radius of 0). Every number comes from :func:`gmkernels.nearest_neighbors` in three tiled
passes (the radii of each set, then the real x fake pairs once): no N x M distance matrix, and a pair's distance is computed the same way in each pass,
so ties are decided exactly.
"""
from __future__ import annotations

import dataclasses

import torch

from ..ops import _checks
from ..ops.nearest_neighbors import nearest_neighbors


@dataclasses.dataclass(frozen=True)
class PrecisionRecall:
    precision: float
    recall: float
    density: float
    coverage: float


def _check(real, fake, k):
    for value, name in ((real, "real_features"), (fake, "fake_features")):
        _checks.float_tensor(value, name)
        _checks.ndim(value, name, 2, "(N, D)")
    if fake.shape[1] != real.shape[1]:
        raise ValueError(f"fake_features must have the feature size of real_features "
                         f"({real.shape[1]}), got shape {tuple(fake.shape)}")
    _checks.same_dtype({"real_features": real, "fake_features": fake})
    _checks.same_device({"real_features": real, "fake_features": fake})
    k = _checks.int_at_least(k, "k", 1)
    smallest = min(real.shape[0], fake.shape[0])
    if k >= smallest:
        raise ValueError(f"k must be smaller than the number of samples in each set "
                         f"(real {real.shape[0]}, fake {fake.shape[0]}), got {k}")


def precision_recall(real_features: torch.Tensor, fake_features: torch.Tensor,
                     k: int = 3) -> PrecisionRecall:
    """Precision, recall, density and coverage of ``fake_features`` against ``real_features``.

    Args:
        real_features: (N, D) float32 or float64, finite.
        fake_features: (M, D), same dtype, device and D.
        k: the neighbour that sets each ball's radius, 1 <= k < min(N, M) (the papers use 3 for
            precision/recall and 5 for density/coverage).

    Returns:
        ``PrecisionRecall(precision, recall, density, coverage)`` as Python floats.
    """
    _check(real_features, fake_features, k)
    with torch.no_grad():
        real_radii = nearest_neighbors(real_features, real_features, k, exclude_self=True).kth_distance
        fake_radii = nearest_neighbors(fake_features, fake_features, k, exclude_self=True).kth_distance
        # One pass over the real x fake pairs: each real sample's nearest fake one (coverage),
        # the fake balls holding each real sample (recall), the real balls holding each fake one
        # (precision, density).
        cross = nearest_neighbors(real_features, fake_features, 1, radii=fake_radii,
                                  query_radii=real_radii)
    # Counts over counts: a device's mean (a sum times 1/M) can be off the fraction by a rounding
    # (3 x 0.2 on a GPU, not 3 / 5).
    num_real, num_fake = real_features.shape[0], fake_features.shape[0]
    return PrecisionRecall(
        precision=int((cross.points_within > 0).sum()) / num_fake,
        recall=int((cross.within > 0).sum()) / num_real,
        density=int(cross.points_within.sum()) / (k * num_fake),
        coverage=int((cross.kth_distance <= real_radii).sum()) / num_real,
    )

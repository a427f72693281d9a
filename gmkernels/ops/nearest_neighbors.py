"""nearest_neighbors: the k-th nearest-neighbour distance of each query row among a set of
points, how many of the points' balls contain each query row, and how many of the query rows'
balls contain each point, in tiles (never a Q x M matrix).

The k-NN radii, precision, recall, density and coverage of gmkernels.metrics.precision_recall
are these numbers. Not differentiable: a backward through it raises.
"""
from __future__ import annotations

import math

import torch

from ..reference import nearest_neighbors as reference
from ..reference.nearest_neighbors import NearestNeighbors
from . import _checks, _registry


def _check_radii(radii, name, count, layout):
    radii = _checks.float_tensor(radii, name)
    _checks.ndim(radii, name, 1, layout)
    if radii.shape[0] != count:
        raise ValueError(f"{name} must be {layout} = ({count},), got shape {tuple(radii.shape)}")
    if _checks.checking_values() and radii.numel() and math.isnan(_checks.summary(radii).low):
        raise ValueError(f"{name} must not be NaN")


def _check(query, points, radii, query_radii, k, exclude_self):
    query = _checks.float_tensor(query, "query")
    points = _checks.float_tensor(points, "points")
    _checks.ndim(query, "query", 2, "(Q, D)")
    _checks.ndim(points, "points", 2, "(M, D)")
    if points.shape[1] != query.shape[1]:
        raise ValueError(f"points must have query's feature size D = {query.shape[1]}, "
                         f"got shape {tuple(points.shape)}")
    if radii is not None:
        _check_radii(radii, "radii", points.shape[0], "(M,)")
    if query_radii is not None:
        _check_radii(query_radii, "query_radii", query.shape[0], "(Q,)")
    named = {"query": query, "points": points, "radii": radii, "query_radii": query_radii}
    _checks.same_dtype(named)
    _checks.same_device(named)
    if not isinstance(exclude_self, bool):
        raise TypeError(f"exclude_self must be a bool, got {type(exclude_self).__name__}")
    if exclude_self and query.shape[0] != points.shape[0]:
        raise ValueError(f"exclude_self needs query row i to be point i (as many rows), got "
                         f"{query.shape[0]} query rows and {points.shape[0]} points")
    candidates = points.shape[0] - (1 if exclude_self else 0)
    k = _checks.int_at_least(k, "k", 1)
    if k > candidates:
        raise ValueError(f"k must be in [1, {candidates}] (the points"
                         f"{' other than the row itself' if exclude_self else ''}), got {k}")
    _checks.finite(query, "query")
    _checks.finite(points, "points")


def nearest_neighbors(query: torch.Tensor, points: torch.Tensor, k: int = 1, *,
                      radii: torch.Tensor | None = None, query_radii: torch.Tensor | None = None,
                      exclude_self: bool = False) -> NearestNeighbors:
    """k-th nearest-neighbour distances and ball counts, for query rows q_i among points p_j.

    Args:
        query: (Q, D) float32 or float64, finite.
        points: (M, D), query's dtype and device, finite.
        k: which neighbour, 1 <= k <= M (M - 1 with ``exclude_self``).
        radii: optional (M,) ball radii of the points, query's dtype (not NaN).
        query_radii: optional (Q,) ball radii of the query rows, query's dtype (not NaN).
        exclude_self: query row i is point i (pass the same set twice): the pair (i, i) is
            skipped, once, by index. A duplicate of row i elsewhere in the set is still a
            neighbour, at distance 0 — the published improved precision/recall and
            density/coverage code takes the (k+1)-th smallest distance with the self distance 0
            among them, which is the same rule.

    Returns:
        ``NearestNeighbors(kth_distance, within, points_within)``: kth_distance (Q,) in query's
        dtype, the k-th smallest Euclidean distance from q_i to the points; within (Q,) int64,
        the number of points j with dist(p_j, q_i) <= radii_j (zeros without ``radii``);
        points_within (M,) int64, the number of query rows i with dist(p_j, q_i) <=
        query_radii_i (zeros without ``query_radii``). A distance equal to a radius is inside.

    Ties are exact: each backend computes a pair's distance by one expression in every call
    (the C++ kernels as sqrt(max(||p||^2 + ||q||^2 - 2 <p, q>, 0)) with the squared norms
    evaluated by the same dot-product code, so a duplicate is at exactly 0; the reference,
    Triton and CUDA as sqrt(sum (p - q)^2)), so the k-th neighbour of a point lies exactly on
    the radius it defines. Memory beyond inputs and outputs is a tile per thread (the C++ kernel:
    also each thread's running top-k and count of every query row), never Q x M. The C++ kernel
    visits each pair once for both rows when ``query`` and ``points`` are the same tensor with
    ``exclude_self`` and no radii (half the work). Not differentiable.
    """
    _check(query, points, radii, query_radii, k, exclude_self)
    return _OP(query.device, query, points, radii, query_radii, k, exclude_self)


def _fake(query, points, radii, query_radii, k, exclude_self):
    return (query.new_empty(query.shape[0]),
            query.new_empty(query.shape[0], dtype=torch.int64),
            query.new_empty(points.shape[0], dtype=torch.int64))


_OP = _registry.register(_registry.OpDeclaration(
    name="nearest_neighbors",
    schema="nearest_neighbors(Tensor query, Tensor points, Tensor? radii, Tensor? query_radii, int k,"
           " bool exclude_self) -> (Tensor, Tensor, Tensor)",
    reference=reference.nearest_neighbors,
    fake=_fake,
    result=lambda outputs: NearestNeighbors(*outputs),
))
IMPLEMENTED = _OP.implemented

"""Reference nearest_neighbors: for query rows q_i and point rows p_j,

    dist(p_j, q_i) = sqrt(sum_d (p_jd - q_id)^2)
    kth_distance_i = the k-th smallest dist(p_j, q_i) over j (j != i with exclude_self)
    within_i        = #{j : dist(p_j, q_i) <= radii_j}         (0 without radii)
    points_within_j = #{i : dist(p_j, q_i) <= query_radii_i}   (0 without query_radii)

with the pair (i, i) left out of all three under exclude_self.

Self-exclusion is by index, once: a duplicate of q_i among the points is a neighbour at distance
exactly 0. Every pair's distance comes from one expression, whichever chunk of rows it falls in,
so a point whose k-th neighbour defines its radius lies exactly on that radius. Rows are taken in
chunks so that a chunk's (rows, M, D) differences stay near 64 MB; nothing is kept of Q x M but
one chunk's distances."""
from __future__ import annotations

import collections

import torch

NearestNeighbors = collections.namedtuple("NearestNeighbors",
                                          ["kth_distance", "within", "points_within"])

_CHUNK_ELEMENTS = 1 << 23


def pair_distances(points: torch.Tensor, query_rows: torch.Tensor) -> torch.Tensor:
    """(rows, M): dist(p_j, q_i) for the given query rows, the one expression of a pair's distance."""
    return (points[None, :, :] - query_rows[:, None, :]).square().sum(-1).sqrt()


def nearest_neighbors(query: torch.Tensor, points: torch.Tensor, radii, query_radii, k: int,
                      exclude_self: bool) -> NearestNeighbors:
    num_queries, num_points = query.shape[0], points.shape[0]
    chunk = max(1, _CHUNK_ELEMENTS // max(1, num_points * query.shape[1]))
    kth_distance = query.new_empty(num_queries)
    within = torch.zeros(num_queries, dtype=torch.int64, device=query.device)
    points_within = torch.zeros(num_points, dtype=torch.int64, device=query.device)
    for start in range(0, num_queries, chunk):
        rows = torch.arange(start, min(start + chunk, num_queries), device=query.device)
        distance = pair_distances(points, query[rows])
        counted = torch.ones_like(distance, dtype=torch.bool)
        if exclude_self:
            counted[torch.arange(len(rows), device=query.device), rows] = False
        candidates = distance.masked_fill(~counted, float("inf"))
        kth_distance[rows] = candidates.kthvalue(k, dim=1).values
        if radii is not None:
            within[rows] = ((distance <= radii[None, :]) & counted).sum(1)
        if query_radii is not None:
            points_within += ((distance <= query_radii[rows, None]) & counted).sum(0)
    return NearestNeighbors(kth_distance, within, points_within)

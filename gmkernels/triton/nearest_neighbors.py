"""Triton kernel of nearest_neighbors (math in gmkernels/ops/nearest_neighbors.py).

One program owns BLOCK_Q query rows and sweeps the points in tiles of BLOCK_P, holding one
(BLOCK_Q, BLOCK_P, BLOCK_D) difference tile at a time: memory O((Q + M) D), never Q x M. A pair's
squared distance is sum_d (p_jd - q_id)^2, chunk after chunk of BLOCK_D coordinates, by the same
code for every pair, so a duplicate is at exactly 0 and ties are exact. Each row keeps its
BLOCK_P (>= k) smallest squared distances sorted; a tile is merged by sorting it, pairing it
reversed with the kept ones (the elementwise minimum of an ascending and a descending sequence
holds the BLOCK_P smallest of both) and sorting again. A point's count of query balls is an
integer atomic add (exact in any order).
``nearest_neighbors`` is the launcher, registered by gmkernels/ops/_registry.py from the
declaration in gmkernels/ops/nearest_neighbors.py.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

_BLOCK_Q = 16
_BLOCK_D = 16


def _accumulator(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


@triton.jit
def _squared_distances(query, points, rows, cols, num_queries, num_points, dim,
                       BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr,
                       ACC: tl.constexpr):
    """(BLOCK_Q, BLOCK_P): sum_d (p_jd - q_id)^2, the one expression of a pair's distance."""
    total = tl.zeros([BLOCK_Q, BLOCK_P], dtype=ACC)
    for d0 in range(0, dim, BLOCK_D):
        coords = d0 + tl.arange(0, BLOCK_D)
        q = tl.load(query + rows[:, None] * dim + coords[None, :],
                    mask=(rows[:, None] < num_queries) & (coords[None, :] < dim), other=0.0).to(ACC)
        p = tl.load(points + cols[:, None] * dim + coords[None, :],
                    mask=(cols[:, None] < num_points) & (coords[None, :] < dim), other=0.0).to(ACC)
        difference = p[None, :, :] - q[:, None, :]
        total += tl.sum(difference * difference, axis=2)
    return total


@triton.jit
def _kernel(query, points, radii, query_radii, kth_distance, within, points_within,
            num_queries, num_points, dim, k,
            EXCLUDE_SELF: tl.constexpr, HAS_RADII: tl.constexpr, HAS_QUERY_RADII: tl.constexpr,
            BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr,
            ACC: tl.constexpr):
    # int64: rows * dim passes 2^31 for large inputs.
    rows = tl.program_id(0).to(tl.int64) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    best = tl.full([BLOCK_Q, BLOCK_P], float("inf"), dtype=ACC)
    count = tl.zeros([BLOCK_Q], dtype=tl.int64)
    if HAS_QUERY_RADII:
        query_radius = tl.load(query_radii + rows, mask=rows < num_queries, other=-1.0).to(ACC)
    for p0 in range(0, num_points, BLOCK_P):
        cols = (p0 + tl.arange(0, BLOCK_P)).to(tl.int64)
        squared = _squared_distances(query, points, rows, cols, num_queries, num_points, dim,
                                     BLOCK_Q, BLOCK_P, BLOCK_D, ACC)
        counted = (cols[None, :] < num_points) & (rows[:, None] < num_queries)
        if EXCLUDE_SELF:
            counted = counted & (cols[None, :] != rows[:, None])
        if HAS_RADII:
            radius = tl.load(radii + cols, mask=cols < num_points, other=0.0).to(ACC)
            inside = counted & (tl.sqrt(squared) <= radius[None, :])
            count += tl.sum(inside.to(tl.int64), axis=1)
        if HAS_QUERY_RADII:
            covering = counted & (tl.sqrt(squared) <= query_radius[:, None])
            tl.atomic_add(points_within + cols, tl.sum(covering.to(tl.int64), axis=0),
                          mask=cols < num_points)
        tile = tl.sort(tl.where(counted, squared, float("inf")), dim=1)
        best = tl.sort(tl.minimum(best, tl.flip(tile, dim=1)), dim=1)
    position = tl.arange(0, BLOCK_P)
    kth = tl.sum(tl.where(position[None, :] == k - 1, best, 0.0), axis=1)
    tl.store(kth_distance + rows, tl.sqrt(kth).to(kth_distance.dtype.element_ty),
             mask=rows < num_queries)
    tl.store(within + rows, count, mask=rows < num_queries)


def nearest_neighbors(query: torch.Tensor, points: torch.Tensor, radii, query_radii, k: int,
                      exclude_self: bool):
    query, points = query.contiguous(), points.contiguous()
    num_queries, dim = query.shape
    kth_distance = torch.empty(num_queries, dtype=query.dtype, device=query.device)
    within = torch.empty(num_queries, dtype=torch.int64, device=query.device)
    points_within = torch.zeros(points.shape[0], dtype=torch.int64, device=query.device)
    if num_queries == 0:
        return kth_distance, within, points_within
    block_p = max(16, triton.next_power_of_2(k))
    grid = (triton.cdiv(num_queries, _BLOCK_Q),)
    _kernel[grid](query, points, radii.contiguous() if radii is not None else query,
                  query_radii.contiguous() if query_radii is not None else query,
                  kth_distance, within, points_within, num_queries, points.shape[0], dim, k,
                  EXCLUDE_SELF=exclude_self, HAS_RADII=radii is not None,
                  HAS_QUERY_RADII=query_radii is not None,
                  BLOCK_Q=_BLOCK_Q, BLOCK_P=block_p, BLOCK_D=_BLOCK_D, ACC=_accumulator(query.dtype))
    return kth_distance, within, points_within

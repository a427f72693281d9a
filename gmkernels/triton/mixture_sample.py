"""Triton kernels of mixture_sample (math in csrc/kernels/mixture_sample.h).

eps is Triton's own ``tl.randn4x`` stream, the one every backend reproduces: sample s,
coordinate k uses counter ``s * ceil(K/4) + k // 4``, lane ``k % 4``. The backward regenerates it.

- forward, diagonal: a program writes a (samples x 4 * groups) tile of z; the four randn4x lanes
  are interleaved back into row order with ``tl.join``.
- forward, full: samples grouped by component (a stable argsort); a program computes
  Z = E L^T for 32 samples of one component and 32 output rows, over column tiles of L up to the
  diagonal (``tl.dot`` in IEEE fp32 so CPU and GPU agree).
- backward: per component, a program owns a slice of the gradient and sums its samples tile by
  tile in sample order. Under ``torch.are_deterministic_algorithms_enabled()`` each slice has one
  program and plain stores (same bits every run); otherwise a component's samples are split over
  several programs that add with ``tl.atomic_add``.

``mixture_sample`` and ``mixture_sample_backward`` are the launchers; gmkernels/ops/_registry.py
registers them as ``torch.ops.gmkernels_triton.*`` with the schemas, fake tensors and autograd
declared in gmkernels/ops/mixture_sample.py, the compiled ops' own.
"""
from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
# Tile sizes. tl.dot needs >= 16 on NVIDIA. The interpreter costs ~20 ms per program whatever
# its size, so there the sample tiles are larger (fewer programs).
DIAGONAL_SAMPLES = 256 if _INTERPRETED else 32   # samples per diagonal tile
DIAGONAL_GROUPS = 32 if _INTERPRETED else 64     # Philox counters (4 coordinates each) per tile
FULL_SAMPLES = 256 if _INTERPRETED else 32       # samples per full-scale tile
FULL_ROWS = 32                                   # output rows per full-scale tile
FULL_COLUMNS = 32                                # columns of L (or eps) per inner step
# CUDA limits grid axes 1 and 2 to 65535 programs: the full-scale backward's row_tiles^2 tile
# pairs (more than that when K > 8160) are spread over both axes.
MAX_GRID_Y = 65535


@triton.jit
def _normals(seed, sample, group0, GROUPS: tl.constexpr, groups_per_row):
    """eps[b, 4 g + l] for the rows `sample` (int64 block) and the counters group0 .. + GROUPS:
    a (len(sample), 4 * GROUPS) float32 tile in row order."""
    group = group0 + tl.arange(0, GROUPS)
    offset = sample[:, None] * groups_per_row + group[None, :]
    n0, n1, n2, n3 = tl.randn4x(seed, offset)
    # join(join(n0, n2), join(n1, n3))[..., i, j] is lane 2 i + j: flattening gives lane order.
    quad = tl.join(tl.join(n0, n2), tl.join(n1, n3))
    return tl.reshape(quad, (sample.shape[0], 4 * GROUPS))


@triton.jit
def _forward_diagonal_kernel(z_ptr, mu_ptr, sigma_ptr, component_ptr, seed, num_samples, dim,
                             groups_per_row, BLOCK_S: tl.constexpr, BLOCK_G: tl.constexpr):
    sample = tl.program_id(0).to(tl.int64) * BLOCK_S + tl.arange(0, BLOCK_S)
    group0 = tl.program_id(1).to(tl.int64) * BLOCK_G
    k = 4 * group0 + tl.arange(0, 4 * BLOCK_G)
    row_ok = sample < num_samples
    mask = row_ok[:, None] & (k < dim)[None, :]
    eps = _normals(seed, sample, group0, BLOCK_G, groups_per_row)
    c = tl.load(component_ptr + sample, mask=row_ok, other=0)
    at_component = c[:, None] * dim + k[None, :]
    mu = tl.load(mu_ptr + at_component, mask=mask)
    sigma = tl.load(sigma_ptr + at_component, mask=mask)
    tl.store(z_ptr + sample[:, None] * dim + k[None, :], mu + sigma * eps.to(mu.dtype), mask=mask)


@triton.jit
def _slot_range(begin_ptr, num_components, slot, SEARCH_STEPS: tl.constexpr,
                BLOCK_S: tl.constexpr):
    """Sorted positions [first, last) of `slot` and its component: tiles of BLOCK_S sorted
    positions cut at component boundaries; component c's slots start at begin[c] // BLOCK_S + c
    (strictly increasing), found by binary search."""
    low = slot * 0
    high = low + num_components - 1
    for _ in range(SEARCH_STEPS):
        searching = low < high
        mid = (low + high + 1) // 2
        fits = tl.load(begin_ptr + mid) // BLOCK_S + mid <= slot
        low = tl.where(searching & fits, mid, low)
        high = tl.where(searching & ~fits, mid - 1, high)
    tile = slot - low
    first = tl.maximum(tl.load(begin_ptr + low), tile * BLOCK_S)
    last = tl.minimum(tl.load(begin_ptr + low + 1), (tile + 1) * BLOCK_S)
    return low, first, last


@triton.jit
def _forward_full_kernel(z_ptr, mu_ptr, scale_ptr, sorted_ptr, begin_ptr, seed, num_components,
                         dim, groups_per_row, SEARCH_STEPS: tl.constexpr, BLOCK_S: tl.constexpr,
                         BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr):
    slot = tl.program_id(0).to(tl.int64)
    i0 = tl.program_id(1) * BLOCK_I  # int32, like dim: the column loop bounds share one type
    c, first, last = _slot_range(begin_ptr, num_components, slot, SEARCH_STEPS, BLOCK_S)
    if first < last:
        position = first + tl.arange(0, BLOCK_S)
        row_ok = position < last
        sample = tl.load(sorted_ptr + position, mask=row_ok, other=0)
        i = i0 + tl.arange(0, BLOCK_I)
        factor = scale_ptr + c * dim * dim
        mu = tl.load(mu_ptr + c * dim + i, mask=i < dim, other=0.0)
        acc = tl.zeros((BLOCK_S, BLOCK_I), dtype=mu.dtype)
        # L[i, j] = 0 for j > i: column tiles past the last row of the tile add nothing.
        for j0 in range(0, tl.minimum(i0 + BLOCK_I, dim), BLOCK_J):
            j = j0 + tl.arange(0, BLOCK_J)
            eps = _normals(seed, sample, j0 // 4, BLOCK_J // 4, groups_per_row)
            eps = tl.where(row_ok[:, None] & (j < dim)[None, :], eps, 0.0).to(mu.dtype)
            lower = (j[:, None] <= i[None, :]) & (i < dim)[None, :]
            tril_t = tl.load(factor + i[None, :].to(tl.int64) * dim + j[:, None], mask=lower,
                             other=0.0)
            # out_dtype: Triton before 3.9 defaults to float32 and refuses a float64 accumulator
            # (compiling for a GPU; the interpreter does not check).
            acc = tl.dot(eps, tril_t, acc, input_precision="ieee", out_dtype=acc.dtype)
        z = acc + mu[None, :]
        tl.store(z_ptr + sample[:, None] * dim + i[None, :], z,
                 mask=row_ok[:, None] & (i < dim)[None, :])


@triton.jit
def _backward_diagonal_kernel(grad_mu_ptr, grad_sigma_ptr, grad_z_ptr, sorted_ptr, begin_ptr,
                              seed, dim, groups_per_row, SPLITS: tl.constexpr,
                              BLOCK_S: tl.constexpr, BLOCK_G: tl.constexpr):
    owner = tl.program_id(0)
    c = (owner // SPLITS).to(tl.int64)
    split = owner % SPLITS
    group0 = tl.program_id(1).to(tl.int64) * BLOCK_G
    k = 4 * group0 + tl.arange(0, 4 * BLOCK_G)
    component_first = tl.load(begin_ptr + c)
    count = tl.load(begin_ptr + c + 1) - component_first
    first = component_first + count * split // SPLITS
    last = component_first + count * (split + 1) // SPLITS
    sum_grad = tl.zeros((4 * BLOCK_G,), dtype=grad_mu_ptr.dtype.element_ty)
    sum_grad_eps = tl.zeros((4 * BLOCK_G,), dtype=grad_mu_ptr.dtype.element_ty)
    for start in range(first, last, BLOCK_S):
        position = start + tl.arange(0, BLOCK_S)
        row_ok = position < last
        sample = tl.load(sorted_ptr + position, mask=row_ok, other=0)
        mask = row_ok[:, None] & (k < dim)[None, :]
        grad = tl.load(grad_z_ptr + sample[:, None] * dim + k[None, :], mask=mask, other=0.0)
        eps = _normals(seed, sample, group0, BLOCK_G, groups_per_row).to(grad.dtype)
        sum_grad += tl.sum(grad, axis=0)
        sum_grad_eps += tl.sum(grad * eps, axis=0)
    out = c * dim + k
    if SPLITS == 1:
        tl.store(grad_mu_ptr + out, sum_grad, mask=k < dim)
        tl.store(grad_sigma_ptr + out, sum_grad_eps, mask=k < dim)
    else:
        tl.atomic_add(grad_mu_ptr + out, sum_grad, mask=k < dim)
        tl.atomic_add(grad_sigma_ptr + out, sum_grad_eps, mask=k < dim)


@triton.jit
def _backward_full_kernel(grad_mu_ptr, grad_scale_ptr, grad_z_ptr, sorted_ptr, begin_ptr, seed,
                          dim, groups_per_row, row_tiles, grid_y, SPLITS: tl.constexpr,
                          BLOCK_S: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr):
    owner = tl.program_id(0)
    # The row_tiles^2 tile pairs are split over grid axes 1 and 2 (each at most MAX_GRID_Y).
    pair = tl.program_id(2).to(tl.int64) * grid_y + tl.program_id(1)
    row_tile = pair // row_tiles
    column_tile = pair % row_tiles
    # Tiles above the diagonal hold no gradient; pairs past the last fill the final grid row.
    if (column_tile <= row_tile) & (row_tile < row_tiles):
        c = (owner // SPLITS).to(tl.int64)
        split = owner % SPLITS
        i = row_tile.to(tl.int64) * BLOCK_I + tl.arange(0, BLOCK_I)
        j0 = column_tile.to(tl.int64) * BLOCK_J
        j = j0 + tl.arange(0, BLOCK_J)
        component_first = tl.load(begin_ptr + c)
        count = tl.load(begin_ptr + c + 1) - component_first
        first = component_first + count * split // SPLITS
        last = component_first + count * (split + 1) // SPLITS
        dtype = grad_mu_ptr.dtype.element_ty
        acc = tl.zeros((BLOCK_I, BLOCK_J), dtype=dtype)
        sum_grad = tl.zeros((BLOCK_I,), dtype=dtype)
        for start in range(first, last, BLOCK_S):
            position = start + tl.arange(0, BLOCK_S)
            row_ok = position < last
            sample = tl.load(sorted_ptr + position, mask=row_ok, other=0)
            grad = tl.load(grad_z_ptr + sample[:, None] * dim + i[None, :],
                           mask=row_ok[:, None] & (i < dim)[None, :], other=0.0)
            eps = _normals(seed, sample, j0 // 4, BLOCK_J // 4, groups_per_row)
            eps = tl.where(row_ok[:, None] & (j < dim)[None, :], eps, 0.0).to(dtype)
            acc = tl.dot(tl.trans(grad), eps, acc, input_precision="ieee", out_dtype=acc.dtype)
            sum_grad += tl.sum(grad, axis=0)
        lower = (j[None, :] <= i[:, None]) & (i < dim)[:, None]
        out = grad_scale_ptr + c * dim * dim + i[:, None] * dim + j[None, :]
        if SPLITS == 1:
            tl.store(out, acc, mask=lower)
        else:
            tl.atomic_add(out, acc, mask=lower)
        if column_tile == 0:
            if SPLITS == 1:
                tl.store(grad_mu_ptr + c * dim + i, sum_grad, mask=i < dim)
            else:
                tl.atomic_add(grad_mu_ptr + c * dim + i, sum_grad, mask=i < dim)


def _grouping(component: torch.Tensor, num_components: int):
    """(sorted sample ids, component_begin (N + 1,)): a stable sort keeps sample order inside a
    component, which fixes the order of the deterministic backward's sums."""
    sorted_component, order = torch.sort(component, stable=True)
    boundaries = torch.arange(num_components + 1, device=component.device, dtype=torch.int64)
    return order.contiguous(), torch.searchsorted(sorted_component, boundaries).contiguous()


def _splits(num_samples: int, num_components: int) -> int:
    """Programs per component on the atomic path: ~1024 samples each (as the CUDA backend)."""
    if torch.are_deterministic_algorithms_enabled():
        return 1
    per_component = -(-num_samples // num_components)
    return max(1, min(64, per_component // 1024))


def _search_steps(num_components: int) -> int:
    return max(1, math.ceil(math.log2(num_components + 1)))


def mixture_sample(mu: torch.Tensor, scale: torch.Tensor, component: torch.Tensor,
                   seed: torch.Tensor) -> torch.Tensor:
    mu, scale, component = mu.contiguous(), scale.contiguous(), component.contiguous()
    num_components, dim = mu.shape
    num_samples = component.shape[0]
    z = mu.new_empty(num_samples, dim)
    if z.numel() == 0:
        return z
    seed_value = int(seed)
    groups = (dim + 3) // 4
    if scale.dim() == 2:
        grid = (triton.cdiv(num_samples, DIAGONAL_SAMPLES), triton.cdiv(groups, DIAGONAL_GROUPS))
        _forward_diagonal_kernel[grid](z, mu, scale, component, seed_value, num_samples, dim, groups,
                                       BLOCK_S=DIAGONAL_SAMPLES, BLOCK_G=DIAGONAL_GROUPS)
        return z
    order, begin = _grouping(component, num_components)
    slots = triton.cdiv(num_samples, FULL_SAMPLES) + num_components
    grid = (slots, triton.cdiv(dim, FULL_ROWS))
    _forward_full_kernel[grid](z, mu, scale, order, begin, seed_value, num_components, dim, groups,
                               SEARCH_STEPS=_search_steps(num_components), BLOCK_S=FULL_SAMPLES,
                               BLOCK_I=FULL_ROWS, BLOCK_J=FULL_COLUMNS)
    return z


def mixture_sample_backward(grad_z: torch.Tensor, scale: torch.Tensor, component: torch.Tensor,
                            seed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    grad_z, component = grad_z.contiguous(), component.contiguous()
    num_components, dim = scale.shape[0], scale.shape[1]
    num_samples = component.shape[0]
    grad_mu = grad_z.new_zeros(num_components, dim)
    grad_scale = grad_z.new_zeros(scale.shape)
    if num_samples == 0 or dim == 0:
        return grad_mu, grad_scale
    seed_value = int(seed)
    groups = (dim + 3) // 4
    order, begin = _grouping(component, num_components)
    splits = _splits(num_samples, num_components)
    if scale.dim() == 2:
        grid = (num_components * splits, triton.cdiv(groups, DIAGONAL_GROUPS))
        _backward_diagonal_kernel[grid](grad_mu, grad_scale, grad_z, order, begin, seed_value, dim,
                                        groups, SPLITS=splits, BLOCK_S=DIAGONAL_SAMPLES,
                                        BLOCK_G=DIAGONAL_GROUPS)
        return grad_mu, grad_scale
    row_tiles = triton.cdiv(dim, FULL_ROWS)
    pairs = row_tiles * row_tiles
    grid_y = min(pairs, MAX_GRID_Y)
    grid = (num_components * splits, grid_y, triton.cdiv(pairs, grid_y))
    _backward_full_kernel[grid](grad_mu, grad_scale, grad_z, order, begin, seed_value, dim, groups,
                                row_tiles, grid_y, SPLITS=splits, BLOCK_S=FULL_SAMPLES,
                                BLOCK_I=FULL_ROWS, BLOCK_J=FULL_COLUMNS)
    return grad_mu, grad_scale

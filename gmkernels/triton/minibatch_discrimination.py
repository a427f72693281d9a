"""Triton kernels of minibatch_discrimination (math in csrc/kernels/minibatch_discrimination.h).

One program owns BLOCK_I rows i of one kernel b and sweeps all j in BLOCK_J tiles, holding the
(BLOCK_I, BLOCK_J, BLOCK_C) coordinate differences of one tile only: memory stays O(N B C). Each
row sums over every j != i itself (no symmetry: on a GPU the extra arithmetic is cheaper than
shared writes, and every output is accumulated by one program in a fixed order, so results are
deterministic). The backward recomputes e_ij = exp(-||M_ib - M_jb||_1) and uses
w_ij = (g_i + g_j) e_ij. float16/bfloat16 inputs are accumulated in float32, float64 in float64.
``minibatch_discrimination`` and ``minibatch_discrimination_backward`` are the launchers, registered
by gmkernels/ops/_registry.py from the declaration in gmkernels/ops/minibatch_discrimination.py.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

# Elements of one (BLOCK_I, BLOCK_J, BLOCK_C) difference tile: 32 per thread at 4 warps, which
# keeps the few live tiles of the backward in registers.
_TILE_ELEMENTS = 4096


def _blocks(kernel_dim: int):
    block_c = triton.next_power_of_2(max(kernel_dim, 1))
    block_j = max(1, min(16, _TILE_ELEMENTS // (32 * block_c)))
    block_i = max(1, min(32, _TILE_ELEMENTS // (block_j * block_c)))
    return block_i, block_j, block_c


def _accumulator(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


@triton.jit
def _load_rows(M, rows, b, stride_n, stride_b, stride_c, num_samples, kernel_dim,
               BLOCK_C: tl.constexpr, ACC: tl.constexpr):
    coords = tl.arange(0, BLOCK_C)
    mask = (rows[:, None] < num_samples) & (coords[None, :] < kernel_dim)
    pointers = M + rows[:, None] * stride_n + b * stride_b + coords[None, :] * stride_c
    return tl.load(pointers, mask=mask, other=0.0).to(ACC)


@triton.jit
def _program_rows(num_samples, BLOCK_I: tl.constexpr):
    """The kernel b and the rows i of this program (programs run over kernels x row blocks)."""
    row_blocks = tl.cdiv(num_samples, BLOCK_I)
    b = tl.program_id(0) // row_blocks
    # int64: rows * stride_n passes 2^31 for large M.
    rows = (tl.program_id(0) % row_blocks).to(tl.int64) * BLOCK_I + tl.arange(0, BLOCK_I)
    return b, rows


@triton.jit
def _other_pairs(rows, cols, num_samples):
    """(BLOCK_I, BLOCK_J) mask of the pairs that count: j in range and j != i."""
    return (cols[None, :] < num_samples) & (cols[None, :] != rows[:, None])


@triton.jit
def _forward_kernel(M, out, num_samples, num_kernels, kernel_dim,
                    stride_n, stride_b, stride_c,
                    BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_C: tl.constexpr,
                    ACC: tl.constexpr):
    b, rows = _program_rows(num_samples, BLOCK_I)
    x_i = _load_rows(M, rows, b, stride_n, stride_b, stride_c, num_samples, kernel_dim,
                     BLOCK_C, ACC)
    total = tl.zeros([BLOCK_I], dtype=ACC)
    for j0 in range(0, num_samples, BLOCK_J):
        cols = (j0 + tl.arange(0, BLOCK_J)).to(tl.int64)
        x_j = _load_rows(M, cols, b, stride_n, stride_b, stride_c, num_samples, kernel_dim,
                         BLOCK_C, ACC)
        distance = tl.sum(tl.abs(x_i[:, None, :] - x_j[None, :, :]), axis=2)
        pair = _other_pairs(rows, cols, num_samples)
        total += tl.sum(tl.where(pair, tl.exp(-distance), 0.0), axis=1)
    tl.store(out + rows * num_kernels + b, total.to(out.dtype.element_ty),
             mask=rows < num_samples)


@triton.jit
def _backward_kernel(grad_out, M, grad_M, num_samples, num_kernels, kernel_dim,
                     stride_n, stride_b, stride_c, stride_gn, stride_gb,
                     BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_C: tl.constexpr,
                     ACC: tl.constexpr):
    b, rows = _program_rows(num_samples, BLOCK_I)
    x_i = _load_rows(M, rows, b, stride_n, stride_b, stride_c, num_samples, kernel_dim,
                     BLOCK_C, ACC)
    g_i = tl.load(grad_out + rows * stride_gn + b * stride_gb, mask=rows < num_samples,
                  other=0.0).to(ACC)
    grad = tl.zeros([BLOCK_I, BLOCK_C], dtype=ACC)
    for j0 in range(0, num_samples, BLOCK_J):
        cols = (j0 + tl.arange(0, BLOCK_J)).to(tl.int64)
        x_j = _load_rows(M, cols, b, stride_n, stride_b, stride_c, num_samples, kernel_dim,
                         BLOCK_C, ACC)
        g_j = tl.load(grad_out + cols * stride_gn + b * stride_gb, mask=cols < num_samples,
                      other=0.0).to(ACC)
        difference = x_j[None, :, :] - x_i[:, None, :]
        distance = tl.sum(tl.abs(difference), axis=2)
        pair = _other_pairs(rows, cols, num_samples)
        weight = tl.where(pair, (g_i[:, None] + g_j[None, :]) * tl.exp(-distance), 0.0)
        # sign(x_j - x_i), 0 at ties: the L1 subgradient torch.abs uses.
        sign = tl.where(difference > 0, 1.0, tl.where(difference < 0, -1.0, 0.0)).to(ACC)
        grad += tl.sum(weight[:, :, None] * sign, axis=1)
    coords = tl.arange(0, BLOCK_C)
    mask = (rows[:, None] < num_samples) & (coords[None, :] < kernel_dim)
    pointers = grad_M + (rows[:, None] * num_kernels + b) * kernel_dim + coords[None, :]
    tl.store(pointers, grad.to(grad_M.dtype.element_ty), mask=mask)


def minibatch_discrimination(M: torch.Tensor) -> torch.Tensor:
    num_samples, num_kernels, kernel_dim = M.shape
    out = torch.empty(num_samples, num_kernels, dtype=M.dtype, device=M.device)
    if out.numel() == 0:
        return out
    block_i, block_j, block_c = _blocks(kernel_dim)
    grid = (num_kernels * triton.cdiv(num_samples, block_i),)
    _forward_kernel[grid](M, out, num_samples, num_kernels, kernel_dim, *M.stride(),
                          BLOCK_I=block_i, BLOCK_J=block_j, BLOCK_C=block_c,
                          ACC=_accumulator(M.dtype))
    return out


def minibatch_discrimination_backward(grad_out: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    num_samples, num_kernels, kernel_dim = M.shape
    grad_M = torch.empty(M.shape, dtype=M.dtype, device=M.device)
    if grad_M.numel() == 0:
        return grad_M
    block_i, block_j, block_c = _blocks(kernel_dim)
    grid = (num_kernels * triton.cdiv(num_samples, block_i),)
    _backward_kernel[grid](grad_out, M, grad_M, num_samples, num_kernels, kernel_dim,
                           *M.stride(), *grad_out.stride(),
                           BLOCK_I=block_i, BLOCK_J=block_j, BLOCK_C=block_c,
                           ACC=_accumulator(M.dtype))
    return grad_M


"""Triton kernels of mixture_log_likelihood (math in csrc/kernels/mixture_log_likelihood.h).

The launcher centres the data at the mean of the means and writes the problem as
E_bc = offset_c + scale_c * ((left right^T)_bc - row_norm_b / 2) (isotropic: left = xc,
right = mc; diagonal: left = [xc^2 | xc], right = [-P/2 | mc P], P = 1/var), exactly as the C++
binding does. Then, FlashAttention-2 style:
- forward: one program per block of rows sweeps the components in tiles, S = left right^T by
  tl.dot over chunks of K, and folds each tile into an online logsumexp (running max and sum);
- backward, rows: one program per (block of rows, block of factor columns) recomputes the tiles,
  forms W_bc = grad_b exp(E_bc - log p_b) from the saved log-likelihood and accumulates
  W [mc P | P] (what grad_x needs);
- backward, components: one program per (block of components, block of columns) sweeps the rows
  and accumulates W^T [xc | 1 | ||xc||^2] (isotropic) or W^T [xc | xc^2 | 1] (diagonal).
No B x C matrix is ever stored; every output is accumulated by one program in a fixed order.
The launchers ``mixture_log_likelihood`` and ``mixture_log_likelihood_backward`` are registered as
``torch.ops.gmkernels_triton.*`` by gmkernels/ops/_registry.py, with the schemas, fake tensors and
autograd declared in gmkernels/ops/mixture_log_likelihood.py (those of the C++ ops).
tl.dot uses input_precision="ieee" (no tf32) so GPU results match the CPU backends.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

_LOG_2PI = math.log(2 * math.pi)
# One tile is BLOCK_B x BLOCK_C; K is swept in BLOCK_K chunks. 64 x 64 float32 accumulators are
# 32 registers per thread at 4 warps; tl.dot needs every dimension >= 16 on NVIDIA GPUs.
BLOCK_B, BLOCK_C, BLOCK_K, BLOCK_F = 64, 64, 32, 64


@triton.jit
def _exponents(left, right, row_norm, scale, offset, rows, cols, num_rows, num_cols, K,
               BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr):
    """E (BLOCK_B x BLOCK_C) for the given rows and components (int64, so rows * K cannot wrap
    past 2^31 elements); -inf outside the matrix."""
    row_mask = rows < num_rows
    col_mask = cols < num_cols
    scores = tl.zeros([BLOCK_B, BLOCK_C], dtype=left.dtype.element_ty)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(left + rows[:, None] * K + ks[None, :],
                    mask=row_mask[:, None] & (ks[None, :] < K), other=0.0)
        b = tl.load(right + cols[:, None] * K + ks[None, :],
                    mask=col_mask[:, None] & (ks[None, :] < K), other=0.0)
        scores += tl.dot(a, tl.trans(b), input_precision="ieee")
    half_norm = 0.5 * tl.load(row_norm + rows, mask=row_mask, other=0.0)
    col_scale = tl.load(scale + cols, mask=col_mask, other=1.0)
    col_offset = tl.load(offset + cols, mask=col_mask, other=float("-inf"))
    exponent = col_offset[None, :] + col_scale[None, :] * (scores - half_norm[:, None])
    return tl.where(col_mask[None, :], exponent, float("-inf"))


@triton.jit
def _weights(exponent, grad, log_likelihood, rows, num_rows):
    """W = grad exp(E - log p) for the given rows; 0 for rows outside the matrix, with zero
    gradient or with likelihood 0."""
    row_mask = rows < num_rows
    g = tl.load(grad + rows, mask=row_mask, other=0.0)
    ll = tl.load(log_likelihood + rows, mask=row_mask, other=float("-inf"))
    live = (g != 0.0) & (ll != float("-inf"))
    shifted = exponent - tl.where(live, ll, 0.0)[:, None]
    return tl.where(live[:, None], g[:, None] * tl.exp(shifted), 0.0)


@triton.jit
def _forward_kernel(left, right, row_norm, scale, offset, out, num_rows, num_cols, K,
                    BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    running_max = tl.full([BLOCK_B], float("-inf"), dtype=left.dtype.element_ty)
    running_sum = tl.zeros([BLOCK_B], dtype=left.dtype.element_ty)
    for c0 in range(0, num_cols, BLOCK_C):
        cols = (c0 + tl.arange(0, BLOCK_C)).to(tl.int64)
        exponent = _exponents(left, right, row_norm, scale, offset, rows, cols, num_rows,
                              num_cols, K, BLOCK_B, BLOCK_C, BLOCK_K)
        new_max = tl.maximum(running_max, tl.max(exponent, axis=1))
        # Rows with nothing switched on yet shift by 0: exp(-inf - -inf) would be NaN.
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)
        running_sum = running_sum * tl.exp(running_max - shift) + \
            tl.sum(tl.exp(exponent - shift[:, None]), axis=1)
        running_max = new_max
    tl.store(out + rows, running_max + tl.log(running_sum), mask=rows < num_rows)


@triton.jit
def _backward_rows_kernel(left, right, row_norm, scale, offset, grad, log_likelihood,
                          factors, out, num_rows, num_cols, K, F,
                          BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr,
                          BLOCK_F: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    fs = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    acc = tl.zeros([BLOCK_B, BLOCK_F], dtype=left.dtype.element_ty)
    for c0 in range(0, num_cols, BLOCK_C):
        cols = (c0 + tl.arange(0, BLOCK_C)).to(tl.int64)
        exponent = _exponents(left, right, row_norm, scale, offset, rows, cols, num_rows,
                              num_cols, K, BLOCK_B, BLOCK_C, BLOCK_K)
        w = _weights(exponent, grad, log_likelihood, rows, num_rows)
        f = tl.load(factors + cols[:, None] * F + fs[None, :],
                    mask=(cols[:, None] < num_cols) & (fs[None, :] < F), other=0.0)
        acc += tl.dot(w, f, input_precision="ieee")
    tl.store(out + rows[:, None] * F + fs[None, :], acc,
             mask=(rows[:, None] < num_rows) & (fs[None, :] < F))


@triton.jit
def _backward_cols_kernel(left, right, row_norm, scale, offset, grad, log_likelihood,
                          factors, out, num_rows, num_cols, K, F,
                          BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr,
                          BLOCK_F: tl.constexpr):
    cols = tl.program_id(0).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    fs = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    acc = tl.zeros([BLOCK_C, BLOCK_F], dtype=left.dtype.element_ty)
    for r0 in range(0, num_rows, BLOCK_B):
        rows = (r0 + tl.arange(0, BLOCK_B)).to(tl.int64)
        exponent = _exponents(left, right, row_norm, scale, offset, rows, cols, num_rows,
                              num_cols, K, BLOCK_B, BLOCK_C, BLOCK_K)
        w = _weights(exponent, grad, log_likelihood, rows, num_rows)
        f = tl.load(factors + rows[:, None] * F + fs[None, :],
                    mask=(rows[:, None] < num_rows) & (fs[None, :] < F), other=0.0)
        acc += tl.dot(tl.trans(w), f, input_precision="ieee")
    tl.store(out + cols[:, None] * F + fs[None, :], acc,
             mask=(cols[:, None] < num_cols) & (fs[None, :] < F))


class _Problem:
    """The centred operands shared by the forward and backward launches."""

    def __init__(self, x, means, var, log_weights):
        # Contiguous first: the reductions below then see the same layout (and give the same
        # bits) whatever strides the caller's tensors have.
        x, means, var, log_weights = (t.contiguous() for t in (x, means, var, log_weights))
        dim = x.shape[1]
        centre = means.mean(0, keepdim=True)
        self.xc, self.mc = x - centre, means - centre
        self.precision = var.reciprocal()
        self.diagonal = var.dim() == 2
        if self.diagonal:
            self.left = torch.cat([self.xc * self.xc, self.xc], 1).contiguous()
            self.right = torch.cat([-0.5 * self.precision, self.mc * self.precision], 1).contiguous()
            self.row_norm = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
            self.scale = torch.ones_like(log_weights)
            self.offset = (log_weights - 0.5 * (torch.log(var).sum(1) + dim * _LOG_2PI)
                           - 0.5 * (self.mc * self.mc * self.precision).sum(1))
        else:
            self.left, self.right = self.xc.contiguous(), self.mc.contiguous()
            self.row_norm = (self.xc * self.xc).sum(1)
            self.scale = self.precision
            self.offset = (log_weights - 0.5 * dim * (torch.log(var) + _LOG_2PI)
                           - 0.5 * self.precision * (self.mc * self.mc).sum(1))
        self.offset = self.offset.contiguous()
        self.scale = self.scale.contiguous()

    def operands(self):
        return (self.left, self.right, self.row_norm, self.scale, self.offset)


def mixture_log_likelihood(x: torch.Tensor, means: torch.Tensor, var: torch.Tensor,
                           log_weights: torch.Tensor) -> torch.Tensor:
    out = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
    if x.shape[0] == 0:
        return out
    problem = _Problem(x, means, var, log_weights)
    num_rows, num_cols, K = x.shape[0], means.shape[0], problem.left.shape[1]
    _forward_kernel[(triton.cdiv(num_rows, BLOCK_B),)](
        *problem.operands(), out, num_rows, num_cols, K,
        BLOCK_B=BLOCK_B, BLOCK_C=BLOCK_C, BLOCK_K=BLOCK_K)
    return out


def mixture_log_likelihood_backward(grad: torch.Tensor, x: torch.Tensor, means: torch.Tensor,
                                    var: torch.Tensor, log_weights: torch.Tensor,
                                    log_likelihood: torch.Tensor, x_grad: bool,
                                    component_grads: bool, var_grad: bool
                                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    grads = _backward_all(grad, x, means, var, log_weights, log_likelihood, x_grad, component_grads)
    # Gradients that were not asked for come back as 0-element tensors (as in the C++ op).
    if not var_grad:
        grads[2] = var.new_empty(0)
    return tuple(grads)


def _backward_all(grad, x, means, var, log_weights, log_likelihood, x_grad, component_grads) -> list:
    """The wanted gradients, var's with the component gradients."""
    wanted = lambda like, want: torch.zeros_like(like) if want else like.new_empty(0)  # noqa: E731
    grads = [wanted(x, x_grad), wanted(means, component_grads), wanted(var, component_grads),
             wanted(log_weights, component_grads)]
    if x.shape[0] == 0 or not (x_grad or component_grads):
        return grads
    problem = _Problem(x, means, var, log_weights)
    xc, mc, precision, dim = problem.xc, problem.mc, problem.precision, x.shape[1]
    num_rows, num_cols, K = x.shape[0], means.shape[0], problem.left.shape[1]
    common = (*problem.operands(), grad.contiguous(), log_likelihood.contiguous())
    ones = torch.ones(num_rows, 1, dtype=x.dtype, device=x.device)
    if problem.diagonal:
        row_factors = torch.cat([mc * precision, precision], 1)
        col_factors = torch.cat([xc, xc * xc, ones], 1)
    else:
        row_factors = torch.cat([mc * precision[:, None], precision[:, None]], 1)
        col_factors = torch.cat([xc, ones, problem.row_norm[:, None]], 1)
    if x_grad:
        F = row_factors.shape[1]
        row_sums = torch.empty(num_rows, F, dtype=x.dtype, device=x.device)
        grid = (triton.cdiv(num_rows, BLOCK_B), triton.cdiv(F, BLOCK_F))
        _backward_rows_kernel[grid](*common, row_factors.contiguous(), row_sums, num_rows,
                                    num_cols, K, F, BLOCK_B=BLOCK_B, BLOCK_C=BLOCK_C,
                                    BLOCK_K=BLOCK_K, BLOCK_F=BLOCK_F)
        # grad_x_b = sum_c W_bc P_c (mu_c - x_b)
        grads[0] = row_sums[:, :dim] - xc * row_sums[:, dim:]
    if component_grads:
        F = col_factors.shape[1]
        col_sums = torch.empty(num_cols, F, dtype=x.dtype, device=x.device)
        grid = (triton.cdiv(num_cols, BLOCK_C), triton.cdiv(F, BLOCK_F))
        _backward_cols_kernel[grid](*common, col_factors.contiguous(), col_sums, num_rows,
                                    num_cols, K, F, BLOCK_B=BLOCK_B, BLOCK_C=BLOCK_C,
                                    BLOCK_K=BLOCK_K, BLOCK_F=BLOCK_F)
        weighted_x = col_sums[:, :dim]
        if problem.diagonal:
            weight_sum = col_sums[:, 2 * dim:]
            weighted_squared = col_sums[:, dim:2 * dim] - 2 * mc * weighted_x + mc * mc * weight_sum
            grads[1] = precision * (weighted_x - mc * weight_sum)
            grads[2] = 0.5 * precision * (precision * weighted_squared - weight_sum)
            grads[3] = weight_sum[:, 0].clone()   # a fresh tensor, not a view of col_sums
        else:
            weight_sum = col_sums[:, dim]
            weighted_squared = col_sums[:, dim + 1] - 2 * (weighted_x * mc).sum(1) + (mc * mc).sum(1) * weight_sum
            grads[1] = precision[:, None] * (weighted_x - mc * weight_sum[:, None])
            grads[2] = 0.5 * precision * (precision * weighted_squared - dim * weight_sum)
            grads[3] = weight_sum.clone()
    return grads

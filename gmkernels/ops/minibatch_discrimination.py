"""minibatch_discrimination: o_ib = sum_{j != i} exp(-||M_ib - M_jb||_1) (Salimans et al. 2016).

The kernels never hold the N x N x B x C differences (2 GB at N=1024, B=100, C=5 in the
reference): memory is O(N B C), and the backward recomputes exp(-||M_ib - M_jb||_1) from M.
"""
from __future__ import annotations

import torch

from ..reference import minibatch_discrimination as reference
from . import _autograd, _checks, _registry


def _check(M):
    M = _checks.float_tensor(M, "M", allow_half_on_gpu=True)
    _checks.ndim(M, "M", 3, "(N, B, C)")


def minibatch_discrimination(M: torch.Tensor) -> torch.Tensor:
    """Minibatch features of Salimans et al. (2016) for M = (f(x) T).view(N, B, C).

    Args:
        M: (N, B, C) float32 or float64 (also float16 / bfloat16 on GPU, accumulated in float32);
            any N >= 0.

    Returns:
        (N, B) in M's dtype with o_ib = sum over j != i of exp(-||M_ib - M_jb||_1). The self term
        (exactly 1, zero gradient) is excluded; add 1 to include it. The L1 subgradient at ties
        is 0 (as torch.abs). Differentiable to every order in M on every backend (a gradient
        penalty through this op works: on the cpp backend its backward runs a fused kernel, one
        pass over the pairs; elsewhere, and with create_graph, the double backward recomputes
        the first-order gradient in tiles of rows, never N x N x B x C).
    """
    _check(M)
    return _OP(M.device, M)


def gradient_rows(grad_out: torch.Tensor, M: torch.Tensor, rows: slice) -> torch.Tensor:
    """Rows i of the first-order gradient in differentiable torch ops, what the backward kernels
    compute: grad_M_ib = sum_{j != i} (g_ib + g_jb) exp(-||M_ib - M_jb||_1) sign(M_jb - M_ib),
    from a (rows x N x B x C) difference tile; the self pair is masked, not subtracted."""
    difference = M[None] - M[rows][:, None]                       # [i, j] = M_j - M_i
    kernel = torch.exp(-difference.abs().sum(-1))                  # (rows, N, B)
    row_index = torch.arange(M.shape[0], device=M.device)
    self_pair = (row_index[rows][:, None] == row_index[None, :])[:, :, None]
    weight = ((grad_out[rows][:, None] + grad_out[None]) * kernel).masked_fill(self_pair, 0.0)
    return (weight[..., None] * torch.sign(difference)).sum(1)


def gradient_vector_jacobian(grad_grad_M, grad_out, M, needs,
                             fused_cpu_kernel: bool = False) -> list:
    """The double backward: <grad_M(grad_out, M), grad_grad_M> differentiated in grad_out and M
    (those of ``needs``). With ``fused_cpu_kernel`` (the cpp backend, CPU tensors, a backward
    that records no graph: a gradient penalty's) the fused kernel of its closed form runs
    (csrc/kernels/minibatch_discrimination.h: one pass over the pairs, O(N B C) memory).
    Otherwise (create_graph, torch.compile, torch.func, other backends and devices)
    ``gradient_rows`` is recomputed and differentiated chunk by chunk, so that one
    rows x N x B x C tile lives at once, never N x N x B x C; half inputs in float32, as the
    kernels accumulate them."""
    grad_grad_M = _autograd.cotangent(grad_grad_M)
    if grad_grad_M is None or not any(needs):
        return [None, None]
    if fused_cpu_kernel:
        grad_grad_out, grad_M = torch.ops.gmkernels.minibatch_discrimination_double_backward(
            grad_grad_M, grad_out, M, needs[0], needs[1])
        return [grad_grad_out if needs[0] else None, grad_M if needs[1] else None]
    work_dtype = torch.float32 if M.dtype in _checks.HALF_DTYPES else M.dtype
    grad_out_work, M_work = grad_out.to(work_dtype), M.to(work_dtype)
    results = [None, None]
    chunk = _autograd.rows_per_chunk(M[0].numel() * M.shape[0])   # one row i: N x B x C
    for start in range(0, M.shape[0], chunk):
        rows = slice(start, start + chunk)
        parts = _autograd.vector_jacobian(lambda g, m: gradient_rows(g, m, rows),
                                          (grad_out_work, M_work),
                                          grad_grad_M[rows].to(work_dtype))
        results = [_autograd.add(total, part) for total, part in zip(results, parts)]
    return [None if not need else torch.zeros_like(t) if r is None else r.to(t.dtype)
            for r, t, need in zip(results, (grad_out, M), needs)]



def _fake(M):
    return M.new_empty(M.shape[0], M.shape[1])


def _fake_backward(grad_out, M):
    return torch.empty_like(M, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    (M,) = inputs
    ctx.save_for_backward(M)


def _backward(ops, ctx, grad_out):
    """The backward op recomputes exp(-||M_ib - M_jb||_1) from M."""
    (M,) = ctx.saved_tensors
    return ops.minibatch_discrimination_backward(grad_out, M)


def _setup_backward_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _double_backward(ops, ctx, grad_grad_M):
    grad_out, M = ctx.saved_tensors
    return tuple(gradient_vector_jacobian(grad_grad_M, grad_out, M, ctx.needs_input_grad,
                                          fused_cpu_kernel=_registry.runs_fused_cpu_kernel(ops, M)))


_OP = _registry.register(_registry.OpDeclaration(
    name="minibatch_discrimination",
    schema="minibatch_discrimination(Tensor M) -> Tensor",
    backward_schema="minibatch_discrimination_backward(Tensor grad_out, Tensor M) -> Tensor",
    reference=reference.minibatch_discrimination,
    fake=_fake, fake_backward=_fake_backward,
    setup_context=_setup_context, backward=_backward,
    setup_backward_context=_setup_backward_context, double_backward=_double_backward,
))
IMPLEMENTED = _OP.implemented

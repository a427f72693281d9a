"""minibatch_discrimination: o_ib = sum_{j != i} exp(-||M_ib - M_jb||_1) (Salimans et al. 2016).

The kernels never hold the N x N x B x C differences (2 GB at N=1024, B=100, C=5 in the
reference): memory is O(N B C), and the backward recomputes exp(-||M_ib - M_jb||_1) from M.
"""
from __future__ import annotations

import torch

from .. import backend
from ..reference import minibatch_discrimination as reference
from . import _checks

_C = backend.compiled_module()
_KERNEL_BACKENDS = ("cpp", "cuda") if _C is not None else ()
_TRITON_BACKENDS = ()
if "triton" in backend.backends():
    from ..triton import minibatch_discrimination as _triton  # noqa: F401  (registers the op)

    _TRITON_BACKENDS = ("triton",)
IMPLEMENTED = ("reference",) + _KERNEL_BACKENDS + _TRITON_BACKENDS


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
        is 0 (as torch.abs). Differentiable once in M on the kernel backends (a second
        derivative, e.g. a gradient penalty through this op, raises; the reference backend has
        all orders).
    """
    _check(M)
    name = backend.resolve("minibatch_discrimination", IMPLEMENTED, M.device)
    if name == "reference":
        return reference.minibatch_discrimination(M)
    if name == "triton":
        return torch.ops.gmkernels_triton.minibatch_discrimination(M)
    return torch.ops.gmkernels.minibatch_discrimination(M)


def _no_double_backward(ctx, grad):
    raise NotImplementedError(
        "minibatch_discrimination is differentiable once on the kernel backends; use "
        "gmkernels.use_backend('reference') for higher-order gradients (e.g. gradient penalties)")


def _register_no_double_backward(backward_op: str) -> None:
    # Without this, torch would treat the backward op as constant under double backward and
    # silently drop its contribution.
    torch.library.register_autograd(
        backward_op, _no_double_backward, setup_context=lambda ctx, inputs, output: None)


if _TRITON_BACKENDS:
    _register_no_double_backward("gmkernels_triton::minibatch_discrimination_backward")

if _C is not None:
    _register_no_double_backward("gmkernels::minibatch_discrimination_backward")

    @torch.library.register_fake("gmkernels::minibatch_discrimination")
    def _fake(M):
        return M.new_empty(M.shape[0], M.shape[1])

    @torch.library.register_fake("gmkernels::minibatch_discrimination_backward")
    def _fake_backward(grad_out, M):
        return torch.empty_like(M, memory_format=torch.contiguous_format)

    def _setup_context(ctx, inputs, output):
        (M,) = inputs
        ctx.save_for_backward(M)

    def _backward(ctx, grad_out):
        (M,) = ctx.saved_tensors
        return torch.ops.gmkernels.minibatch_discrimination_backward(grad_out, M)

    torch.library.register_autograd(
        "gmkernels::minibatch_discrimination", _backward, setup_context=_setup_context)

"""What the ops' double backwards share.

A backward op (``<op>_backward``) is registered with an autograd formula of its own, so second
(and higher) derivatives are exact on every backend instead of PyTorch's deprecated "no autograd
kernel" path, which treats the backward as a constant and silently drops its terms. Where the
backward is not linear in its inputs, its double backward recomputes the first-order gradient
with differentiable torch ops, in chunks of rows sized by ``RECOMPUTE_ELEMENTS`` so that the op's
memory promise holds, and takes the vector-Jacobian product of each chunk with torch.func.

Recomputing the first-order gradient from the op's inputs makes the saved forward output (e.g. the
log-likelihood the backward kernel reads) a function of those inputs again: the total derivative
flows to the inputs, and the saved output gets no gradient of its own (giving it one as well
would count its path twice).
"""
from __future__ import annotations

import torch

# Elements of the largest temporary of one recomputed chunk: 2^22 (32 MiB in float64). A chunk
# holds a handful of such temporaries (and its autograd graph), so a double backward adds a few
# hundred MiB at most, whatever the batch, instead of the B x C or N x N x B x C tables of the
# plain formulas.
RECOMPUTE_ELEMENTS = 1 << 22


def rows_per_chunk(elements_per_row: int) -> int:
    """Rows recomputed at once when one row's largest temporary has ``elements_per_row``."""
    return max(1, RECOMPUTE_ELEMENTS // max(1, elements_per_row))


def cotangent(gradient):
    """The incoming gradient of a backward op's output, or None when it contributes nothing
    (undefined, or an output that was not computed and came back with 0 elements)."""
    if gradient is None or gradient.numel() == 0:
        return None
    return gradient


def vector_jacobian(function, primals: tuple, cotangents):
    """<function(*primals), cotangents> differentiated in each primal (a tuple, one per primal).

    torch.func differentiates the function's own arguments: partial derivatives, never through
    the history of the primals in the outer graph (autograd.grad with the primals as inputs would
    also follow e.g. a cotangent that depends on x back to x, counting that path twice, and free
    the outer graph). The results stay differentiable by the outer autograd when it records, so
    third and higher orders work (holding each chunk's tile in their graph)."""
    _, pullback = torch.func.vjp(function, *primals)
    return pullback(cotangents)


def add(total, part):
    """total + part, where None is zero."""
    return part if total is None else total + part

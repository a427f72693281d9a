"""minibatch_discrimination: o_ib = sum_{j != i} exp(-||M_ib - M_jb||_1) (Salimans et al. 2016)."""
from __future__ import annotations

import torch

from .. import backend
from ..reference import minibatch_discrimination as reference
from . import _checks

IMPLEMENTED = ("reference",)


def _check(M):
    M = _checks.float_tensor(M, "M", allow_half_on_gpu=True)
    _checks.ndim(M, "M", 3, "(N, B, C)")


def minibatch_discrimination(M: torch.Tensor) -> torch.Tensor:
    """Minibatch features of Salimans et al. (2016) for M = (f(x) T).view(N, B, C).

    Returns (N, B) with o_ib = sum over j != i of exp(-||M_ib - M_jb||_1): the self term
    (exactly 1, zero gradient) is excluded; add 1 to include it. The L1 subgradient at ties is 0.
    """
    _check(M)
    backend.resolve("minibatch_discrimination", IMPLEMENTED, M.device)
    return reference.minibatch_discrimination(M)

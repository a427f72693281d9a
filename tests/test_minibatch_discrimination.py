"""minibatch_discrimination: values against an independent loop, gradients, bad input."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import gmkernels
from gmkernels.ops import minibatch_discrimination as op

from conftest import require_backend


def loop_over_pairs(M):
    N, B, _ = M.shape
    out = torch.zeros(N, B, dtype=torch.float64)
    for i in range(N):
        for j in range(N):
            if i != j:
                out[i] += torch.exp(-(M[i] - M[j]).abs().sum(-1))
    return out


@given(n=st.integers(0, 7), kernels=st.integers(1, 4), kernel_dim=st.integers(1, 5), seed=st.integers(0, 999))
def test_values_match_a_loop_over_pairs(n, kernels, kernel_dim, seed):
    M = torch.randn(n, kernels, kernel_dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    got = gmkernels.minibatch_discrimination(M)
    assert got.shape == (n, kernels)
    assert torch.allclose(got, loop_over_pairs(M), rtol=1e-12, atol=1e-12)


def test_single_sample_has_no_neighbours():
    assert torch.equal(gmkernels.minibatch_discrimination(torch.randn(1, 3, 2)), torch.zeros(1, 3))


def test_gradcheck_float64(backend):
    require_backend(op)
    M = torch.randn(6, 3, 4, dtype=torch.float64, device=backend, requires_grad=True)
    assert torch.autograd.gradcheck(gmkernels.minibatch_discrimination, (M,))


@pytest.mark.parametrize("M, error, message", [
    (torch.zeros(3, 4), ValueError, r"M must be \(N, B, C\)"),
    (torch.zeros(3, 4, 2, dtype=torch.int32), TypeError, "M must have dtype"),
    (torch.zeros(3, 4, 2, dtype=torch.float16), TypeError, "M must have dtype"),
])
def test_bad_input_raises_a_clear_error(M, error, message):
    with pytest.raises(error, match=message):
        gmkernels.minibatch_discrimination(M)

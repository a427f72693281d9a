"""class_pairwise_kl: values against an independent loop over pairs, gradients, bad input."""
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import gmkernels
from gmkernels.ops import class_pairwise_kl as op

from conftest import require_backend


def loop_over_pairs(probs, labels, eps):
    out = []
    for i in range(probs.shape[0]):
        same = [j for j in range(probs.shape[0]) if labels[j] == labels[i]]
        kls = [float((probs[i] * (torch.log(probs[i].clamp(min=eps)) - torch.log(probs[j].clamp(min=eps)))).sum())
               for j in same]
        out.append(sum(kls) / len(kls))
    return torch.tensor(out, dtype=torch.float64)


@given(n=st.integers(0, 12), classes=st.integers(1, 5), zeros=st.booleans(), seed=st.integers(0, 999))
def test_values_match_a_loop_over_pairs(n, classes, zeros, seed):
    gen = torch.Generator().manual_seed(seed)
    probs = torch.softmax(3 * torch.randn(n, classes, generator=gen, dtype=torch.float64), 1)
    if zeros and n:
        probs[:, 0] = 0
        probs = probs / probs.sum(1, keepdim=True)
    got = gmkernels.class_pairwise_kl(probs)
    assert got.shape == (n,)
    assert torch.allclose(got, loop_over_pairs(probs, probs.argmax(1), 1e-12), rtol=1e-10, atol=1e-10)
    labels = torch.randint(classes, (n,), generator=gen)
    assert torch.allclose(gmkernels.class_pairwise_kl(probs, labels), loop_over_pairs(probs, labels, 1e-12),
                          rtol=1e-10, atol=1e-10)


def test_gradcheck_float64(backend):
    require_backend(op)
    gen = torch.Generator().manual_seed(1)
    probs = torch.softmax(torch.randn(8, 4, generator=gen, dtype=torch.float64), 1).to(backend).requires_grad_()
    labels = torch.tensor([0, 1, 1, 0, 2, 2, 2, 3], device=backend)
    assert torch.autograd.gradcheck(lambda p: gmkernels.class_pairwise_kl(p, labels), (probs,))


BAD_INPUTS = [
    (dict(probs=torch.full((3,), 1 / 3)), ValueError, r"probs must be \(N, C\)"),
    (dict(probs=torch.zeros(3, 0)), ValueError, "at least one class"),
    (dict(probs=torch.tensor([[0.5, 0.6], [0.5, 0.5]])), ValueError, "sum to 1"),
    (dict(probs=torch.tensor([[1.5, -0.5], [0.5, 0.5]])), ValueError, "probs must be >= 0"),
    (dict(probs=torch.tensor([[math.nan, 1.0], [0.5, 0.5]])), ValueError, "probs must be finite"),
    (dict(labels=torch.tensor([0, 2])), ValueError, r"labels must lie in \[0, 2\)"),
    (dict(labels=torch.tensor([0])), ValueError, r"labels must have shape \(N,\)"),
    (dict(labels=torch.tensor([0.0, 1.0])), TypeError, "labels must have dtype int64"),
    (dict(eps=0.0), ValueError, "eps must be a float > 0"),
]


@pytest.mark.parametrize("override, error, message", BAD_INPUTS)
def test_bad_input_raises_a_clear_error(override, error, message):
    args = dict(probs=torch.tensor([[0.25, 0.75], [0.5, 0.5]]), labels=None, eps=1e-12)
    args.update(override)
    with pytest.raises(error, match=message):
        gmkernels.class_pairwise_kl(**args)

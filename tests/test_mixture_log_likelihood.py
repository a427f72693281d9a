"""mixture_log_likelihood and simplex_vertices: values against an independent float64 formula,
gradients, bad input."""
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import gmkernels
from gmkernels.ops import mixture_log_likelihood as op

from conftest import require_backend


def brute_force(x, means, var_cd, weights):
    """log sum_i w_i prod_k N(x_k; mean_ik, var_ik), summed term by term in float64."""
    total = torch.zeros(x.shape[0], dtype=torch.float64)
    for i in range(means.shape[0]):
        log_density = (-0.5 * (x - means[i]) ** 2 / var_cd[i] - 0.5 * torch.log(2 * math.pi * var_cd[i])).sum(1)
        total += weights[i] * torch.exp(log_density)
    return torch.log(total)


@given(batch=st.integers(0, 6), components=st.integers(1, 5), dim=st.integers(1, 4),
       var_kind=st.sampled_from(["float", "()", "(C,)", "(C,d)", "(1,d)"]), seed=st.integers(0, 999))
def test_values_match_brute_force(batch, components, dim, var_kind, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    means = torch.randn(components, dim, generator=gen, dtype=torch.float64)
    shapes = {"()": (), "(C,)": (components,), "(C,d)": (components, dim), "(1,d)": (1, dim)}
    var = 0.7 if var_kind == "float" else torch.rand(shapes[var_kind], generator=gen, dtype=torch.float64) + 0.2
    logits = torch.randn(components, generator=gen, dtype=torch.float64)
    var_cd = torch.as_tensor(var, dtype=torch.float64)
    var_cd = var_cd[:, None] if var_cd.dim() == 1 else var_cd
    var_cd = var_cd.expand(components, dim)
    got = gmkernels.mixture_log_likelihood(x, means, var, torch.log_softmax(logits, 0))
    assert got.shape == (batch,)
    assert torch.allclose(got, brute_force(x, means, var_cd, torch.softmax(logits, 0)), rtol=1e-10, atol=1e-10)
    uniform = gmkernels.mixture_log_likelihood(x, means, var)
    assert torch.allclose(uniform, brute_force(x, means, var_cd, torch.full((components,), 1 / components,
                                                                              dtype=torch.float64)), atol=1e-10)


def test_gradcheck_float64(backend):
    require_backend(op)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, generator=gen, dtype=torch.float64, device=backend, requires_grad=True)
    means = torch.randn(4, 3, generator=gen, dtype=torch.float64, device=backend, requires_grad=True)
    var = (torch.rand(4, 3, generator=gen, dtype=torch.float64) + 0.3).to(backend).requires_grad_()
    log_weights = torch.log_softmax(torch.randn(4, generator=gen, dtype=torch.float64), 0).to(backend).requires_grad_()
    assert torch.autograd.gradcheck(gmkernels.mixture_log_likelihood, (x, means, var, log_weights))


BAD_INPUTS = [
    (dict(x=torch.zeros(3)), ValueError, r"x must be \(B, d\)"),
    (dict(x=torch.zeros(3, 4)), ValueError, "d = 2"),
    (dict(means=torch.zeros(0, 2)), ValueError, "at least one component"),
    (dict(var=0.0), ValueError, "var must be finite and > 0"),
    (dict(var=torch.tensor([1.0, -0.5, 1.0])), ValueError, "var must be finite and > 0, got min -0.5"),
    (dict(var=torch.ones(2, 2)), ValueError, "var must be a float or of shape"),
    (dict(var="1"), TypeError, "var must be a float or a tensor"),
    (dict(log_weights=torch.zeros(2)), ValueError, r"log_weights must have shape \(C,\)"),
    (dict(log_weights=torch.tensor([0.0, math.nan, 0.0])), ValueError, "NaN"),
    (dict(x=torch.zeros(3, 2, dtype=torch.float64)), TypeError, "must have the dtype of x"),
    (dict(x=torch.zeros(3, 2, dtype=torch.int64)), TypeError, "x must have dtype"),
]


@pytest.mark.parametrize("override, error, message", BAD_INPUTS)
def test_bad_input_raises_a_clear_error(override, error, message):
    args = dict(x=torch.zeros(5, 2), means=torch.zeros(3, 2), var=1.0, log_weights=None)
    args.update(override)
    with pytest.raises(error, match=message):
        gmkernels.mixture_log_likelihood(**args)


@pytest.mark.parametrize("d", [1, 2, 9, 32])
@pytest.mark.parametrize("radius", [1.0, 2.5])
def test_simplex_vertices_are_equidistant_centred_at_radius(d, radius):
    vertices = gmkernels.simplex_vertices(d, radius)
    assert vertices.shape == (d + 1, d) and vertices.dtype == torch.float64
    assert torch.allclose(vertices.mean(0), torch.zeros(d, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(vertices.norm(dim=1), torch.full((d + 1,), radius, dtype=torch.float64))
    distances = torch.cdist(vertices, vertices)[~torch.eye(d + 1, dtype=torch.bool)]
    assert torch.allclose(distances, torch.full_like(distances, radius * math.sqrt(2 * (d + 1) / d)))


def test_simplex_vertices_reject_bad_arguments():
    with pytest.raises(ValueError, match="d must be >= 1"):
        gmkernels.simplex_vertices(0)
    with pytest.raises(ValueError, match="radius must be"):
        gmkernels.simplex_vertices(3, radius=-1.0)

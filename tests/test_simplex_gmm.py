"""SimplexGMM: lambda is the true maximum of lk (never exceeded by dense search or by any local
maximum, and reached), the published values, and losses that are never NaN."""
import math

import numpy as np
import pytest
import torch

import gmkernels
from gmkernels.nn import SimplexGMM
from gmkernels.nn.simplex_gmm import log1mexp, max_log_likelihood


def log_lk(points: torch.Tensor, vertices: torch.Tensor, var: float) -> torch.Tensor:
    """log lk in float64 on whatever backend is fastest here, in chunks."""
    vertices = vertices.double()
    return torch.cat([gmkernels.mixture_log_likelihood(chunk.double(), vertices, var)
                      for chunk in points.split(20000)])


def local_maxima(starts: np.ndarray, vertices: np.ndarray, var: float, steps: int = 1000) -> np.ndarray:
    """Mean-shift ascent from every start at once (monotone for equal isotropic components)."""
    points = starts.copy()
    for _ in range(steps):
        log_r = -0.5 * ((points[:, None, :] - vertices[None]) ** 2).sum(-1) / var
        r = np.exp(log_r - log_r.max(1, keepdims=True))
        points = (r / r.sum(1, keepdims=True)) @ vertices
    return points


VARIANCES = [0.01, 0.05, 0.1, 0.2, 0.25, 0.5, 1.0]
CONFIGS = [(d, var, "regular") for d in (2, 9, 32) for var in VARIANCES] + \
          [(9, var, "mdgan") for var in VARIANCES]


@pytest.mark.parametrize("d, var, layout", CONFIGS)
def test_lambda_is_the_maximum_of_lk(d, var, layout):
    vertices = gmkernels.simplex_vertices(d, layout=layout)
    log_lambda, mode = max_log_likelihood(vertices, var)
    gen = torch.Generator().manual_seed(d)
    slack = 1e-12 * abs(log_lambda)
    # Reached: lk at the returned mode is lambda.
    assert abs(log_lk(mode[None], vertices, var).item() - log_lambda) <= slack
    # Never exceeded: the centroid, every vertex, 10^5 points of the box [-2.5, 2.5]^d, points
    # near each vertex (where the maxima sit for small var) and every local maximum reached by
    # mean-shift from random starts.
    box = torch.rand(100000, d, generator=gen, dtype=torch.float64) * 5 - 2.5
    near = (vertices[:, None, :] + math.sqrt(var) * torch.randn(d + 1, 200, d, generator=gen,
                                                                dtype=torch.float64)).reshape(-1, d)
    starts = torch.cat([box[:40], near[::50], torch.zeros(1, d, dtype=torch.float64)])
    maxima = torch.from_numpy(local_maxima(starts.numpy(), vertices.numpy(), var))
    for points in (torch.zeros(1, d, dtype=torch.float64), vertices, box, near, maxima):
        assert log_lk(points, vertices, var).max().item() <= log_lambda + slack


@pytest.mark.parametrize("layout, expected", [("regular", 0.01774), ("mdgan", 0.02209)])
def test_published_setting_lambda(layout, expected):
    module = SimplexGMM(9, 0.25, layout=layout)
    assert abs(module.lam - expected) < 5e-6
    # Unimodal at var 0.25: the maximum is the centroid, above every vertex.
    assert module.mode.norm() < 1e-6
    vertex_lk = log_lk(module.vertices[:1], module.vertices, 0.25).exp().item()
    assert vertex_lk < module.lam


def test_vertex_is_not_the_maximum_in_the_published_setting():
    """The withdrawn definition (lambda = lk at a vertex, 0.01449) lies below lk at the centroid,
    which would make lambda - lk negative."""
    module = SimplexGMM(9, 0.25)
    at_vertex = log_lk(module.vertices[:1], module.vertices, 0.25).exp().item()
    assert abs(at_vertex - 0.01449) < 5e-6
    assert log_lk(torch.zeros(1, 9), module.vertices, 0.25).exp().item() > at_vertex


def embeddings(module, dtype):
    """Rows: the mode (lk = lambda), the centroid, a vertex, a far point, a box point."""
    device = module.mode.device
    return torch.stack([module.mode, torch.zeros(module.d, device=device), module.vertices[0],
                        torch.full((module.d,), 2.5, device=device),
                        torch.linspace(-2.5, 2.5, module.d, device=device)]).to(dtype)


@pytest.mark.parametrize("reg", [0.0, 1e-8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", ["regular", "mdgan"])
def test_losses_and_gradients_are_finite_even_at_lk_equal_lambda(backend, reg, dtype, layout):
    module = SimplexGMM(9, 0.25, layout=layout, reg=reg).to(backend)
    fake = embeddings(module, dtype).to(backend).requires_grad_()
    real = embeddings(module, dtype).flip(0).to(backend).requires_grad_()
    losses = [module.discriminator_loss(real, fake), module.generator_loss(fake),
              module.generator_loss(fake, saturating=False)]
    for loss in losses:
        grads = torch.autograd.grad(loss, (real, fake), allow_unused=True)
        assert torch.isfinite(loss)
        assert all(g is None or torch.isfinite(g).all() for g in grads)
    gap = module.log_lambda_minus_lk(module.log_likelihood(fake))
    assert torch.isfinite(gap).all()
    if reg > 0:
        # lambda - lk + reg >= reg: at the mode the gap is reg plus at most rounding.
        assert gap[0].item() >= math.log(reg) - 1e-6


def test_losses_equal_the_linear_domain_formula_where_it_is_accurate():
    module = SimplexGMM(9, 0.25, layout="mdgan", reg=1e-8)
    gen = torch.Generator().manual_seed(0)
    real = torch.rand(64, 9, generator=gen, dtype=torch.float64) * 5 - 2.5
    fake = torch.rand(64, 9, generator=gen, dtype=torch.float64) * 5 - 2.5
    lk_real = log_lk(real, module.vertices, 0.25).exp()
    lk_fake = log_lk(fake, module.vertices, 0.25).exp()
    # The published code's linear-domain losses (1e-8 inside every log).
    d_loss = -(torch.log(lk_real + 1e-8).mean() + torch.log(module.lam - lk_fake + 1e-8).mean())
    g_loss = torch.log(module.lam - lk_fake + 1e-8).mean()
    assert torch.allclose(module.discriminator_loss(real, fake), d_loss, rtol=1e-10)
    assert torch.allclose(module.generator_loss(fake), g_loss, rtol=1e-10)
    assert torch.allclose(module.generator_loss(fake, saturating=False),
                          -torch.log(lk_fake + 1e-8).mean(), rtol=1e-10)


def test_log1mexp_is_accurate_on_both_branches_with_finite_gradients():
    a = torch.tensor([-1e-12, -1e-6, -0.5, -math.log(2), -1.0, -30.0, -800.0], dtype=torch.float64,
                     requires_grad=True)
    value = log1mexp(a)
    # Each closed form where it is accurate: log(-expm1(a)) near 0, log1p(-exp(a)) far from it.
    expected = torch.tensor([math.log(-math.expm1(v)) if v > -0.5 else math.log1p(-math.exp(v))
                             for v in a.tolist()], dtype=torch.float64)
    assert torch.allclose(value, expected, rtol=1e-14, atol=1e-300)
    (grad,) = torch.autograd.grad(value.sum(), a)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("kwargs, message", [
    (dict(var=0.0), "var must be > 0"),
    (dict(reg=-1.0), "reg must be >= 0"),
    (dict(layout="burkardt"), "layout must be one of"),
    (dict(vertices=torch.zeros(3, 9)), r"vertices must be \(d \+ 1, d\)"),
])
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SimplexGMM(9, **kwargs)


def test_calling_the_module_returns_the_log_likelihood():
    module = SimplexGMM(9, 0.25)
    embedding = torch.randn(6, 9)
    assert torch.equal(module(embedding), module.log_likelihood(embedding))


@pytest.mark.parametrize("d", [-3, 0])
def test_simplex_vertices_reject_every_d_below_one_with_one_message(d):
    with pytest.raises(ValueError, match=f"d must be >= 1, got {d}"):
        gmkernels.simplex_vertices(d)

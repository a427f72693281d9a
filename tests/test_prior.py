"""GaussianMixturePrior: the DeLiGAN and GM-GAN presets, sampling statistics, per-component
sampling, temperature, the sigma penalty's two reductions, per-row assignment, bad arguments."""
import math

import numpy as np
import pytest
import torch

import gmkernels
from gmkernels.nn import GaussianMixturePrior
from gmkernels.ops import mixture_sample as op

from conftest import require_backend


def assert_component_statistics(z, component, mu, covariance, components):
    """Per-component sample mean and covariance within 5 standard errors of the truth."""
    for c in components:
        sample = z[component == c].double()
        size = sample.shape[0]
        assert size > 100
        sigma = covariance[c].double()
        mean_bound = 5 * torch.sqrt(torch.diagonal(sigma) / size)
        assert ((sample.mean(0) - mu[c].double()).abs() <= mean_bound).all()
        diagonal = torch.diagonal(sigma)
        cov_bound = 5 * torch.sqrt((torch.outer(diagonal, diagonal) + sigma**2) / size)
        assert ((torch.cov(sample.T) - sigma).abs() <= cov_bound).all()


def test_deligan_preset_draws_means_from_unit_box_and_starts_sigma_at_point_two():
    prior = GaussianMixturePrior.deligan(100, 30, generator=torch.Generator().manual_seed(0))
    assert isinstance(prior.mu, torch.nn.Parameter) and isinstance(prior.scale, torch.nn.Parameter)
    assert prior.mu.shape == (100, 30) and prior.scale.shape == (100, 30)
    mu = prior.mu.detach()
    assert mu.min() >= -1 and mu.max() <= 1
    # U(-1, 1): mean 0, variance 1/3; 3000 draws, 5 standard errors.
    assert abs(mu.mean().item()) <= 5 * math.sqrt(1 / 3 / mu.numel())
    assert abs(mu.var().item() - 1 / 3) <= 5 * math.sqrt((1 / 5 - 1 / 9) / mu.numel())
    assert torch.equal(prior.scale.detach(), torch.full((100, 30), 0.2))


def test_gmgan_static_preset_is_fixed_isotropic_and_not_learned():
    prior = GaussianMixturePrior.gmgan_static(4, 3, c=2.0, variance=0.09,
                                              generator=torch.Generator().manual_seed(1))
    assert list(prior.parameters()) == []
    mu = prior.mu
    assert mu.abs().max() <= 2.0 and mu.abs().max() > 1.0  # U[-2, 2]: 12 draws, some past 1
    assert torch.allclose(prior.scale, torch.full((4, 3), 0.3))
    z, component = prior.sample(20000, generator=torch.Generator().manual_seed(2))
    assert not z.requires_grad
    covariance = 0.09 * torch.eye(3).expand(4, 3, 3)
    assert_component_statistics(z, component, mu, covariance, range(4))


def test_gmgan_dynamic_preset_learns_a_lower_triangular_factor():
    prior = GaussianMixturePrior.gmgan_dynamic(3, 4, c=0.5, variance=0.25)
    assert isinstance(prior.scale, torch.nn.Parameter) and prior.scale.shape == (3, 4, 4)
    assert torch.equal(prior.scale.detach(), 0.5 * torch.eye(4).expand(3, 4, 4))
    assert prior.mu.abs().max() <= 0.5
    z, _ = prior.sample(64, generator=torch.Generator().manual_seed(3))
    (z**2).sum().backward()
    grad = prior.scale.grad
    assert torch.count_nonzero(torch.triu(grad, 1)) == 0
    assert torch.count_nonzero(torch.tril(grad)) > 0 and prior.mu.grad.abs().sum() > 0


def test_sample_matches_each_components_mean_and_covariance(backend):
    require_backend(op)
    prior = GaussianMixturePrior(3, 3, "full", generator=torch.Generator().manual_seed(4)).to(backend)
    with torch.no_grad():
        prior.scale.copy_(torch.tensor([[[0.5, 0, 0], [0.2, 0.3, 0], [-0.1, 0.4, 0.6]]]).expand(3, 3, 3))
        prior.scale[1] *= 2
    with torch.no_grad():
        z, component = prior.sample(12000, generator=torch.Generator(device=backend).manual_seed(5))
    assert z.shape == (12000, 3) and component.dtype == torch.int64
    factor = torch.tril(prior.scale.detach()).cpu()
    assert_component_statistics(z.cpu(), component.cpu(), prior.mu.detach().cpu(),
                                factor @ factor.transpose(1, 2), range(3))


def test_sample_component_draws_only_that_gaussian():
    prior = GaussianMixturePrior(5, 2, "diag", generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        prior.scale.uniform_(0.1, 0.5)
    z = prior.sample_component(3, 8000, generator=torch.Generator().manual_seed(7)).detach()
    assert z.shape == (8000, 2)
    covariance = torch.diag_embed(prior.scale.detach() ** 2)
    assert_component_statistics(z, torch.full((8000,), 3), prior.mu.detach(), covariance, [3])
    with pytest.raises(ValueError, match=r"k must be in \[0, 5\)"):
        prior.sample_component(5, 10)
    with pytest.raises(ValueError, match="n must be >= 0"):
        prior.sample_component(0, -1)


@pytest.mark.parametrize("covariance", ["diag", "full", "fixed"])
def test_temperature_multiplies_the_standard_deviation(covariance):
    prior = GaussianMixturePrior(4, 6, covariance, generator=torch.Generator().manual_seed(8))
    draws = {}
    for temperature in (1.0, 0.5, 2.0, 0.0):
        z, component = prior.sample(500, temperature=temperature,
                                    generator=torch.Generator().manual_seed(9))
        draws[temperature] = (z.detach() - prior.mu.detach()[component]).double()
    base = draws[1.0]
    assert base.abs().max() > 0
    for temperature in (0.5, 2.0):
        assert torch.allclose(draws[temperature], temperature * base, rtol=1e-5, atol=1e-6)
    assert torch.equal(draws[0.0], torch.zeros_like(base))
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        prior.sample(3, temperature=-1.0)


def test_penalty_defaults_to_the_published_mean_and_offers_the_per_component_sum():
    prior = GaussianMixturePrior(4, 5, "diag")
    with torch.no_grad():
        prior.scale.copy_(torch.linspace(0.1, 1.5, 20).reshape(4, 5))
    sigma = prior.scale.detach()
    published = ((1 - sigma) ** 2).mean()
    per_component = ((1 - sigma) ** 2).sum(1).mean()
    assert torch.allclose(prior.penalty(), published)
    assert torch.allclose(prior.penalty("per_component"), per_component)
    assert torch.allclose(prior.penalty("per_component"), 5 * prior.penalty())
    prior.penalty().backward()
    assert torch.allclose(prior.scale.grad, -2 * (1 - sigma) / 20)
    with pytest.raises(ValueError, match="reduction must be one of"):
        prior.penalty("sum")


def test_penalty_of_a_full_factor_uses_its_diagonal():
    prior = GaussianMixturePrior(2, 3, "full", std=0.5)
    with torch.no_grad():
        prior.scale[:, 2, 0] = 7.0  # off-diagonal entries do not enter the penalty
    assert torch.allclose(prior.penalty(), torch.tensor(0.25))


def test_per_row_assignment_gives_row_i_component_i_mod_n():
    prior = GaussianMixturePrior.deligan(4, 2, assignment="per_row")
    _, component = prior.sample(10)
    assert torch.equal(component, torch.arange(10) % 4)
    # DeLiGAN: batch size = N, row i always uses component i.
    _, component = prior.sample(4)
    assert torch.equal(component, torch.arange(4))


def test_weights_set_the_component_frequencies():
    prior = GaussianMixturePrior(3, 2, weights=torch.tensor([1.0, 0.0, 3.0]))
    _, component = prior.sample(8000, generator=torch.Generator().manual_seed(10))
    counts = torch.bincount(component, minlength=3).double()
    assert counts[1] == 0
    assert abs(counts[2] / 8000 - 0.75) <= 5 * math.sqrt(0.75 * 0.25 / 8000)


def test_the_same_generators_reproduce_initialisation_and_samples():
    first = GaussianMixturePrior(3, 4, generator=torch.Generator().manual_seed(11))
    second = GaussianMixturePrior(3, 4, generator=torch.Generator().manual_seed(11))
    assert torch.equal(first.mu, second.mu)
    z1, c1 = first.sample(32, generator=torch.Generator().manual_seed(12))
    z2, c2 = second.sample(32, generator=torch.Generator().manual_seed(12))
    assert torch.equal(z1, z2) and torch.equal(c1, c2)


def test_float64_module_samples_float64_and_trains():
    prior = GaussianMixturePrior(3, 4, weights=torch.ones(3)).double()
    optimizer = torch.optim.SGD(prior.parameters(), lr=0.1)
    z, _ = prior.sample(16)
    assert z.dtype == torch.float64
    before = prior.scale.detach().clone()
    (z.sum() + prior.penalty()).backward()
    optimizer.step()
    assert not torch.equal(prior.scale.detach(), before)


@pytest.mark.parametrize("kwargs, message", [
    (dict(covariance="spherical"), "covariance must be one of"),
    (dict(assignment="cyclic"), "assignment must be one of"),
    (dict(num_components=0), "num_components must be >= 1"),
    (dict(std=0.0), "std must be > 0"),
    (dict(mean_range=-1.0), "mean_range must be >= 0"),
    (dict(std=math.inf), "std must be a finite real number"),
    (dict(weights=torch.ones(2)), r"weights must have shape \(num_components,\)"),
    (dict(weights=torch.tensor([1.0, -1.0, 1.0])), "weights must be finite and >= 0"),
])
def test_bad_constructor_arguments_raise_clear_errors(kwargs, message):
    args = dict(num_components=3, dim=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        GaussianMixturePrior(**args)


@pytest.mark.parametrize("kwargs", [dict(dim=2.5), dict(num_components=True), dict(num_components="3")])
def test_non_integer_sizes_raise_type_errors(kwargs):
    args = dict(num_components=3, dim=2)
    args.update(kwargs)
    name = next(iter(kwargs))
    with pytest.raises(TypeError, match=f"{name} must be a Python int or NumPy integer"):
        GaussianMixturePrior(**args)


def test_numpy_integer_sizes_are_accepted_as_ints():
    prior = GaussianMixturePrior(num_components=np.int64(3), dim=np.int32(2))
    assert (prior.num_components, prior.dim) == (3, 2)
    assert type(prior.num_components) is int and type(prior.dim) is int
    assert prior.sample_component(np.int64(1), np.int64(4)).shape == (4, 2)


def test_bad_preset_variance_raises():
    with pytest.raises(ValueError, match="variance must be > 0"):
        GaussianMixturePrior.gmgan_static(2, 2, variance=0.0)


def test_module_is_exported_from_gmkernels_nn():
    assert gmkernels.nn.GaussianMixturePrior is GaussianMixturePrior

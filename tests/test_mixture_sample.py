"""mixture_sample on every backend: the Philox stream, values and gradients against the float64
reference, gradcheck, opcheck, statistics, RNG rules, bad input, torch.compile."""
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import gmkernels
from gmkernels.ops import mixture_sample as op
from gmkernels.ops.mixture_sample import mixture_sample_with_seed
from gmkernels.reference.mixture_sample import mixture_sample_given_eps
from gmkernels.reference.philox import normal_rows, philox4x32_10

from conftest import require_backend


def make_inputs(num_components, dim, full, dtype=torch.float64, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    mu = torch.randn(num_components, dim, generator=gen, dtype=dtype)
    if full:
        scale = torch.randn(num_components, dim, dim, generator=gen, dtype=dtype)
    else:
        scale = torch.rand(num_components, dim, generator=gen, dtype=dtype) + 0.1
    return mu.to(device).requires_grad_(), scale.to(device).requires_grad_()


def kernel_eps(component, dim, seed, dtype, device):
    """The eps a backend uses, read back exactly: with mu = 0 and unit diagonal scale, z = eps."""
    zeros = torch.zeros(int(component.max()) + 1 if component.numel() else 1, dim, dtype=dtype, device=device)
    return mixture_sample_with_seed(zeros, torch.ones_like(zeros), component, seed)


def test_reference_philox_matches_the_published_check_vector():
    bits = philox4x32_10(torch.tensor(42), torch.arange(4))[0]
    assert [hex(b) for b in bits.tolist()] == ["0x9ceaf053", "0xfcdb2127", "0xd36c0225", "0xbac70475"]


@pytest.mark.parametrize("dim", [1, 3, 4, 9, 130])
def test_backend_stream_equals_reference_stream_within_1e5(backend, dim):
    require_backend(op)
    component = torch.zeros(257, dtype=torch.int64, device=backend)
    seed = torch.tensor(2**40 + 12345)
    eps = kernel_eps(component, dim, seed, torch.float32, backend).cpu()
    assert (eps - normal_rows(seed, 257, dim)).abs().max() <= 1e-5


@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_values_match_reference_within_float_rounding(backend, full, dtype):
    require_backend(op)
    mu, scale = make_inputs(4, 6, full, dtype, backend)
    component = torch.randint(4, (300,), device=backend)
    seed = torch.tensor(7)
    z = mixture_sample_with_seed(mu, scale, component, seed)
    eps = kernel_eps(component, 6, seed, torch.float64, backend)
    truth = mixture_sample_given_eps(mu.double(), scale.double(), component, eps)
    assert z.dtype == dtype and z.shape == (300, 6)
    tolerance = 1e-12 if dtype == torch.float64 else 2e-6
    assert (z.double() - truth).abs().max() <= tolerance * (1 + truth.abs().max())


@given(num_components=st.integers(1, 5), dim=st.integers(1, 9), n=st.integers(0, 40),
       full=st.booleans(), seed=st.integers(0, 2**62))
def test_gradients_equal_reference_given_same_eps(num_components, dim, n, full, seed):
    for name in gmkernels.backends():
        if name not in op.IMPLEMENTED:
            continue
        with gmkernels.use_backend(name):
            device = "cuda" if name == "cuda" else "cpu"
            mu, scale = make_inputs(num_components, dim, full, torch.float64, device)
            component = torch.randint(num_components, (n,), device=device)
            seed_t = torch.tensor(seed)
            z = mixture_sample_with_seed(mu, scale, component, seed_t)
            grad_z = torch.randn_like(z)
            grads = torch.autograd.grad(z, (mu, scale), grad_z, allow_unused=True)
            eps = kernel_eps(component, dim, seed_t, torch.float64, device) if n else z.detach()
        truth = mixture_sample_given_eps(mu, scale, component, eps)
        expected = torch.autograd.grad(truth, (mu, scale), grad_z, allow_unused=True)
        for got, want in zip(grads, expected):
            want = torch.zeros_like(got) if want is None else want
            assert torch.allclose(got, want, rtol=1e-12, atol=1e-12), name


@pytest.mark.parametrize("full", [False, True])
def test_gradcheck_float64(backend, full):
    require_backend(op)
    mu, scale = make_inputs(3, 4, full, torch.float64, backend)
    component = torch.tensor([0, 2, 2, 1, 0, 2], device=backend)
    seed = torch.tensor(99)
    assert torch.autograd.gradcheck(
        lambda m, s: mixture_sample_with_seed(m, s, component, seed), (mu, scale))


@pytest.mark.parametrize("full", [False, True])
def test_opcheck(full):
    if "cpp" not in gmkernels.backends():
        pytest.skip("compiled ops not built")
    mu, scale = make_inputs(3, 5, full, torch.float32)
    component = torch.randint(3, (17,))
    torch.library.opcheck(torch.ops.gmkernels.mixture_sample.default,
                          (mu, scale, component, torch.tensor(5)))


def test_non_contiguous_inputs_give_the_contiguous_result(backend):
    require_backend(op)
    mu = torch.randn(3, 6, device=backend, dtype=torch.float64).T
    scale = torch.rand(3, 6, device=backend, dtype=torch.float64).T
    component = torch.randint(6, (20, 2), device=backend)[:, 0]
    assert not (mu.is_contiguous() or scale.is_contiguous() or component.is_contiguous())
    seed = torch.tensor(3)
    expected = mixture_sample_with_seed(mu.contiguous(), scale.contiguous(), component.contiguous(), seed)
    assert torch.equal(mixture_sample_with_seed(mu, scale, component, seed), expected)


def test_zero_samples_give_empty_z_and_zero_gradients(backend):
    require_backend(op)
    mu, scale = make_inputs(3, 4, False, torch.float32, backend)
    z, component = gmkernels.mixture_sample(mu, scale, 0)
    assert z.shape == (0, 4) and component.shape == (0,) and component.dtype == torch.int64
    grads = torch.autograd.grad(z.sum(), (mu, scale), allow_unused=True)
    assert all(g is None or not g.any() for g in grads)


BAD_INPUTS = [
    (dict(mu=torch.zeros(3)), ValueError, r"mu must be \(N, K\)"),
    (dict(mu=torch.zeros(0, 2), scale=torch.ones(0, 2)), ValueError, "at least one component"),
    (dict(scale=torch.ones(2, 4)), ValueError, "scale must be"),
    (dict(scale=torch.ones(2, 3, 4)), ValueError, "scale must be"),
    (dict(mu=torch.zeros(2, 3, dtype=torch.int64)), TypeError, "mu must have dtype"),
    (dict(scale=torch.ones(2, 3, dtype=torch.float64)), TypeError, "scale must have the dtype of mu"),
    (dict(n=-1), ValueError, "n must be >= 0"),
    (dict(n=2.0), TypeError, "n must be a Python int"),
    (dict(component=torch.tensor([0, 5, 1, 1])), ValueError, r"component must lie in \[0, 2\)"),
    (dict(component=torch.tensor([0, 1])), ValueError, r"component must have shape \(n,\)"),
    (dict(component=torch.tensor([0.0, 1, 1, 0])), TypeError, "component must have dtype int64"),
    (dict(scale=torch.tensor([[1.0, math.nan, 1], [1, 1, 1]])), ValueError, "scale must be finite"),
    (dict(weights=torch.tensor([1.0, -1.0])), ValueError, "weights must be >= 0"),
    (dict(weights=torch.ones(3)), ValueError, r"weights must have shape \(N,\)"),
    (dict(generator=0), TypeError, "generator must be a torch.Generator"),
]


@pytest.mark.parametrize("override, error, message", BAD_INPUTS)
def test_bad_input_raises_a_clear_error(override, error, message):
    args = dict(mu=torch.zeros(2, 3), scale=torch.ones(2, 3), n=4)
    args.update(override)
    with pytest.raises(error, match=message):
        gmkernels.mixture_sample(args.pop("mu"), args.pop("scale"), args.pop("n"), **args)


@pytest.mark.parametrize("full", [False, True])
def test_per_component_mean_and_covariance_within_confidence_bounds(backend, full):
    require_backend(op)
    num_components, dim, n = 3, 3, 30000
    mu, scale = make_inputs(num_components, dim, full, torch.float64, backend, seed=11)
    gen = torch.Generator(device=backend).manual_seed(5)
    with torch.no_grad():
        z, component = gmkernels.mixture_sample(mu, scale, n, generator=gen)
    counts = torch.bincount(component, minlength=num_components).double()
    # Uniform components: each count is Binomial(n, 1/N); 5 standard deviations.
    assert ((counts - n / num_components).abs() <= 5 * math.sqrt(n / num_components)).all()
    for c in range(num_components):
        sample = z[component == c].double().cpu()
        tril = torch.tril(scale[c]).detach().cpu() if full else torch.diag(scale[c].detach().cpu())
        sigma = tril @ tril.T
        size = sample.shape[0]
        mean_bound = 5 * torch.sqrt(torch.diagonal(sigma) / size)
        assert ((sample.mean(0) - mu[c].detach().cpu()).abs() <= mean_bound).all()
        # Var of a sample covariance entry is (S_ii S_jj + S_ij^2) / n for Gaussians.
        cov_bound = 5 * torch.sqrt((torch.outer(torch.diagonal(sigma), torch.diagonal(sigma)) + sigma**2) / size)
        assert ((torch.cov(sample.T) - sigma).abs() <= cov_bound).all()


def test_weights_set_component_frequencies():
    weights = torch.tensor([0.1, 0.0, 0.6, 0.3])
    mu, scale = torch.zeros(4, 2), torch.ones(4, 2)
    _, component = gmkernels.mixture_sample(mu, scale, 20000, weights=weights,
                                            generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(component, minlength=4).double() / 20000
    assert freq[1] == 0
    assert ((freq - weights.double()).abs() <= 5 * torch.sqrt(weights.double() * (1 - weights.double()) / 20000) + 1e-12).all()


def test_manual_seed_reproduces_z_exactly_and_generator_leaves_global_rng_alone(backend):
    require_backend(op)
    mu, scale = make_inputs(4, 5, True, torch.float32, backend)
    torch.manual_seed(123)
    z1, c1 = gmkernels.mixture_sample(mu, scale, 64)
    torch.manual_seed(123)
    z2, c2 = gmkernels.mixture_sample(mu, scale, 64)
    assert torch.equal(z1, z2) and torch.equal(c1, c2)
    state = torch.get_rng_state()
    gen = torch.Generator(device=backend).manual_seed(9)
    z3, _ = gmkernels.mixture_sample(mu, scale, 64, generator=gen)
    assert torch.equal(torch.get_rng_state(), state)
    z4, _ = gmkernels.mixture_sample(mu, scale, 64, generator=torch.Generator(device=backend).manual_seed(9))
    assert torch.equal(z3, z4)


def test_caller_given_components_are_used():
    mu = torch.tensor([[0.0, 0.0], [100.0, 100.0]])
    component = torch.tensor([1, 1, 0, 1])
    z, returned = gmkernels.mixture_sample(mu, torch.full((2, 2), 1e-3), 4, component=component)
    assert returned is component
    assert torch.equal(z.round(), mu[component])


def test_cpp_backward_is_identical_across_runs_and_thread_counts():
    if "cpp" not in gmkernels.backends():
        pytest.skip("compiled ops not built")
    mu, scale = make_inputs(5, 33, False, torch.float32)
    component = torch.randint(5, (4000,))
    seed = torch.tensor(17)
    grad_z = torch.randn(4000, 33)
    results = []
    threads = torch.get_num_threads()
    try:
        for count in (1, 2, 1):
            torch.set_num_threads(count)
            with gmkernels.use_backend("cpp"):
                z = mixture_sample_with_seed(mu, scale, component, seed)
                results.append(torch.autograd.grad(z, (mu, scale), grad_z))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


def test_works_under_torch_compile_fullgraph(backend):
    require_backend(op)
    if backend.type == "cpu" and gmkernels.get_backend() == "triton":
        pytest.skip("Triton interpreter ops are exercised in eager mode")
    mu, scale = make_inputs(3, 4, False, torch.float32, backend)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def sample_loss(m, s):
        z, _ = gmkernels.mixture_sample(m, s, 32)
        return (z**2).sum()

    loss = sample_loss(mu, scale)
    loss.backward()
    assert torch.isfinite(loss) and mu.grad is not None and scale.grad is not None

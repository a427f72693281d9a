"""mixture_sample on every backend: the Philox stream, values and gradients against the float64
reference, gradcheck, opcheck, statistics, RNG rules, bad input, torch.compile."""
import contextlib
import math
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import gmkernels
from gmkernels.ops import mixture_sample as op
from gmkernels.ops.mixture_sample import mixture_sample_with_seed
from gmkernels.reference.mixture_sample import mixture_sample_given_eps
from gmkernels.reference.philox import normal_rows, philox4x32_10

from conftest import assert_float_rounding, backend_device, require_backend, spy_on

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


@contextlib.contextmanager
def recovery(setting: str):
    """GMKERNELS_SAMPLE_RECOVER_EPS for the block: "1" lets the cpp backend's diagonal backward
    read eps back from z (the default), "0" makes it regenerate eps from the seed."""
    previous = os.environ.get(op.RECOVER_SWITCH)
    os.environ[op.RECOVER_SWITCH] = setting
    try:
        yield
    finally:
        if previous is None:
            del os.environ[op.RECOVER_SWITCH]
        else:
            os.environ[op.RECOVER_SWITCH] = previous


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
       full=st.booleans(), seed=st.integers(0, 2**62), recover=st.sampled_from(["0", "1"]))
def test_gradients_equal_reference_given_same_eps(num_components, dim, n, full, seed, recover):
    """Every backend; the cpp backend's diagonal backward both reading eps back from z and
    regenerating it."""
    for name in gmkernels.backends():
        if name not in op.IMPLEMENTED:
            continue
        with gmkernels.use_backend(name), recovery(recover):
            device = backend_device(name)
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
    # The Triton interpreter costs ~20 ms per program: the fast mode's random projections keep
    # the check (analytical vs numerical Jacobian) at a few dozen calls.
    interpreted = gmkernels.get_backend() == "triton" and backend.type == "cpu"
    assert torch.autograd.gradcheck(
        lambda m, s: mixture_sample_with_seed(m, s, component, seed), (mu, scale),
        fast_mode=interpreted)


OP_NAMESPACES = {"cpp": "gmkernels", "cuda": "gmkernels", "triton": "gmkernels_triton"}


@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize("name", ["cpp", "cuda", "triton"])
def test_opcheck_forward_and_backward_ops(name, full):
    if name not in gmkernels.backends() or name not in op.IMPLEMENTED:
        pytest.skip(f"{name} ops not available here")
    namespace = getattr(torch.ops, OP_NAMESPACES[name])
    device = backend_device(name)
    mu, scale = make_inputs(3, 5, full, torch.float32, device)
    component = torch.randint(3, (17,), device=device)
    seed = torch.tensor(5)
    torch.library.opcheck(namespace.mixture_sample.default, (mu, scale, component, seed))
    torch.library.opcheck(namespace.mixture_sample_backward.default,
                          (torch.randn(17, 5, device=device), scale.detach(), component, seed))


@pytest.mark.parametrize("full", [False, True])
def test_non_contiguous_inputs_give_the_contiguous_result(backend, full):
    require_backend(op)
    mu = torch.randn(3, 6, device=backend, dtype=torch.float64).T
    if full:
        scale = torch.randn(6, 3, 3, device=backend, dtype=torch.float64).transpose(1, 2)
    else:
        scale = torch.rand(3, 6, device=backend, dtype=torch.float64).T
    component = torch.randint(6, (20, 2), device=backend)[:, 0]
    assert not (mu.is_contiguous() or scale.is_contiguous() or component.is_contiguous())
    seed = torch.tensor(3)
    expected = mixture_sample_with_seed(mu.contiguous(), scale.contiguous(), component.contiguous(), seed)
    assert torch.equal(mixture_sample_with_seed(mu, scale, component, seed), expected)


@pytest.mark.parametrize("full", [False, True])
def test_zero_samples_give_empty_z_and_zero_gradients(backend, full):
    require_backend(op)
    mu, scale = make_inputs(3, 4, full, torch.float32, backend)
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


@pytest.mark.parametrize("recover", ["0", "1"])
@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize("num_components", [1, 5])
def test_cpp_is_identical_across_runs_thread_counts_and_deterministic_mode(num_components, full, recover):
    """The CPU kernels are deterministic by construction (one writer per gradient entry, sums
    in sample order), so torch.use_deterministic_algorithms changes nothing there; the diagonal
    backward regenerating eps ("0") or reading it back from z ("1") alike."""
    if "cpp" not in gmkernels.backends():
        pytest.skip("compiled ops not built")
    # 4500 samples: the diagonal backward cuts them into chunks of 2048 consecutive samples (added
    # in chunk order) and the full one into row blocks that follow the thread count.
    mu, scale = make_inputs(num_components, 33, full, torch.float32)
    component = torch.randint(num_components, (4500,))
    seed = torch.tensor(17)
    grad_z = torch.randn(4500, 33)
    results = []
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        for count, strict in ((1, False), (2, False), (3, True), (1, True)):
            torch.set_num_threads(count)
            torch.use_deterministic_algorithms(strict)
            with gmkernels.use_backend("cpp"), recovery(recover):
                z = mixture_sample_with_seed(mu, scale, component, seed)
                results.append((z,) + torch.autograd.grad(z, (mu, scale), grad_z))
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


@pytest.mark.parametrize("full", [False, True])
def test_works_under_torch_compile_fullgraph(backend, full):
    require_backend(op)
    if backend.type == "cpu" and gmkernels.get_backend() == "triton":
        pytest.skip("Triton interpreter ops are exercised in eager mode")
    mu, scale = make_inputs(3, 4, full, torch.float32, backend)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def sample_loss(m, s):
        z, _ = gmkernels.mixture_sample(m, s, 32)
        return (z**2).sum()

    loss = sample_loss(mu, scale)
    loss.backward()
    assert torch.isfinite(loss) and mu.grad is not None and scale.grad is not None


def kernel_backends():
    """(name, device) of every usable backend that implements the op."""
    return [(name, backend_device(name)) for name in gmkernels.backends() if name in op.IMPLEMENTED]


@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize("dim", [1, 5, 33, 70])
def test_every_backend_gives_the_same_z_within_1e5(dim, full):
    """One seed, one z: each backend's normals (CPU polynomials, libdevice, numpy in the Triton
    interpreter, torch in the reference) agree to a few float32 ulp, so z agrees within 1e-5
    for scales of order one."""
    gen = torch.Generator().manual_seed(dim)
    mu = torch.randn(3, dim, generator=gen)
    if full:
        scale = torch.randn(3, dim, dim, generator=gen) / math.sqrt(dim)
    else:
        scale = torch.rand(3, dim, generator=gen) + 0.1
    component = torch.randint(3, (100,), generator=gen)
    seed = torch.tensor(2**50 + 3)
    results = {}
    for name, device in kernel_backends():
        with gmkernels.use_backend(name):
            results[name] = mixture_sample_with_seed(
                mu.to(device), scale.to(device), component.to(device), seed).cpu()
    assert len(results) >= 2
    for name, z in results.items():
        assert (z - results["reference"]).abs().max() <= 1e-5, name


@pytest.mark.parametrize("full", [False, True])
# (3, 9, 5000): the diagonal backward's chunks of 2048 consecutive samples, added in order.
@pytest.mark.parametrize("num_components, dim, n", [(1, 70, 300), (4, 33, 257), (2, 130, 40), (3, 9, 5000)])
def test_gradients_equal_reference_given_same_eps_across_tile_boundaries(
        backend, num_components, dim, n, full):
    """Shapes that cross the kernels' SIMD blocks, register tiles and sample tiles (the
    hypothesis test above keeps dim <= 9)."""
    require_backend(op)
    mu, scale = make_inputs(num_components, dim, full, torch.float64, backend)
    component = torch.randint(num_components, (n,), generator=torch.Generator().manual_seed(n)).to(backend)
    seed = torch.tensor(31337)
    z = mixture_sample_with_seed(mu, scale, component, seed)
    grad_z = torch.randn_like(z)
    grads = torch.autograd.grad(z, (mu, scale), grad_z)
    eps = kernel_eps(component, dim, seed, torch.float64, backend)
    truth = mixture_sample_given_eps(mu, scale, component, eps)
    expected = torch.autograd.grad(truth, (mu, scale), grad_z)
    assert torch.allclose(z, truth, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads, expected):
        assert torch.allclose(got, want, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("full", [False, True])
def test_float32_gradients_within_float_rounding_of_the_float64_truth(backend, full):
    """Long per-component sums (2500 samples per component): the float32 kernels' error against
    the float64 truth is at most twice that of plain float32 PyTorch given the same eps. Run in
    deterministic mode: PyTorch's CPU index_put accumulate otherwise adds in a thread-dependent
    order, and its error (the yardstick, and the reference backend's own) would vary."""
    require_backend(op)
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        check_float32_gradients(backend, full)
    finally:
        torch.use_deterministic_algorithms(deterministic)


def check_float32_gradients(backend, full):
    mu32, scale32 = make_inputs(2, 9, full, torch.float32, backend, seed=3)
    component = torch.arange(5000, device=backend) % 2
    seed = torch.tensor(4242)
    z = mixture_sample_with_seed(mu32, scale32, component, seed)
    grad_z = torch.randn(z.shape, generator=torch.Generator().manual_seed(5)).to(backend)
    grads = torch.autograd.grad(z, (mu32, scale32), grad_z)
    eps = kernel_eps(component, 9, seed, torch.float32, backend)
    mu64, scale64 = (t.detach().double().requires_grad_() for t in (mu32, scale32))
    truth = torch.autograd.grad(mixture_sample_given_eps(mu64, scale64, component, eps.double()),
                                (mu64, scale64), grad_z.double())
    plain = torch.autograd.grad(mixture_sample_given_eps(mu32, scale32, component, eps),
                                (mu32, scale32), grad_z)
    for got, want, plain32 in zip(grads, truth, plain):
        assert_float_rounding(got, want, plain32)


def test_same_seed_gives_bitwise_identical_results_in_deterministic_mode(backend):
    """torch.use_deterministic_algorithms(True): every gradient entry has one writer and a fixed
    summation order (CUDA and Triton leave their atomic path), so runs repeat bit for bit."""
    require_backend(op)
    mu, scale = make_inputs(2, 9, True, torch.float32, backend, seed=6)
    diag_scale = torch.rand(2, 9, device=backend, requires_grad=True)
    component = torch.randint(2, (3000,), generator=torch.Generator().manual_seed(7)).to(backend)
    seed = torch.tensor(99)
    grad_z = torch.randn(3000, 9, generator=torch.Generator().manual_seed(8)).to(backend)
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = []
        for _ in range(2):
            run = []
            for s in (scale, diag_scale):
                z = mixture_sample_with_seed(mu, s, component, seed)
                run += [z, *torch.autograd.grad(z, (mu, s), grad_z)]
            runs.append(run)
    finally:
        torch.use_deterministic_algorithms(deterministic)
    assert all(torch.equal(a, b) for a, b in zip(*runs))


@pytest.mark.parametrize("full", [False, True])
def test_atomic_and_deterministic_backward_paths_agree(backend, full):
    """Outside deterministic mode the CUDA and Triton backwards split a large component over
    several programs that add atomically; the sums equal the ordered ones up to rounding."""
    require_backend(op)
    if gmkernels.get_backend() not in ("cuda", "triton"):
        pytest.skip("only the CUDA and Triton backwards have an atomic path")
    mu, scale = make_inputs(1, 6, full, torch.float64, backend, seed=9)
    component = torch.zeros(2100, dtype=torch.int64, device=backend)  # > 2 x 1024 samples
    seed = torch.tensor(5)
    grad_z = torch.randn(2100, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).to(backend)
    deterministic = torch.are_deterministic_algorithms_enabled()
    results = []
    try:
        for strict in (False, True):
            torch.use_deterministic_algorithms(strict)
            z = mixture_sample_with_seed(mu, scale, component, seed)
            results.append(torch.autograd.grad(z, (mu, scale), grad_z))
    finally:
        torch.use_deterministic_algorithms(deterministic)
    for atomic, ordered in zip(*results):
        assert torch.allclose(atomic, ordered, rtol=1e-12, atol=1e-12)


PEAK_MEMORY_SCRIPT = r"""
import re, sys, torch
import gmkernels
from gmkernels.ops.mixture_sample import mixture_sample_with_seed

def peak_kib():
    return int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read()).group(1))

def reset_peak():
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")

torch.set_num_threads(1)
for full, (num_components, dim, n) in ((False, (8, 256, 32768)), (True, (4, 64, 65536))):
    mu = torch.randn(num_components, dim, requires_grad=True)
    shape = (num_components, dim, dim) if full else (num_components, dim)
    scale = (torch.rand(shape) / dim).requires_grad_()
    component = torch.randint(num_components, (n,))
    grad_z = torch.randn(n, dim)
    with gmkernels.use_backend("cpp"):
        warm = mixture_sample_with_seed(mu, scale, component[:64], torch.tensor(1))
        warm.backward(torch.ones_like(warm))
        reset_peak()
        before = peak_kib()
        z = mixture_sample_with_seed(mu, scale, component, torch.tensor(2))
        z.backward(grad_z)
        print(full, (peak_kib() - before) / 1024, z.numel() * 4 / 2**20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self peak RSS")
def test_cpp_forward_and_backward_keep_no_n_by_k_buffer_besides_z():
    """Peak memory of forward + backward (grad_z given): z, plus less than one more (n, K)
    float32 buffer (eps is regenerated, never stored; the reference needs several)."""
    if "cpp" not in gmkernels.backends():
        pytest.skip("compiled ops not built")
    result = subprocess.run([sys.executable, "-c", PEAK_MEMORY_SCRIPT], capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": ROOT}, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    for line in result.stdout.strip().splitlines():
        full, growth_mib, z_mib = line.split()
        assert float(growth_mib) < 1.5 * float(z_mib), line


@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize("upstream", ["z.sum()", "w.expand(n, K)"])
def test_broadcast_upstream_gradient_gives_the_dense_gradient(backend, full, upstream):
    """The upstream gradient of z.sum() is one value expanded over (n, K), and a caller may pass
    a row w expanded over the samples: stride 0 over the samples. The kernels
    read that row again for every sample instead of a copy. The gradients must equal those of the
    same values as a dense tensor bit for bit (the same sums in the same order), and the float64
    reference given the same eps."""
    require_backend(op)
    n, dim = 300, 7
    mu, scale = make_inputs(5, dim, full, torch.float64, backend, seed=21)
    component = torch.randint(5, (n,), generator=torch.Generator().manual_seed(22)).to(backend)
    seed = torch.tensor(9)
    z = mixture_sample_with_seed(mu, scale, component, seed)
    if upstream == "z.sum()":
        (grad_z,) = torch.autograd.grad(z.sum(), z, retain_graph=True)
    else:
        w = torch.randn(dim, dtype=torch.float64, generator=torch.Generator().manual_seed(23))
        grad_z = w.to(backend).expand(n, dim)
    assert grad_z.stride(0) == 0
    broadcast = torch.autograd.grad(z, (mu, scale), grad_z, retain_graph=True)
    dense = torch.autograd.grad(z, (mu, scale), grad_z.contiguous())
    for got, want in zip(broadcast, dense):
        assert torch.equal(got, want)
    eps = kernel_eps(component, dim, seed, torch.float64, backend)
    z_ref = mixture_sample_given_eps(mu, scale, component, eps)
    for got, want in zip(broadcast, torch.autograd.grad(z_ref, (mu, scale), grad_z.contiguous())):
        assert torch.allclose(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("full", [False, True])
def test_opcheck_backward_op_with_a_broadcast_upstream_gradient(full):
    if "cpp" not in gmkernels.backends():
        pytest.skip("compiled ops not built")
    mu, scale = make_inputs(3, 5, full, torch.float32)
    component = torch.randint(3, (17,))
    seed = torch.tensor(5)
    for grad_z in (torch.ones(()).expand(17, 5), torch.randn(5).expand(17, 5)):
        assert grad_z.stride(0) == 0
        torch.library.opcheck(torch.ops.gmkernels.mixture_sample_backward.default,
                              (grad_z, scale.detach(), component, seed))


def cpp_values_and_gradients(mu, scale, component, seed, grad_z, threads):
    """z and the gradients of mu and scale from the cpp backend with `threads` OpenMP threads."""
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        with gmkernels.use_backend("cpp"):
            z = mixture_sample_with_seed(mu, scale, component, seed)
            return (z,) + torch.autograd.grad(z, (mu, scale), grad_z)
    finally:
        torch.set_num_threads(previous)


def nan_above_diagonal(scale):
    """Only the lower triangle of a full scale is used: NaN above it must not reach z."""
    with torch.no_grad():
        upper = torch.ones(scale.shape[-2:], dtype=torch.bool).triu(1)
        scale[:, upper] = float("nan")


def check_cpp_against_reference(mu, scale, component, seed, tolerance, grad_z=None):
    """The cpp kernels against the reference given the same eps (values and gradients of
    ``grad_z``, a dense random one by default, finite), and the same bits for 1, 2 and 3
    threads."""
    if grad_z is None:
        grad_z = torch.randn(component.shape[0], mu.shape[1], dtype=mu.dtype,
                             generator=torch.Generator().manual_seed(component.shape[0]))
    results = [cpp_values_and_gradients(mu, scale, component, seed, grad_z, threads)
               for threads in (1, 2, 3)]
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))
    eps = kernel_eps(component, mu.shape[1], seed, mu.dtype, "cpu")
    truth = mixture_sample_given_eps(mu, scale, component, eps)
    expected = (truth,) + torch.autograd.grad(truth, (mu, scale), grad_z)
    for got, want in zip(results[0], expected):
        assert torch.isfinite(got).all()
        assert (got - want).abs().max() <= tolerance * (1 + want.abs().max())


@pytest.mark.parametrize("upstream", ["dense", "z.sum()"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
# The regenerating diagonal backward's two schedules (GMKERNELS_SAMPLE_RECOVER_EPS=0; the backward
# from the samples has its own test below): threads over chunks of samples, or over bands of a
# row's columns when there are fewer chunks than threads (one chunk: n <= 16 N; two: N = 5,
# n = 4000, three threads) and a row holds two bands (dim >= 125 on AVX-512, 61 on AVX2); 1 thread
# runs the chunks, 2 and 3 the bands here, with the same bits. dim 130 and 257 end in a partial
# band.
@pytest.mark.parametrize("num_components, dim, num_samples",
                         [(300, 130, 4000), (5, 257, 4000), (200, 256, 1500), (3, 12, 4500)])
def test_cpp_diagonal_backward_by_chunks_or_by_columns_matches_reference(
        num_components, dim, num_samples, dtype, upstream):
    if "cpp" not in gmkernels.backends():
        pytest.skip("compiled ops not built")
    mu, scale = make_inputs(num_components, dim, False, dtype, seed=dim)
    generator = torch.Generator().manual_seed(3)
    component = torch.randint(num_components, (num_samples,), generator=generator)
    grad_z = None
    if upstream == "z.sum()":   # a stride-0 upstream gradient, one row read for all
        grad_z = torch.randn(1, dim, dtype=dtype, generator=generator).expand(num_samples, dim)
    with recovery("0"):
        check_cpp_against_reference(mu, scale, component, torch.tensor(2**40 + dim),
                                    2e-12 if dtype == torch.float64 else 2e-5, grad_z)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
# dim <= 16: the walk over the counter stream (1 vector per row, 2 for float64 past 8); 5000
# samples span three of the backward's chunks of 2048 samples.
@pytest.mark.parametrize("num_components, dim", [(4, 2), (3, 3), (7, 9), (2, 16)])
def test_cpp_full_small_dimension_walk_matches_reference_for_any_thread_count(
        num_components, dim, dtype):
    if "cpp" not in gmkernels.backends():
        pytest.skip("compiled ops not built")
    mu, scale = make_inputs(num_components, dim, True, dtype, seed=dim)
    nan_above_diagonal(scale)
    component = torch.randint(num_components, (5000,), generator=torch.Generator().manual_seed(1))
    check_cpp_against_reference(mu, scale, component, torch.tensor(2**33 + dim),
                                     2e-12 if dtype == torch.float64 else 2e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("dim", [64, 130])
def test_cpp_full_direct_product_for_few_samples_per_component_matches_reference(dim, dtype):
    """Components with at most dim / 16 samples skip packing L^T (the direct row-wise product):
    200 components with one sample each, others with 2 to 11 samples (groups of 4 sharing L's rows,
    a remainder, and past the threshold the packed tiles)."""
    if "cpp" not in gmkernels.backends():
        pytest.skip("compiled ops not built")
    counts = [1] * 200 + [2, 3, 4, 5, 7, 8, 9, 11]
    mu, scale = make_inputs(len(counts), dim, True, dtype, seed=dim)
    nan_above_diagonal(scale)
    component = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    component = component[torch.randperm(component.numel(), generator=torch.Generator().manual_seed(2))]
    check_cpp_against_reference(mu, scale, component, torch.tensor(77),
                                     2e-12 if dtype == torch.float64 else 2e-5)


# The CPU backward that reads eps back from the forward's z, (z - mu_c) / scale_c (cpp, CPU,
# eager, diagonal scale; see recovers_noise), instead of regenerating it from the seed.
def cpp_gradients(mu, scale, component, seed, grad_z, recover=True):
    """The cpp backend's (grad_mu, grad_scale), eps recovered from z or (recover=False)
    regenerated from the seed."""
    with recovery("1" if recover else "0"):
        return cpp_values_and_gradients(mu, scale, component, seed, grad_z,
                                        torch.get_num_threads())[1:]


def recovered_calls(patch):
    """Spies on the op of the recovering backward; returns the list of its calls' arguments."""
    return spy_on(patch, "mixture_sample_backward_from_samples", lambda args: args)


@pytest.mark.parametrize("upstream", ["dense", "z.sum()"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
# Its schedules: threads over chunks of samples (40 components, 20000 samples: 10 chunks); with
# fewer chunks than threads, one chunk (200 components, 3000 samples: one chunk of 3200; 400
# components, 6000 samples, dim 130), threads over ranges of components, or, where one component
# holds 3/4 of the samples (dominant), over bands of 16 columns (dim 130: the last band
# partial); one thread for small problems.
@pytest.mark.parametrize("num_components, dim, num_samples, dominant",
                         [(200, 256, 3000, False), (40, 64, 20000, False), (400, 130, 6000, False),
                          (200, 256, 3000, True), (400, 130, 6000, True), (5, 7, 300, False)])
def test_cpp_backward_from_samples_matches_reference_for_any_thread_count(
        num_components, dim, num_samples, dominant, dtype, upstream):
    """The same bits for 1, 2 and 3 threads and the reference's gradients given the same eps; the
    recovering op ran, and its bits are not the regenerating path's (so it did recover)."""
    if "cpp" not in gmkernels.backends():
        pytest.skip("compiled ops not built")
    mu, scale = make_inputs(num_components, dim, False, dtype, seed=dim)
    generator = torch.Generator().manual_seed(4)
    component = torch.randint(num_components, (num_samples,), generator=generator)
    if dominant:
        component[:num_samples * 3 // 4] = num_components // 2
    grad_z = torch.randn(num_samples, dim, dtype=dtype, generator=generator)
    if upstream == "z.sum()":
        grad_z = grad_z[:1].expand(num_samples, dim)
    seed = torch.tensor(2**41 + dim)
    with pytest.MonkeyPatch.context() as patch:
        calls = recovered_calls(patch)
        check_cpp_against_reference(mu, scale, component, seed,
                                    2e-12 if dtype == torch.float64 else 2e-5, grad_z)
    assert len(calls) == 3
    recovered = cpp_gradients(mu, scale, component, seed, grad_z)
    regenerated = cpp_gradients(mu, scale, component, seed, grad_z, recover=False)
    assert torch.equal(recovered[0], regenerated[0])   # grad_mu: sums of grad_z either way
    assert not torch.equal(recovered[1], regenerated[1])


def test_cpp_backward_from_samples_float32_error_near_the_ratio_limit():
    """Every |mu| at 60 times its |scale| (the recovery's limit is 64): grad_scale's float32
    error against the float64 truth stays within 4x the regenerating path's."""
    if "cpp" not in gmkernels.backends():
        pytest.skip("compiled ops not built")
    generator = torch.Generator().manual_seed(6)
    scale = (torch.rand(4, 33, generator=generator) + 0.1).requires_grad_()
    signs = torch.randint(2, (4, 33), generator=generator) * 2 - 1
    mu = (60 * scale.detach() * signs).requires_grad_()
    component = torch.arange(8000) % 4
    grad_z = torch.randn(8000, 33, generator=generator)
    seed = torch.tensor(99)
    eps = kernel_eps(component, 33, seed, torch.float64, "cpu")
    mu64, scale64 = (t.detach().double().requires_grad_() for t in (mu, scale))
    truth = torch.autograd.grad(mixture_sample_given_eps(mu64, scale64, component, eps),
                                (mu64, scale64), grad_z.double())[1]
    recovered = cpp_gradients(mu, scale, component, seed, grad_z)[1]
    regenerated = cpp_gradients(mu, scale, component, seed, grad_z, recover=False)[1]
    assert not torch.equal(recovered, regenerated)
    assert_float_rounding(recovered, truth, regenerated, factor=4.0)


@pytest.mark.parametrize("case", ["mu over 64 scale", "zero scale", "negative scale"])
def test_cpp_backward_from_samples_regenerates_where_recovery_is_inexact(case):
    """One |mu| above 64 times its |scale|, or a zero scale (eps = (z - mu) / 0): the
    regenerating path's bits. A negative scale within the limit is recovered (|scale| is the
    standard deviation), within the reference's tolerance."""
    if "cpp" not in gmkernels.backends():
        pytest.skip("compiled ops not built")
    mu, scale = make_inputs(3, 20, False, torch.float32, seed=8)
    with torch.no_grad():
        if case == "mu over 64 scale":
            mu[1, 5] = 65 * scale[1, 5]
        elif case == "zero scale":
            scale[2, 0] = 0
        else:
            scale[0] *= -1
    component = torch.randint(3, (900,), generator=torch.Generator().manual_seed(9))
    grad_z = torch.randn(900, 20, generator=torch.Generator().manual_seed(10))
    seed = torch.tensor(31)
    recovered = cpp_gradients(mu, scale, component, seed, grad_z)
    regenerated = cpp_gradients(mu, scale, component, seed, grad_z, recover=False)
    if case == "negative scale":
        assert not torch.equal(recovered[1], regenerated[1])
        assert torch.allclose(recovered[1], regenerated[1], rtol=1e-5, atol=1e-5)
    else:
        assert all(torch.equal(a, b) for a, b in zip(recovered, regenerated))


@pytest.mark.parametrize("change", ["z", "mu"])
def test_cpp_backward_from_samples_regenerates_after_an_in_place_change(change):
    """z changed in place after the forward (z / 2), or mu (an optimizer step before the
    backward): no error, and the regenerating path's gradients (those of the forward's eps)."""
    if "cpp" not in gmkernels.backends():
        pytest.skip("compiled ops not built")
    mu, scale = make_inputs(3, 20, False, torch.float32, seed=11)
    component = torch.randint(3, (500,), generator=torch.Generator().manual_seed(12))
    grad_z = torch.randn(500, 20, generator=torch.Generator().manual_seed(13))
    seed = torch.tensor(5)
    regenerated = cpp_gradients(mu, scale, component, seed, grad_z, recover=False)
    with gmkernels.use_backend("cpp"):
        z = mixture_sample_with_seed(mu, scale, component, seed)
        with torch.no_grad():
            (z if change == "z" else mu).mul_(0.5)
        got = torch.autograd.grad(z, (mu, scale), grad_z)
    assert all(torch.equal(a, b) for a, b in zip(got, regenerated))


def test_cpp_backward_from_samples_serves_plain_backwards_only(monkeypatch):
    """retain_graph: both backwards recover; create_graph (a gradient penalty's first gradient):
    the op's own backward (regenerating), whose double backward is exact, while the penalty's
    backward through z's own node (z.square() makes the first gradient depend on z) recovers
    again: three recovering calls, every result against the regenerating path's (float64: the
    recovered eps within 1e-13)."""
    if "cpp" not in gmkernels.backends():
        pytest.skip("compiled ops not built")
    mu, scale = make_inputs(3, 6, False, torch.float64, seed=14)
    component = torch.randint(3, (50,), generator=torch.Generator().manual_seed(15))
    seed = torch.tensor(6)
    calls = recovered_calls(monkeypatch)
    results = []
    for recover in ("1", "0"):
        with gmkernels.use_backend("cpp"), recovery(recover):
            z = mixture_sample_with_seed(mu, scale, component, seed)
            first = torch.autograd.grad(z.square().sum(), (mu, scale), retain_graph=True)
            second = torch.autograd.grad(z.square().sum(), (mu, scale))
            z = mixture_sample_with_seed(mu, scale, component, seed)
            (grad_scale,) = torch.autograd.grad(z.square().sum(), scale, create_graph=True)
            penalty = torch.autograd.grad(grad_scale.square().sum(), (mu, scale))
        results.append((*first, *second, *penalty))
    assert len(calls) == 3
    for got, want in zip(*results):
        assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)


def test_recovers_noise_rules(monkeypatch):
    """Eager cpp on the CPU, a diagonal scale, a gradient to be taken, the switch not 0."""
    if "cpp" not in gmkernels.backends():
        pytest.skip("compiled ops not built")
    monkeypatch.delenv(op.RECOVER_SWITCH, raising=False)
    mu, scale = make_inputs(3, 4, False, torch.float32)
    _, full = make_inputs(3, 4, True, torch.float32)
    with gmkernels.use_backend("cpp"):
        assert op.recovers_noise(mu, scale)
        assert op.recovers_noise(mu.detach(), scale)
        assert not op.recovers_noise(mu.detach(), scale.detach())
        assert not op.recovers_noise(mu, full)
        with torch.no_grad():
            assert not op.recovers_noise(mu, scale)
        monkeypatch.setenv(op.RECOVER_SWITCH, "0")
        assert not op.recovers_noise(mu, scale)
        monkeypatch.setenv(op.RECOVER_SWITCH, "1")
        assert op.recovers_noise(mu, scale)
        monkeypatch.setenv(op.RECOVER_SWITCH, "off")
        with pytest.raises(ValueError, match="GMKERNELS_SAMPLE_RECOVER_EPS must be 0 or 1"):
            op.recovers_noise(mu, scale)
    monkeypatch.delenv(op.RECOVER_SWITCH)
    with gmkernels.use_backend("reference"):
        assert not op.recovers_noise(mu, scale)


@pytest.mark.parametrize("upstream", ["dense", "broadcast"])
def test_opcheck_backward_from_samples(upstream):
    if "cpp" not in gmkernels.backends():
        pytest.skip("compiled ops not built")
    mu, scale = (t.detach() for t in make_inputs(3, 5, False, torch.float32))
    component = torch.randint(3, (17,))
    seed = torch.tensor(5)
    z = torch.ops.gmkernels.mixture_sample(mu, scale, component, seed)
    grad_z = torch.randn(17, 5) if upstream == "dense" else torch.randn(5).expand(17, 5)
    torch.library.opcheck(torch.ops.gmkernels.mixture_sample_backward_from_samples.default,
                          (grad_z, z, mu, scale, component, seed))

"""The C++ bindings called directly through torch.ops.gmkernels (no Python wrapper in front):
bad sizes are RuntimeErrors naming the argument, never a crash; the tiled log-likelihood path
computes its products at full float32 precision whatever torch.set_float32_matmul_precision says,
and leaves that setting as it found it; CUDA ops run on the device of their inputs."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import gmkernels  # noqa: F401  (loads gmkernels._C, which registers torch.ops.gmkernels.*)

TILED_COMPONENTS = 70   # > kDirectMaxComponents (csrc/kernels/mixture_log_likelihood.h): tiled path
CUDA_BUILT = gmkernels.build_info()["cuda"]


def devices():
    found = ["cpu"]
    if CUDA_BUILT and torch.cuda.is_available():
        found.append("cuda")
    return found


def run_isolated(code: str) -> subprocess.CompletedProcess:
    """Runs `code` in a fresh interpreter, so that a call which crashes the process fails this
    test instead of killing the test run. The tests' folder is on its path: `code` may import
    the test modules' helpers."""
    prelude = "import torch, gmkernels\n"
    tests = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)],
                          capture_output=True, text=True, env=env, timeout=300)


def assert_raises_isolated(call: str, message: str):
    result = run_isolated(f"""
        try:
            {call}
        except RuntimeError as error:
            print("RuntimeError:", error)
        else:
            print("no error")
        """)
    assert result.returncode == 0, f"the process died (rc {result.returncode}): {result.stderr[-2000:]}"
    assert "RuntimeError:" in result.stdout and message in result.stdout, result.stdout[-2000:]


# ---- mixture_sample: sizes reachable by a direct op call --------------------------------------

@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("full", [False, True], ids=["diagonal", "full"])
@pytest.mark.parametrize("op, first_argument", [
    ("mixture_sample", "torch.zeros(0, 3, device='{device}')"),            # means (N, d), N = 0
    ("mixture_sample_backward", "torch.ones(5, 3, device='{device}')"),    # grad_z (n, d), n = 5
], ids=["forward", "backward"])
def test_mixture_sample_without_components_raises(device, full, op, first_argument):
    scale_shape = "(0, 3, 3)" if full else "(0, 3)"
    assert_raises_isolated(
        f"torch.ops.gmkernels.{op}({first_argument.format(device=device)}, "
        f"torch.ones{scale_shape}.to('{device}'), torch.zeros(5, dtype=torch.long, device='{device}'), "
        "torch.tensor(1))",
        "needs at least one component (N >= 1) for n = 5 samples")


@pytest.mark.parametrize("device", devices())
def test_mixture_sample_without_components_or_samples_is_empty(device):
    z = torch.ops.gmkernels.mixture_sample(torch.zeros(0, 3, device=device),
                                           torch.ones(0, 3, device=device),
                                           torch.zeros(0, dtype=torch.long, device=device),
                                           torch.tensor(1))
    assert z.shape == (0, 3)


def test_mixture_sample_backward_checks_grad_z_shape():
    with pytest.raises(RuntimeError, match=r"grad_z must be \(n, K\) = \(5, 3\)"):
        torch.ops.gmkernels.mixture_sample_backward(torch.ones(4, 3), torch.ones(2, 3),
                                                    torch.zeros(5, dtype=torch.long),
                                                    torch.tensor(1))


def test_mixture_sample_backward_checks_component_dtype():
    with pytest.raises(RuntimeError, match="component must be a 1-d int64 tensor"):
        torch.ops.gmkernels.mixture_sample_backward(torch.ones(5, 3), torch.ones(2, 3),
                                                    torch.zeros(5, dtype=torch.int32),
                                                    torch.tensor(1))


@pytest.mark.parametrize("argument, shape, message", [
    ("grad_grad_x", (4, 2), r"grad_grad_x must have x's shape \[5, 3\]"),
    ("grad", (4,), r"grad and log_likelihood must be \(B,\) = \(5\)"),
    ("log_likelihood", (5, 1), r"grad and log_likelihood must be \(B,\) = \(5\)"),
])
def test_log_likelihood_double_backward_checks_its_row_inputs(argument, shape, message):
    inputs = {"grad_grad_x": torch.ones(5, 3), "grad": torch.ones(5), "x": torch.ones(5, 3),
              "means": torch.ones(TILED_COMPONENTS, 3), "var": torch.ones(TILED_COMPONENTS),
              "log_weights": torch.zeros(TILED_COMPONENTS), "log_likelihood": torch.zeros(5)}
    inputs[argument] = torch.ones(shape)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.gmkernels.mixture_log_likelihood_double_backward(*inputs.values(), *(True,) * 5)


@pytest.mark.parametrize("exponents, message", [
    (torch.ones(5, TILED_COMPONENTS - 1), r"exponents must be a \(B, C\) = \(5, 70\) tensor"),
    (torch.ones(TILED_COMPONENTS, 5).t(), "exponents must have rows of unit stride"),
    (torch.ones(5, 2 * TILED_COMPONENTS)[:, ::2], "exponents must have rows of unit stride"),
    (torch.ones(5, TILED_COMPONENTS, dtype=torch.float64), "exponents"),
], ids=["shape", "transposed", "strided-columns", "dtype"])
def test_log_likelihood_backward_from_exponents_checks_them(exponents, message):
    with pytest.raises(RuntimeError, match=message):
        torch.ops.gmkernels.mixture_log_likelihood_backward_from_exponents(
            torch.ones(5), torch.ones(5, 3), torch.ones(TILED_COMPONENTS, 3),
            torch.ones(TILED_COMPONENTS), torch.zeros(TILED_COMPONENTS), torch.zeros(5), exponents,
            True, True, True)


@pytest.mark.parametrize("component", [[0, 2], [-1, 0]], ids=["above", "negative"])
def test_mixture_sample_cpu_checks_component_range(component):
    component = torch.tensor(component)
    with pytest.raises(RuntimeError, match=r"component must lie in \[0, 2\)"):
        torch.ops.gmkernels.mixture_sample(torch.zeros(2, 3), torch.ones(2, 3), component,
                                           torch.tensor(1))
    with pytest.raises(RuntimeError, match=r"component must lie in \[0, 2\)"):
        torch.ops.gmkernels.mixture_sample_backward(torch.ones(2, 3), torch.ones(2, 3), component,
                                                    torch.tensor(1))


@pytest.mark.skipif(not (CUDA_BUILT and torch.cuda.is_available()), reason="needs a CUDA build and GPU")
@pytest.mark.parametrize("full", [False, True], ids=["diagonal", "full"])
def test_mixture_sample_cuda_gives_nan_rows_for_components_out_of_range(full):
    mu = torch.randn(2, 5, device="cuda")
    scale = torch.eye(5, device="cuda").expand(2, 5, 5).contiguous() if full else torch.ones(2, 5, device="cuda")
    component = torch.tensor([0, 2, -1, 1], device="cuda")
    z = torch.ops.gmkernels.mixture_sample(mu, scale, component, torch.tensor(3))
    torch.cuda.synchronize()
    assert z[[1, 2]].isnan().all() and z[[0, 3]].isfinite().all()
    grad_mu, _ = torch.ops.gmkernels.mixture_sample_backward(torch.ones_like(z), scale, component,
                                                             torch.tensor(3))
    torch.testing.assert_close(grad_mu.cpu(), torch.ones(2, 5))   # one valid sample each


# ---- mixture_log_likelihood: full float32 precision on the tiled path ---------------------------

def parzen_problem(device, diagonal=False):
    """Parzen-window sizes where TF32 / bfloat16 inner products would move the result by O(1)
    nats: d = 784 data in [0, 1], sigma = 0.1, C > kDirectMaxComponents (the tiled path)."""
    gen = torch.Generator().manual_seed(0)
    dim = 784
    x = torch.rand(33, dim, generator=gen)
    means = torch.rand(TILED_COMPONENTS, dim, generator=gen)
    var = torch.full((TILED_COMPONENTS, dim) if diagonal else (TILED_COMPONENTS,), 0.01)
    log_weights = torch.full((TILED_COMPONENTS,), -torch.log(torch.tensor(float(TILED_COMPONENTS))))
    return [t.to(device) for t in (x, means, var, log_weights)]


def forward_and_backward(x, means, var, log_weights):
    log_likelihood = torch.ops.gmkernels.mixture_log_likelihood(x, means, var, log_weights)
    grads = torch.ops.gmkernels.mixture_log_likelihood_backward(
        torch.ones_like(log_likelihood), x, means, var, log_weights, log_likelihood, True, True, True)
    return (log_likelihood, *grads)


@pytest.fixture
def restore_matmul_precision():
    yield
    torch.set_float32_matmul_precision("highest")   # sets the legacy and per-backend settings


def backend_precisions():
    """The per-backend float32 matmul settings (torch >= 2.9) that the op must leave alone."""
    found = {}
    for name in ("cuda", "mkldnn"):
        matmul = getattr(getattr(torch.backends, name), "matmul", None)
        if matmul is not None and hasattr(matmul, "fp32_precision"):
            found[name] = matmul.fp32_precision
    return found


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("diagonal", [False, True], ids=["isotropic", "diagonal"])
@pytest.mark.parametrize("precision", ["high", "medium"])
def test_tiled_log_likelihood_ignores_reduced_matmul_precision(device, diagonal, precision,
                                                               restore_matmul_precision):
    inputs = parzen_problem(device, diagonal)
    torch.set_float32_matmul_precision("highest")
    full = forward_and_backward(*inputs)
    torch.set_float32_matmul_precision(precision)
    settings = backend_precisions()
    reduced = forward_and_backward(*inputs)
    for got, want in zip(reduced, full):
        # Same full-precision products: the same bits (BLAS is deterministic for fixed sizes).
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    # ... and the user's setting is as it was (a mixed legacy/per-backend state would raise here).
    assert torch.get_float32_matmul_precision() == precision
    assert backend_precisions() == settings


@pytest.mark.skipif(not hasattr(torch.backends.cuda.matmul, "fp32_precision"),
                    reason="torch < 2.9 has no per-backend fp32_precision")
def test_tiled_log_likelihood_leaves_per_backend_precision_alone(restore_matmul_precision):
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    torch.backends.mkldnn.matmul.fp32_precision = "bf16"
    forward_and_backward(*parzen_problem("cpu"))
    assert torch.backends.cuda.matmul.fp32_precision == "tf32"
    assert torch.backends.mkldnn.matmul.fp32_precision == "bf16"


@pytest.mark.skipif(not (CUDA_BUILT and torch.cuda.is_available()), reason="needs a CUDA build and GPU")
@pytest.mark.parametrize("diagonal", [False, True], ids=["isotropic", "diagonal"])
def test_cuda_tiled_log_likelihood_matches_float64_under_tf32(diagonal, restore_matmul_precision):
    """The bug itself: with TF32 allowed, the Parzen exponents were off by O(1) nats."""
    inputs = parzen_problem("cpu", diagonal)
    truth = torch.ops.gmkernels.mixture_log_likelihood(*[t.double() for t in inputs])
    cpu_error = (torch.ops.gmkernels.mixture_log_likelihood(*inputs).double() - truth).abs().max()
    torch.set_float32_matmul_precision("high")
    got = torch.ops.gmkernels.mixture_log_likelihood(*[t.cuda() for t in inputs])
    error = (got.double().cpu() - truth).abs().max()
    assert error <= 4 * cpu_error + 1e-3, f"error {error:.3g} nats, float32 on the CPU {cpu_error:.3g}"


# ---- CUDA: the device of the inputs, not the current device ------------------------------------

def one_call_per_op(device):
    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(12, 5, generator=gen), 1).to(device)
    labels = torch.randint(3, (12,), generator=gen).to(device)
    x, means, var, log_weights = parzen_problem(device)
    return {
        "mixture_sample": torch.ops.gmkernels.mixture_sample(
            torch.randn(3, 4, generator=gen).to(device), torch.rand(3, 4, generator=gen).to(device),
            torch.randint(3, (10,), generator=gen).to(device), torch.tensor(7)),
        "mixture_log_likelihood": torch.ops.gmkernels.mixture_log_likelihood(
            x, means, var, log_weights),
        "class_pairwise_kl": torch.ops.gmkernels.class_pairwise_kl(probs, labels, 1e-6, 3)[0],
        "minibatch_discrimination": torch.ops.gmkernels.minibatch_discrimination(
            torch.randn(20, 4, 3, generator=gen).to(device)),
    }


@pytest.mark.skipif(not (CUDA_BUILT and torch.cuda.device_count() >= 2), reason="needs two GPUs")
def test_cuda_ops_run_on_the_device_of_their_inputs():
    torch.cuda.set_device(0)
    on_first = one_call_per_op("cuda:0")
    on_second = one_call_per_op("cuda:1")
    torch.cuda.synchronize(1)
    for name, result in on_second.items():
        assert result.device == torch.device("cuda:1"), name
        torch.testing.assert_close(result.cpu(), on_first[name].cpu(), msg=name)


def _advised_huge(tensor: torch.Tensor) -> bool:
    """Whether the mapping holding the middle of tensor's memory carries MADV_HUGEPAGE ("hg" in
    its VmFlags, /proc/self/smaps)."""
    address = tensor.data_ptr() + tensor.numel() * tensor.element_size() // 2
    inside = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split()[0]
            if "-" in head and all(c in "0123456789abcdef-" for c in head):
                begin, end = (int(part, 16) for part in head.split("-"))
                inside = begin <= address < end
            elif inside and head == "VmFlags:":
                return "hg" in line.split()[1:]
    raise AssertionError("no mapping holds the tensor")


def _large_outputs():
    """Each CPU op output that gets the advice, over 8 MiB: mixture_sample's z, class_pairwise_kl's
    gradient and double-backward gradient, the log-likelihood's gradient in x."""
    gen = torch.Generator().manual_seed(0)
    mu, scale = torch.randn(4, 64, generator=gen), torch.rand(4, 64, generator=gen)
    component = torch.randint(4, (40000,), generator=gen)
    z = torch.ops.gmkernels.mixture_sample(mu, scale, component, torch.tensor(5))
    probs = torch.softmax(torch.randn(30000, 100, generator=gen), 1)
    labels = probs.argmax(1)
    _, class_mean_log, rows = torch.ops.gmkernels.class_pairwise_kl(probs, labels, 1e-12, 100)
    grad_kl = torch.ones(30000)
    kl_grad = torch.ops.gmkernels.class_pairwise_kl_backward(grad_kl, probs, rows, class_mean_log, 1e-12)
    _, kl_second = torch.ops.gmkernels.class_pairwise_kl_double_backward(
        torch.ones_like(probs), grad_kl, probs, rows, class_mean_log, 1e-12, False, True)
    x, means = torch.randn(40000, 64, generator=gen), torch.randn(8, 64, generator=gen)
    var, log_weights = torch.ones(8), torch.full((8,), -2.0794)
    log_likelihood = torch.ops.gmkernels.mixture_log_likelihood(x, means, var, log_weights)
    x_grad = torch.ops.gmkernels.mixture_log_likelihood_backward(
        torch.ones(40000), x, means, var, log_weights, log_likelihood, True, False, False)[0]
    return dict(zip(_LARGE_OUTPUTS, (z, kl_grad, kl_second, x_grad)))


_LARGE_OUTPUTS = ("z", "class_pairwise_kl grad", "class_pairwise_kl second", "log-likelihood x grad")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="MADV_HUGEPAGE is Linux's")
def test_large_cpu_outputs_ask_for_huge_pages_only_when_switched_on(monkeypatch):
    """Large outputs are fresh memory on every call, faulted in 4 KiB at a time: with
    GMKERNELS_HUGE_PAGES=1 (read on every call) the ops ask for transparent huge pages over
    them (csrc/binding/output_memory.cpp); by default, or with any other value, they do not.
    Each setting in a fresh process: glibc hands freed blocks out again, advice and all."""
    names = sorted(_LARGE_OUTPUTS)
    for setting, advised in ((None, []), ("0", []), ("yes", []), ("1", names)):
        if setting is None:
            monkeypatch.delenv("GMKERNELS_HUGE_PAGES", raising=False)
        else:
            monkeypatch.setenv("GMKERNELS_HUGE_PAGES", setting)
        result = run_isolated("""
            import test_bindings
            outputs = test_bindings._large_outputs()
            assert all(t.numel() * t.element_size() >= 8 << 20 for t in outputs.values())
            print(sorted(name for name, tensor in outputs.items()
                         if test_bindings._advised_huge(tensor)))
        """)
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.strip() == str(advised), (setting, result.stdout)

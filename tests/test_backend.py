"""The backend switch, the op declarations and build facts."""
import importlib
import importlib.util
import os
import subprocess
import sys

import pytest
import torch

import gmkernels


def test_backends_lists_cpp_and_reference_fastest_first():
    names = gmkernels.backends()
    assert "cpp" in names and names[-1] == "reference"
    order = ("cuda", "triton", "cpp", "reference")
    assert list(names) == sorted(names, key=order.index)


def test_triton_runs_here_wherever_it_can():
    """The suite's Triton tests run wherever Triton can run them (on a GPU, or on the CPU under
    its interpreter, which conftest turns on unless it knows this Triton and numpy disagree):
    an import of gmkernels before conftest sets TRITON_INTERPRET once left every Triton test
    skipped without a word."""
    from conftest import TRITON_INTERPRETER_PROBLEM
    if importlib.util.find_spec("triton") is None or TRITON_INTERPRETER_PROBLEM is not None:
        pytest.skip(TRITON_INTERPRETER_PROBLEM or "triton is not installed")
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") == "0":
        pytest.skip("TRITON_INTERPRET=0 was set for this run (scripts/mutate.py sets it)")
    assert "triton" in gmkernels.backends()


def test_use_backend_restores_previous_choice_even_on_exception():
    gmkernels.set_backend("auto")
    with pytest.raises(RuntimeError):
        with gmkernels.use_backend("reference"):
            assert gmkernels.get_backend() == "reference"
            raise RuntimeError("boom")
    assert gmkernels.get_backend() == "auto"


def test_unknown_backend_raises_value_error_listing_valid_names():
    with pytest.raises(ValueError, match="'auto'.*'reference'"):
        gmkernels.set_backend("metal")
    with pytest.raises(ValueError, match="backend must be one of"):
        with gmkernels.use_backend("cuda" if "cuda" not in gmkernels.backends() else "metal"):
            pass


def test_cpp_backend_refuses_gpu_tensors_only_on_explicit_choice():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    mu = torch.zeros(2, 3, device="cuda")
    with gmkernels.use_backend("cpp"), pytest.raises(ValueError, match="cannot run"):
        gmkernels.mixture_sample(mu, torch.ones_like(mu), 4)


def _backend_at_import(value: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, GMKERNELS_BACKEND=value)
    code = "import gmkernels; print(gmkernels.get_backend())"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


def test_environment_variable_sets_default_at_import():
    result = _backend_at_import("reference")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "reference"
    bad = _backend_at_import("nonsense")
    assert bad.returncode != 0 and "backend must be one of" in bad.stderr


def test_import_loads_neither_scipy_nor_its_blas_threads():
    """scipy serves one function of gmkernels.nn (MD-GAN's lambda) and is imported there: loaded
    by `import gmkernels` it cost 0.3-0.5 s and started two OpenBLAS thread pools."""
    code = "import sys, gmkernels; print(sorted(m for m in sys.modules if m.split('.')[0] == 'scipy'))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_build_info_reports_version_openmp_and_compiler():
    info = gmkernels.build_info()
    assert info["compiled"] and info["version"] == gmkernels.__version__
    assert info["openmp"] and info["compiler"].startswith(("gcc", "clang"))
    assert isinstance(info["cuda"], bool) and isinstance(info["cuda_archs"], str)


OP_MODULES = [importlib.import_module(f"gmkernels.ops.{name}") for name in
              ("mixture_sample", "mixture_log_likelihood", "class_pairwise_kl",
               "minibatch_discrimination")]


@pytest.mark.parametrize("module", OP_MODULES, ids=lambda m: m.__name__.rsplit(".", 1)[1])
@pytest.mark.parametrize("namespace", ["gmkernels", "gmkernels_triton"])
def test_each_kernel_op_has_the_declared_schema(module, namespace):
    """One declaration per op: the C++ bindings' schemas and the Triton ops' equal its strings."""
    if namespace == "gmkernels" and gmkernels.build_info()["compiled"] is False:
        pytest.skip("the compiled extension is not built")
    if namespace == "gmkernels_triton" and "triton" not in gmkernels.backends():
        pytest.skip("triton is not usable here")
    declaration = module._OP.declaration
    for name, schema in ((declaration.name, declaration.schema),
                         (declaration.backward_name, declaration.backward_schema)):
        op = getattr(getattr(torch.ops, namespace), name).default
        assert str(op._schema) == f"{namespace}::{schema}"


def test_every_op_lists_its_backends_in_one_order():
    assert len({module.IMPLEMENTED for module in OP_MODULES}) == 1
    order = ("reference", "triton", "cpp", "cuda")
    assert all(name in order for name in OP_MODULES[0].IMPLEMENTED)
    assert list(OP_MODULES[0].IMPLEMENTED) == [n for n in order if n in OP_MODULES[0].IMPLEMENTED]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_finite_check_rejects_any_inf_or_nan_and_accepts_finite_values_whose_sum_overflows(dtype):
    # The check sums first (a finite sum proves every element finite) and tests elementwise only
    # when the sum is not finite: finite values whose sum overflows must pass, and one inf, -inf or
    # NaN anywhere must fail, also when infs of both signs cancel into a NaN sum.
    from gmkernels.ops import _checks

    largest = torch.finfo(dtype).max
    _checks.finite(torch.full((1000,), largest, dtype=dtype), "x")
    _checks.finite(torch.tensor([largest, -largest, largest], dtype=dtype), "x")
    for bad in ([float("inf")], [float("-inf")], [float("nan")], [float("inf"), float("-inf")]):
        values = torch.ones(257, dtype=dtype)
        values[100:100 + len(bad)] = torch.tensor(bad, dtype=dtype)
        with pytest.raises(ValueError, match="x must be finite"):
            _checks.finite(values.view(1, 257), "x")


def test_calls_that_record_nothing_skip_the_autograd_kernel_with_the_same_results():
    """Without grad (no input requires it, or grad mode off) the registry calls the kernel op
    below autograd; with grad it records the op through its own autograd.Function (the declared
    setup_context and backward), and a first-order backward calls the backward op below
    autograd; with create_graph the backward op records its own graph. Values and gradients are
    those of the op called through torch.ops (its registered autograd kernel)."""
    if "cpp" not in gmkernels.backends():
        pytest.skip("compiled ops not built")
    gen = torch.Generator().manual_seed(3)
    M = torch.randn(6, 9, 3, generator=gen, dtype=torch.float64)
    grad_out = torch.randn(6, 9, generator=gen, dtype=torch.float64)
    with gmkernels.use_backend("cpp"):
        plain = gmkernels.minibatch_discrimination(M)
        with torch.no_grad():
            no_grad = gmkernels.minibatch_discrimination(M.clone().requires_grad_())
        leaf = M.clone().requires_grad_()
        recorded = gmkernels.minibatch_discrimination(leaf)
        (grad,) = torch.autograd.grad(recorded, leaf, grad_out)
        (grad_graph,) = torch.autograd.grad(gmkernels.minibatch_discrimination(leaf), leaf, grad_out,
                                            create_graph=True)
    through_torch_ops = torch.ops.gmkernels.minibatch_discrimination(M)
    expected_grad = torch.ops.gmkernels.minibatch_discrimination_backward(grad_out, M)
    assert plain.grad_fn is None and no_grad.grad_fn is None and recorded.grad_fn is not None
    assert torch.equal(plain, through_torch_ops) and torch.equal(no_grad, through_torch_ops)
    assert torch.equal(recorded.detach(), through_torch_ops)
    assert grad.grad_fn is None and torch.equal(grad, expected_grad)
    assert grad_graph.grad_fn is not None and torch.equal(grad_graph.detach(), expected_grad)
    # The double backward through the recorded backward op matches the reference's.
    (second,) = torch.autograd.grad(grad_graph.pow(2).sum(), leaf)
    ref_leaf = M.clone().requires_grad_()
    with gmkernels.use_backend("reference"):
        (ref_grad,) = torch.autograd.grad(gmkernels.minibatch_discrimination(ref_leaf), ref_leaf,
                                          grad_out, create_graph=True)
    (ref_second,) = torch.autograd.grad(ref_grad.pow(2).sum(), ref_leaf)
    assert torch.allclose(second, ref_second, rtol=1e-10, atol=1e-12)



@pytest.mark.parametrize("case", ["mixture_log_likelihood", "mixture_sample"])
def test_a_backward_pass_gets_the_gradients_it_asks_for_and_only_those(case):
    """A first-order backward computes only the gradients the pass uses (autograd.grad(loss, x)
    with the means requiring grad too: a gradient penalty's first gradient); a graph kept for a
    second pass that asks for other inputs gives those, and every result equals the reference
    backend's."""
    if "cpp" not in gmkernels.backends():
        pytest.skip("compiled ops not built")
    if case == "mixture_log_likelihood":
        from test_mixture_log_likelihood import make_inputs
        op = gmkernels.mixture_log_likelihood
        inputs = [t.requires_grad_() for t in make_inputs(7, 4, 3, "(C,d)", seed=5)]
        tolerance = 1e-9
    else:
        from test_mixture_sample import make_inputs
        inputs = list(make_inputs(3, 2, full=False, seed=6))
        component = torch.randint(3, (9,), generator=torch.Generator().manual_seed(6))

        def op(mu, scale):
            z, _ = gmkernels.mixture_sample(mu, scale, 9, component=component,
                                            generator=torch.Generator().manual_seed(7))
            return z
        tolerance = 1e-5   # its eps are float32 normals, a few ulp apart between backends

    def passes():
        out = op(*inputs)
        weights = torch.linspace(-1, 2, out.numel(), dtype=out.dtype).view(out.shape)
        loss = (weights * out).sum()
        first = torch.autograd.grad(loss, inputs[0], retain_graph=True)
        rest = torch.autograd.grad(loss, inputs[1:], retain_graph=True)
        for t in inputs:
            t.grad = None
        loss.backward(inputs=[inputs[-1]], retain_graph=True)
        last_only = [t.grad for t in inputs]
        loss.backward(inputs=inputs)
        every = [t.grad for t in inputs]
        for t in inputs:
            t.grad = None
        return first, rest, last_only, every
    with gmkernels.use_backend("cpp"):
        got = passes()
    with gmkernels.use_backend("reference"):
        want = passes()
    first, rest, last_only, every = got
    assert all(g is None for g in last_only[:-1])
    for g, w in zip(first + rest + (last_only[-1],) + tuple(every),
                    want[0] + want[1] + (want[2][-1],) + tuple(want[3])):
        assert torch.allclose(g, w, rtol=tolerance, atol=tolerance * 1e-3)


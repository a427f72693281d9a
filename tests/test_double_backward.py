"""Second (and third) derivatives of every op on every backend: gradgradcheck in float64, and the
derivatives of a gradient penalty equal to the reference backend's. A backward op
without an autograd formula of its own would give zeros here (PyTorch's deprecated fallback) or
raise; the pytest configuration turns that fallback's warning into an error."""
import pytest
import torch

import gmkernels
from gmkernels.ops import _autograd
from gmkernels.ops import class_pairwise_kl as kl_op
from gmkernels.ops import minibatch_discrimination as minibatch_op
from gmkernels.ops import mixture_log_likelihood as likelihood_op
from gmkernels.ops import mixture_sample as sample_op

from conftest import require_backend

DTYPE = torch.float64


def _generator():
    return torch.Generator().manual_seed(2126)


def _likelihood_case(var_kind):
    def build(device):
        g = _generator()
        x = torch.randn(7, 3, generator=g, dtype=DTYPE)
        means = torch.randn(4, 3, generator=g, dtype=DTYPE)
        var = {"diagonal": torch.rand(4, 3, generator=g, dtype=DTYPE) + 0.5,
               "isotropic": torch.rand(4, generator=g, dtype=DTYPE) + 0.5,
               "shared": torch.rand(1, 3, generator=g, dtype=DTYPE) + 0.5}[var_kind]
        log_weights = torch.log_softmax(torch.randn(4, generator=g, dtype=DTYPE), 0)
        inputs = [t.to(device).requires_grad_() for t in (x, means, var, log_weights)]
        return gmkernels.mixture_log_likelihood, inputs
    return build


def _sample_case(full):
    def build(device):
        g = _generator()
        mu = torch.randn(5, 4, generator=g, dtype=DTYPE)
        scale = torch.randn(*((5, 4, 4) if full else (5, 4)), generator=g, dtype=DTYPE)
        component = torch.randint(5, (9,), generator=g).to(device)
        seed = sample_op.draw_seed(g)

        def sample(mu, scale):
            return sample_op.mixture_sample_with_seed(mu, scale, component, seed)
        return sample, [t.to(device).requires_grad_() for t in (mu, scale)]
    return build


def _kl_case(device):
    g = _generator()
    # Probabilities well above eps: the clamp's kink is not differentiable.
    probs = torch.softmax(torch.randn(8, 5, generator=g, dtype=DTYPE), 1)
    labels = torch.tensor([0, 2, 0, 1, 2, 2, 0, 1], device=device)

    def kl(probs):
        return gmkernels.class_pairwise_kl(probs, labels, num_classes=4)
    return kl, [probs.to(device).requires_grad_()]


def _minibatch_case(device):
    M = torch.randn(6, 3, 2, generator=_generator(), dtype=DTYPE)
    return gmkernels.minibatch_discrimination, [M.to(device).requires_grad_()]


CASES = {
    "mixture_log_likelihood-diagonal": (likelihood_op, _likelihood_case("diagonal")),
    "mixture_log_likelihood-isotropic": (likelihood_op, _likelihood_case("isotropic")),
    "mixture_log_likelihood-shared": (likelihood_op, _likelihood_case("shared")),
    "mixture_sample-diagonal": (sample_op, _sample_case(full=False)),
    "mixture_sample-full": (sample_op, _sample_case(full=True)),
    "class_pairwise_kl": (kl_op, _kl_case),
    "minibatch_discrimination": (minibatch_op, _minibatch_case),
}


def _derivatives(output, inputs, create_graph=False):
    """d output / d inputs; zeros where the output does not depend on an input."""
    if not output.requires_grad:
        return [torch.zeros_like(t) for t in inputs]
    return list(torch.autograd.grad(output, inputs, create_graph=create_graph, allow_unused=True,
                                    materialize_grads=True))


def _loss(output, outer):
    """The function of the op's output that is differentiated: ``linear`` is the issue's pattern
    (the gradient's cotangent is constant), ``quadratic`` makes the cotangent depend on the
    inputs too (so the saved forward output and the cotangent's path are both exercised)."""
    weights = torch.randn(output.shape, generator=_generator(), dtype=output.dtype)
    weights = weights.to(output.device)
    loss = (weights * output).sum()
    return loss + (0.5 * output**2).sum() if outer == "quadratic" else loss


def _penalty_derivatives(op, inputs, penalized: int, outer: str, order: int = 2):
    """Derivatives of a gradient penalty: g = d loss / d inputs[penalized] (graph kept), then
    d (sum g^2) / d every input; order 3 differentiates that once more."""
    (grad,) = torch.autograd.grad(_loss(op(*inputs), outer), inputs[penalized], create_graph=True)
    second = _derivatives(grad.pow(2).sum(), inputs, create_graph=order > 2)
    if order == 2:
        return second
    return _derivatives(sum(s.pow(2).sum() for s in second), inputs)


def _assert_close(got, want):
    for index, (g, w) in enumerate(zip(got, want)):
        assert torch.allclose(g, w, rtol=1e-9, atol=1e-9 * (1 + w.abs().max().item())), \
            f"input {index}: max error {(g - w).abs().max().item():.3g}"


def _tolerance_for(op_module):
    # mixture_sample's eps are float32 normals: the backends agree on z within ~1e-5 relative.
    return 1e-5 if op_module is sample_op else 1e-9


@pytest.mark.parametrize("outer", ["linear", "quadratic"])
@pytest.mark.parametrize("case", CASES)
def test_gradient_penalty_derivatives_equal_the_reference(backend, case, outer):
    op_module, build = CASES[case]
    require_backend(op_module)
    op, inputs = build(backend)
    for penalized in range(len(inputs)):
        got = _penalty_derivatives(op, inputs, penalized, outer)
        with gmkernels.use_backend("reference"):
            want = _penalty_derivatives(op, inputs, penalized, outer)
        tolerance = _tolerance_for(op_module)
        for index, (g, w) in enumerate(zip(got, want)):
            error = (g - w).abs().max().item()
            assert error <= tolerance * (1 + w.abs().max().item()), \
                f"penalty on input {penalized}, derivative in input {index}: error {error:.3g}"


@pytest.mark.parametrize("case", CASES)
def test_gradgradcheck_float64(backend, case):
    op_module, build = CASES[case]
    require_backend(op_module)
    op, inputs = build(backend)
    # Under the Triton interpreter the full check (one backward per input element) takes minutes
    # per op: fast mode checks random projections of the same Jacobians instead.
    interpreted = gmkernels.get_backend() == "triton" and backend.type == "cpu"
    assert torch.autograd.gradgradcheck(op, inputs, atol=1e-5 if op_module is sample_op else 1e-6,
                                        fast_mode=interpreted)


@pytest.mark.parametrize("case", ["mixture_log_likelihood-diagonal", "mixture_log_likelihood-isotropic",
                                  "minibatch_discrimination"])
def test_double_backward_in_several_chunks_equals_one_chunk(backend, case, monkeypatch):
    """The recompute is cut into chunks of rows by an element budget: lowered so that every row
    is its own chunk, the sums over chunks must give the same derivatives."""
    op_module, build = CASES[case]
    require_backend(op_module)
    op, inputs = build(backend)
    whole = _penalty_derivatives(op, inputs, 0, "quadratic")
    monkeypatch.setattr(_autograd, "RECOMPUTE_ELEMENTS", 1)
    _assert_close(_penalty_derivatives(op, inputs, 0, "quadratic"), whole)


@pytest.mark.parametrize("case", CASES)
def test_third_derivatives_equal_the_reference(backend, case):
    op_module, build = CASES[case]
    require_backend(op_module)
    op, inputs = build(backend)
    got = _penalty_derivatives(op, inputs, 0, "quadratic", order=3)
    with gmkernels.use_backend("reference"):
        want = _penalty_derivatives(op, inputs, 0, "quadratic", order=3)
    tolerance = _tolerance_for(op_module)
    for g, w in zip(got, want):
        assert (g - w).abs().max().item() <= tolerance * (1 + w.abs().max().item())


def test_double_backward_of_mixture_sample_is_the_forward_op(backend):
    """(grad_mu, grad_scale) is linear in grad_z: its transpose is mixture_sample itself with the
    same components and seed, so gradient penalties cost one sampling pass."""
    require_backend(sample_op)
    op, (mu, scale) = _sample_case(full=True)(backend)
    grad_z = torch.randn(9, 4, dtype=DTYPE, device=backend, requires_grad=True)
    z = op(mu, scale)
    grad_mu, grad_scale = torch.autograd.grad(z, (mu, scale), grad_z, create_graph=True)
    grad_grad_mu, grad_grad_scale = torch.randn_like(mu), torch.randn_like(scale)
    (got,) = torch.autograd.grad((grad_mu, grad_scale), grad_z, (grad_grad_mu, grad_grad_scale))
    assert torch.allclose(got, op(grad_grad_mu, grad_grad_scale), rtol=0, atol=1e-12)


# Defined for the whole session: a Library freed at the end of a test leaves its namespace in
# torch.ops without its ops, and torch 2.11's decomposition table (torch.compile's aot_eager
# and inductor) then fails on any later compile in that process ("'CustomDecompTable' object is
# not a mapping", seen on a GPU machine where pytest-xdist put such a compile after this test).
_NO_AUTOGRAD_LIBRARY = torch.library.Library("gmkernels_test_no_autograd", "DEF")
_NO_AUTOGRAD_LIBRARY.define("double_it(Tensor x) -> Tensor")
_NO_AUTOGRAD_LIBRARY.impl("double_it", lambda x: 2 * x, "CPU")


def test_unregistered_autograd_warning_is_an_error_in_this_suite():
    """The pytest configuration (pyproject filterwarnings) makes PyTorch's "autograd kernel was
    not registered" warning an error, so no op in the suite can silently take that path."""
    x = torch.ones(3, requires_grad=True)
    out = torch.ops.gmkernels_test_no_autograd.double_it(x)
    with pytest.raises(UserWarning, match="autograd kernel was not registered"):
        out.sum().backward()


@pytest.mark.parametrize("var_kind", ["diagonal", "isotropic", "shared"])
@pytest.mark.parametrize("penalized", [(0,), (1,), (0, 1)])
def test_likelihood_penalty_with_some_inputs_constant(backend, var_kind, penalized):
    """Only x and means require grad (a discriminator's input and its mixture's means; var and
    log_weights fixed), the penalty taken in x, in means, or in both at once: the double
    backward computes just the gradients with a cotangent (a penalty in x alone by its closed
    form), differentiated in the inputs that need it, and must equal the reference's."""
    require_backend(likelihood_op)
    op, inputs = _likelihood_case(var_kind)(backend)
    inputs = [t.detach().requires_grad_(index < 2) for index, t in enumerate(inputs)]
    trainable = inputs[:2]

    def derivatives():
        grads = torch.autograd.grad(_loss(op(*inputs), "quadratic"), [inputs[i] for i in penalized],
                                    create_graph=True)
        return _derivatives(sum(g.pow(2).sum() for g in grads), trainable)
    got = derivatives()
    with gmkernels.use_backend("reference"):
        want = derivatives()
    _assert_close(got, want)

"""mixture_log_likelihood on every backend and both kernel paths (direct for C <= 65, tiled above):
values and gradients against float64 truth, float32 rounding, gradcheck, opcheck, extreme
distances, switched-off components, empty and single-component cases, bad input, torch.compile;
simplex_vertices in both layouts."""
import contextlib
import math
import os
import threading

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import gmkernels
from gmkernels.ops import _registry
from gmkernels.ops import mixture_log_likelihood as op
from gmkernels.reference.mixture_log_likelihood import mixture_log_likelihood as reference

from conftest import assert_close_per_element, backend_device, require_backend, spy_on

DIRECT_MAX = 65          # csrc/kernels/mixture_log_likelihood.h kDirectMaxComponents
PATHS = {"direct": 7, "tiled": 70}   # a component count that takes each path
VAR_KINDS = ("float", "()", "(C,)", "(C,d)", "(1,d)")
# Small CPU problems take the direct kernel whatever C (csrc/binding/mixture_log_likelihood.cpp);
# this variable moves the limit, 0 sends every C > 65 to the tiled path.
DIRECT_MAX_WORK = "GMKERNELS_MLL_DIRECT_MAX_WORK"


@pytest.fixture(autouse=True, scope="module")
def tiled_path_above_65_components():
    """The tests below pick a path by C alone (PATHS) at sizes small enough to be quick: switch
    the small-problem route off for them; test_cpp_small_problems_* cover it."""
    saved = os.environ.get(DIRECT_MAX_WORK)
    os.environ[DIRECT_MAX_WORK] = "0"
    yield
    if saved is None:
        del os.environ[DIRECT_MAX_WORK]
    else:
        os.environ[DIRECT_MAX_WORK] = saved


def kernel_backends():
    return [name for name in gmkernels.backends() if name in op.IMPLEMENTED and name != "reference"]


def make_var(kind, components, dim, dtype=torch.float64, device="cpu", generator=None, low=0.2):
    if kind == "float":
        return 0.7
    shape = {"()": (), "(C,)": (components,), "(C,d)": (components, dim), "(1,d)": (1, dim)}[kind]
    return (torch.rand(shape, generator=generator, dtype=dtype) + low).to(device)


def make_inputs(batch, components, dim, var_kind="(C,)", dtype=torch.float64, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, dim, generator=gen, dtype=dtype).to(device)
    means = torch.randn(components, dim, generator=gen, dtype=dtype).to(device)
    var = make_var(var_kind, components, dim, dtype, device, gen)
    log_weights = torch.log_softmax(torch.randn(components, generator=gen, dtype=dtype), 0).to(device)
    return x, means, var, log_weights


def var_table(var, components, dim):
    var = torch.as_tensor(var, dtype=torch.float64)
    var = var[:, None] if var.dim() == 1 else var
    return var.expand(components, dim)


def brute_force(x, means, var, log_weights):
    """log sum_i w_i prod_k N(x_k; mean_ik, var_ik), summed term by term in float64 (an
    independent formula: no logsumexp, so only for moderate distances)."""
    x, means, log_weights = x.double().cpu(), means.double().cpu(), log_weights.double().cpu()
    var_cd = var_table(var.double().cpu() if isinstance(var, torch.Tensor) else var, *means.shape)
    total = torch.zeros(x.shape[0], dtype=torch.float64)
    for i in range(means.shape[0]):
        log_density = (-0.5 * (x - means[i]) ** 2 / var_cd[i] - 0.5 * torch.log(2 * math.pi * var_cd[i])).sum(1)
        total += torch.exp(log_weights[i] + log_density)
    return torch.log(total)


def leaves(*tensors):
    return [t.detach().clone().requires_grad_() if isinstance(t, torch.Tensor) else t for t in tensors]


def value_and_grads(name, x, means, var, log_weights, grad_seed=1):
    """log-likelihood and the gradients w.r.t. every tensor argument on backend `name`."""
    x, means, var, log_weights = leaves(x, means, var, log_weights)
    inputs = [t for t in (x, means, var, log_weights) if isinstance(t, torch.Tensor)]
    with gmkernels.use_backend(name):
        out = gmkernels.mixture_log_likelihood(x, means, var, log_weights)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed), dtype=out.dtype)
    grads = torch.autograd.grad(out, inputs, grad.to(out.device)) if out.numel() else [torch.zeros_like(t) for t in inputs]
    return out.detach(), [g.detach() for g in grads]


def truth(x, means, var, log_weights):
    """float64 reference value and gradients, on the CPU."""
    to64 = lambda t: t.detach().double().cpu() if isinstance(t, torch.Tensor) else t  # noqa: E731
    return value_and_grads("reference", *(to64(t) for t in (x, means, var, log_weights)))


@given(batch=st.integers(0, 9), components=st.one_of(st.integers(1, 6), st.integers(63, 72)),
       dim=st.integers(1, 5), var_kind=st.sampled_from(VAR_KINDS), switched_off=st.booleans(),
       seed=st.integers(0, 2**31))
def test_values_and_gradients_match_float64_truth_on_every_backend(batch, components, dim, var_kind,
                                                                    switched_off, seed):
    x, means, var, log_weights = make_inputs(batch, components, dim, var_kind, seed=seed)
    if switched_off and components > 1:
        log_weights = log_weights.clone()
        log_weights[::2] = -math.inf
    expected = brute_force(x, means, var, log_weights)
    want, want_grads = truth(x, means, var, log_weights)
    assert torch.allclose(want, expected, rtol=1e-12, atol=1e-12)
    for name in op.IMPLEMENTED:
        if name not in gmkernels.backends():
            continue
        device = backend_device(name)
        got, grads = value_and_grads(name, *(t.to(device) if isinstance(t, torch.Tensor) else t
                                             for t in (x, means, var, log_weights)))
        assert got.dtype == torch.float64 and got.shape == (batch,), name
        assert torch.allclose(got.cpu(), expected, rtol=1e-10, atol=1e-10), name
        for g, w in zip(grads, want_grads):
            assert g.shape == w.shape
            assert torch.allclose(g.cpu(), w, rtol=1e-9, atol=1e-9), name


def plain_matmul_float32(x, means, var, log_weights):
    """What plain PyTorch computes with a matrix product (torch.cdist style): the float32
    rounding a product-based kernel is held to."""
    var_cd = var_table(var, *means.shape).to(x.dtype)
    precision = 1 / var_cd
    squared = (x * x) @ precision.T - 2 * x @ (means * precision).T + (means * means * precision).sum(1)
    log_norm = torch.log(2 * math.pi * var_cd).sum(1)
    return torch.logsumexp(log_weights - 0.5 * (squared + log_norm), 1)


def magnitudes(x, means, var, log_weights, grad, product_based=False):
    """Per-element scales (float64) for the value and the gradients of x, means, var and
    log_weights: what each entry sums in absolute value, each term weighted by its conditioning
    1 + L_bi, L_bi = |lw_i| + sum_k (q_bik + |log 2 pi v_ik|) / 2 with q = (x - mu)^2 / v (the
    responsibility r_bi = exp(logit_bi - log p_b) carries the logit's absolute rounding error as a
    relative one; a product-based kernel rounds q like (x^2 + mu^2) / v, as plain_matmul_float32).
    Gradient terms: x and means r (x - mu) / v, var r (q + 1) / 2v, log_weights r."""
    x, means, log_weights, grad = (t.detach().double().cpu() for t in (x, means, log_weights, grad))
    var_cd = var_table(var.detach().double().cpu() if isinstance(var, torch.Tensor) else var, *means.shape)
    diff = x[:, None, :] - means[None]                                        # (B, C, d)
    q = diff**2 / var_cd
    log_norm = torch.log(2 * math.pi * var_cd)
    logits = log_weights - 0.5 * (q + log_norm).sum(-1)
    log_likelihood = torch.logsumexp(logits, 1)
    responsibility = torch.exp(logits - log_likelihood[:, None])              # (B, C)
    rounded = (x[:, None, :]**2 + means[None] ** 2) / var_cd if product_based else q
    conditioning = 1 + log_weights.abs() + 0.5 * (rounded + log_norm.abs()).sum(-1)
    weight = grad.abs()[:, None] * responsibility * conditioning              # (B, C)
    slope = diff.abs() / var_cd
    scales = [log_likelihood.abs() + (responsibility * conditioning).sum(1),
              (weight[:, :, None] * slope).sum(1), (weight[:, :, None] * slope).sum(0)]
    var_scale = (weight[:, :, None] * 0.5 * (q + 1) / var_cd).sum(0)         # (C, d)
    if isinstance(var, torch.Tensor):      # var's own shape: (), (C,), (1, d) or (C, d)
        shaped = {0: var_scale.sum(), 1: var_scale.sum(1)}.get(var.dim(), var_scale)
        scales.append(var_scale.sum(0, keepdim=True) if var.dim() == 2 and var.shape[0] == 1 else shaped)
    scales.append(weight.sum(0))
    return scales


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("data", ["normal", "offset 1e3", "simplex box", "diagonal"])
def test_float32_error_within_twice_plain_float32(backend, path, data):
    """Value and the gradients of x, means, var and log_weights, every element within rounding of
    the float64 truth at its own scale: 2x the plain float32 formula's error there (flash-attention's
    rule, per element), or a few ulps of what the entry sums (magnitudes)."""
    require_backend(op)
    gen = torch.Generator().manual_seed(3)
    x, means, var, log_weights = make_inputs(96, PATHS[path], 9, "(C,d)" if data == "diagonal" else "(C,)",
                                             torch.float32, seed=3)
    if data == "offset 1e3":
        x, means = x + 1e3, means + 1e3
    if data == "simplex box":
        x = torch.rand(96, 9, generator=gen) * 5 - 2.5
        means = means / means.norm(dim=1, keepdim=True)
    # A kernel that takes distances from a matrix product rounds like the plain product formula
    # (error ~ eps ||x - centre||^2 / var rather than eps ||x - mu||^2 / var): that is its plain
    # float32 computation. Data offset by 1e3 are held to the direct formula, because the kernels
    # centre first and the plain product does not.
    product_based = gmkernels.get_backend() == "triton" or (path == "tiled" and data != "offset 1e3")
    formula = plain_matmul_float32 if product_based else reference
    want, want_grads = truth(x, means, var, log_weights)
    got, grads = value_and_grads(gmkernels.get_backend(), x.to(backend), means.to(backend), var.to(backend),
                                 log_weights.to(backend))
    assert got.dtype == torch.float32
    plain_inputs = leaves(x, means, var, log_weights)
    plain = formula(*plain_inputs)
    grad = torch.randn(96, generator=torch.Generator().manual_seed(1))   # value_and_grads' grad_seed=1
    plain_grads = torch.autograd.grad(plain, plain_inputs, grad)
    scales = magnitudes(x, means, var, log_weights, grad, product_based)
    assert_close_per_element(got, want, plain, scale=scales[0], what="value")
    for name, g, w, p, scale in zip(("x", "means", "var", "log_weights"), grads, want_grads, plain_grads, scales[1:]):
        assert_close_per_element(g, w, p, scale=scale, ulps=16, what=f"grad {name}")


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("var_kind", ["float", "(C,)", "(C,d)"])
def test_gradcheck_float64(backend, path, var_kind):
    require_backend(op)
    x, means, var, log_weights = make_inputs(5, PATHS[path], 3, var_kind, device=backend, seed=4)
    args = leaves(x, means, var, log_weights)
    # fast_mode checks random projections of the Jacobian: hundreds of inputs stay quick.
    assert torch.autograd.gradcheck(gmkernels.mixture_log_likelihood, args, fast_mode=path == "tiled")


def test_cpp_tiles_over_rows_and_components():
    """More rows than one tile holds (4096 at 1024 columns) and two column tiles, the last one
    partial: the online logsumexp across tiles and the accumulation of the backward's products."""
    if "cpp" not in gmkernels.backends():
        pytest.skip("compiled ops not built")
    x, means, var, log_weights = make_inputs(4100, 1100, 2, "(C,)", seed=5)
    log_weights[1024:] = -math.inf   # the whole last tile switched off
    got, grads = value_and_grads("cpp", x, means, var, log_weights)
    want, want_grads = value_and_grads("reference", x, means, var, log_weights)
    assert torch.allclose(got, want, rtol=1e-10, atol=1e-10)
    for g, w in zip(grads, want_grads):
        assert torch.allclose(g, w, rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("spread", ["peaked", "flat"])
def test_tiled_backward_with_peaked_and_flat_responsibilities(backend, spread):
    """Peaked rows (one component each, tiny var) make W sparse, flat rows (huge var) dense: the
    CPU backward takes the sparse or the dense products accordingly; both give the truth."""
    require_backend(op)
    gen = torch.Generator().manual_seed(13)
    means = torch.randn(1500, 4, generator=gen, dtype=torch.float64)
    nearest = torch.randint(1500, (300,), generator=gen)
    x = means[nearest] + 0.01 * torch.randn(300, 4, generator=gen, dtype=torch.float64)
    var = torch.full((1500, 4), 1e-3 if spread == "peaked" else 100.0, dtype=torch.float64)
    log_weights = torch.log_softmax(torch.randn(1500, generator=gen, dtype=torch.float64), 0)
    if gmkernels.get_backend() == "triton":
        x, means, var, log_weights = x[:40], means[:130], var[:130], log_weights[:130]
    got, grads = value_and_grads(gmkernels.get_backend(), *(t.to(backend) for t in (x, means, var, log_weights)))
    want, want_grads = truth(x, means, var, log_weights)
    assert torch.allclose(got.cpu(), want, rtol=1e-10, atol=1e-10)
    for g, w in zip(grads, want_grads):
        assert torch.allclose(g.cpu(), w, rtol=1e-8, atol=1e-8 * w.abs().max().item())


@pytest.mark.parametrize("var_kind", ["(C,)", "(C,d)", "(1,d)"])
@pytest.mark.parametrize("path", sorted(PATHS))
def test_fixed_variance_gradients_of_x_means_and_weights(backend, var_kind, path):
    """var not requiring a gradient (Parzen windows, MD-GAN's fixed simplex variance): the backward
    op is asked for the component gradients without var's, and the tiled CPU path leaves out the
    x^2 sums that only var's gradient reads (with a (C, d) variance, half its column sums). The
    others still match the float64 truth, and var's comes back empty."""
    require_backend(op)
    x, means, var, log_weights = make_inputs(37, PATHS[path] + 30, 5, var_kind, seed=52)
    want, want_grads = truth(x, means, var, log_weights)
    with_var_grads = dict(zip(("x", "means", "var", "log_weights"), want_grads))
    x, means, log_weights = leaves(*(t.to(backend) for t in (x, means, log_weights)))
    var = var.to(backend)
    out = gmkernels.mixture_log_likelihood(x, means, var, log_weights)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype).to(backend)
    grads = torch.autograd.grad(out, (x, means, log_weights), grad)
    assert torch.allclose(out.detach().cpu(), want, rtol=1e-10, atol=1e-10)
    for name, g in zip(("x", "means", "log_weights"), grads):
        w = with_var_grads[name]
        assert torch.allclose(g.cpu(), w, rtol=1e-8, atol=1e-9 * max(1.0, w.abs().max().item())), name
    var_table, weights = op._component_tensors(x, means, var, log_weights)
    ops = torch.ops.gmkernels_triton if gmkernels.get_backend() == "triton" else torch.ops.gmkernels
    from_op = ops.mixture_log_likelihood_backward(grad, x.detach(), means.detach(), var_table, weights.detach(),
                                                  out.detach(), True, True, False)
    assert from_op[2].numel() == 0 and from_op[1].shape == means.shape


def test_cpp_tiled_path_never_allocates_a_rows_by_components_buffer():
    """Forward and backward allocate at most one tile (1024 components wide) and the operands,
    never B x C. Run on a fresh thread: the tiled path keeps its scratch per thread, so that
    thread's first call allocates the tile where the profiler sees it, and the later calls take
    at most one kept buffer the size of a call's scratch."""
    if "cpp" not in gmkernels.backends():
        pytest.skip("compiled ops not built")
    x, means, var, log_weights = leaves(*make_inputs(2000, 3000, 8, "(C,)", torch.float32, seed=14))

    events = []

    def forward_backward_twice():
        with gmkernels.use_backend("cpp"), torch.profiler.profile(profile_memory=True) as profile:
            for _ in range(2):
                gmkernels.mixture_log_likelihood(x, means, var, log_weights).sum().backward()
        events.extend(profile.events())
    thread = threading.Thread(target=forward_backward_twice)
    thread.start()
    thread.join()
    largest = max(event.cpu_memory_usage for event in events)
    assert 2000 * 1024 * 4 <= largest < 2000 * 3000 * 4 / 2


@pytest.mark.parametrize("var_kind", ["(C,)", "(C,d)"])
def test_cpp_tiled_scratch_is_never_part_of_a_result(var_kind):
    """The tiled path carves its operands and tiles from memory it keeps between calls: the
    results of one call (log-likelihoods and gradients) must not change when later calls, of
    other sizes, reuse that memory."""
    if "cpp" not in gmkernels.backends():
        pytest.skip("compiled ops not built")
    first = make_inputs(90, 300, 6, var_kind, seed=40)
    want, want_grads = truth(*first)
    with gmkernels.use_backend("cpp"):
        value_and_grads("cpp", *first)          # the scratch is now the size of this problem
        got, grads = value_and_grads("cpp", *first)
        kept = [got.clone()] + [g.clone() for g in grads]
        for batch, components, dim in ((90, 300, 6), (200, 700, 9), (30, 100, 3)):
            value_and_grads("cpp", *make_inputs(batch, components, dim, var_kind, seed=41))
    for result, copy in zip([got, *grads], kept):
        assert torch.equal(result, copy)
    assert torch.allclose(got, want, rtol=1e-10, atol=1e-10)
    for g, w in zip(grads, want_grads):
        assert torch.allclose(g, w, rtol=1e-8, atol=1e-9)


def _op_args(path, dtype=torch.float32, var_kind="(C,)"):
    x, means, var, log_weights = make_inputs(11, PATHS[path], 4, var_kind, dtype, seed=6)
    var = var.expand(PATHS[path]) if var.dim() == 0 else var
    return x, means, var, log_weights


@pytest.mark.parametrize("name", ["cpp", "cuda", "triton"])
@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("var_kind, wanted", [("(C,)", (True, True, True)), ("(C,d)", (True, True, True)),
                                              ("(C,)", (True, False, False)), ("(C,d)", (False, True, True)),
                                              ("(C,d)", (True, True, False)), ("(C,)", (False, True, False))])
def test_opcheck(name, path, var_kind, wanted):
    if name not in gmkernels.backends() or name not in op.IMPLEMENTED:
        pytest.skip(f"{name} ops not usable here")
    ops = getattr(torch.ops, "gmkernels_triton" if name == "triton" else "gmkernels")
    device = backend_device(name)
    x, means, var, log_weights = leaves(*(t.to(device) for t in _op_args(path, var_kind=var_kind)))
    torch.library.opcheck(ops.mixture_log_likelihood.default, (x, means, var, log_weights))
    log_likelihood = ops.mixture_log_likelihood(x, means, var, log_weights).detach()
    grad = torch.randn(11, device=device)
    torch.library.opcheck(ops.mixture_log_likelihood_backward.default,
                          (grad, x.detach(), means.detach(), var.detach(), log_weights.detach(),
                           log_likelihood, *wanted))


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_point_1e4_away_gives_finite_values_and_gradients(backend, path, dtype):
    require_backend(op)
    x, means, var, log_weights = make_inputs(6, PATHS[path], 9, "(C,)", dtype, seed=7)
    x = x + torch.tensor([1e4] + [0.0] * 8, dtype=dtype)
    got, grads = value_and_grads(gmkernels.get_backend(), *(t.to(backend) for t in (x, means, var, log_weights)))
    want, want_grads = truth(x, means, var, log_weights)
    assert torch.isfinite(got).all() and all(torch.isfinite(g).all() for g in grads)
    rtol = 1e-6 if dtype == torch.float32 else 1e-12
    assert torch.allclose(got.cpu().double(), want, rtol=rtol)
    # The nearest component takes all the weight: grad_x = grad (mu_near - x) / v_near.
    assert torch.allclose(grads[0].cpu().double(), want_grads[0], rtol=1e-4 if dtype == torch.float32 else 1e-9)


@pytest.mark.parametrize("path", sorted(PATHS))
def test_switched_off_components_are_left_out_and_get_zero_gradients(backend, path):
    require_backend(op)
    x, means, var, log_weights = make_inputs(8, PATHS[path], 3, "(C,d)", device=backend, seed=8)
    off = torch.zeros(PATHS[path], dtype=torch.bool)
    off[1::3] = True
    log_weights[off.to(backend)] = -math.inf
    got, grads = value_and_grads(gmkernels.get_backend(), x, means, var, log_weights)
    on = ~off
    kept = reference(x.cpu(), means.cpu()[on], var.cpu()[on], log_weights.cpu()[on])
    assert torch.allclose(got.cpu(), kept, rtol=1e-12, atol=1e-12)
    for g in grads[1:]:
        assert not g.cpu()[off].any()


@pytest.mark.parametrize("path", sorted(PATHS))
def test_all_components_off_give_minus_inf_and_zero_gradients(backend, path):
    require_backend(op)
    if gmkernels.get_backend() == "reference":
        pytest.skip("the reference's logsumexp backward divides 0 by 0 here; the kernels define it as 0")
    x, means, var, log_weights = make_inputs(5, PATHS[path], 3, "(C,)", device=backend, seed=9)
    log_weights = torch.full_like(log_weights, -math.inf)
    got, grads = value_and_grads(gmkernels.get_backend(), x, means, var, log_weights)
    assert (got == -math.inf).all()
    assert all(not g.any() for g in grads)


@pytest.mark.parametrize("path", sorted(PATHS))
def test_empty_batch_gives_empty_result_and_zero_gradients(backend, path):
    require_backend(op)
    x, means, var, log_weights = leaves(*make_inputs(0, PATHS[path], 3, "(C,d)", device=backend))
    out = gmkernels.mixture_log_likelihood(x, means, var, log_weights)
    assert out.shape == (0,) and out.dtype == torch.float64
    grads = torch.autograd.grad(out.sum(), (x, means, var, log_weights), allow_unused=True)
    assert all(g is None or not g.any() for g in grads)


@pytest.mark.parametrize("path", sorted(PATHS))
def test_zero_dimensional_points_have_density_one_under_every_component(backend, path):
    """d = 0: every component's density is the empty product 1, so log p = logsumexp(lw) and the
    only gradient is softmax(lw) * grad for the log-weights."""
    require_backend(op)
    components = PATHS[path]
    log_weights = torch.log_softmax(torch.randn(components, dtype=torch.float64), 0) - 0.3
    got, grads = value_and_grads(gmkernels.get_backend(), torch.zeros(4, 0, device=backend, dtype=torch.float64),
                                 torch.zeros(components, 0, device=backend, dtype=torch.float64),
                                 torch.ones(components, device=backend, dtype=torch.float64),
                                 log_weights.to(backend))
    assert torch.allclose(got.cpu(), torch.full((4,), -0.3, dtype=torch.float64), atol=1e-12)
    grad = torch.randn(4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert torch.allclose(grads[3].cpu(), grad.sum() * torch.softmax(log_weights, 0), atol=1e-12)
    assert not grads[2].any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("path", sorted(PATHS) + ["tiled over two tiles"])
def test_a_nan_in_x_gives_nan_on_its_row_alone(backend, path, dtype):
    """A NaN coordinate makes every exponent of its row NaN; the tiled kernels' row maximum passed
    over them and the row came out -inf, a silent wrong answer. It is NaN on every path, the
    other rows untouched."""
    require_backend(op)
    components = 1100 if path == "tiled over two tiles" else PATHS[path]
    x, means, var, log_weights = make_inputs(6, components, 3, "(C,)", dtype, device=backend, seed=12)
    x[2, 1] = math.nan
    got = gmkernels.mixture_log_likelihood(x, means, var, log_weights).cpu()
    want = gmkernels.mixture_log_likelihood(x[torch.arange(6) != 2], means, var, log_weights).cpu()
    assert torch.isnan(got[2])
    assert torch.equal(got[torch.arange(6) != 2], want)


def test_single_component_is_the_gaussian_log_density(backend):
    require_backend(op)
    x, means, var, _ = make_inputs(7, 1, 4, "(C,d)", device=backend, seed=10)
    got = gmkernels.mixture_log_likelihood(x, means, var)
    normal = torch.distributions.Normal(means[0].cpu(), var[0].cpu().sqrt())
    assert torch.allclose(got.cpu(), normal.log_prob(x.cpu()).sum(1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("path", sorted(PATHS))
def test_non_contiguous_inputs_give_the_contiguous_result(backend, path):
    require_backend(op)
    x, means, var, log_weights = make_inputs(6, PATHS[path], 5, "(C,d)", device=backend, seed=11)
    x_t, means_t, var_t = x.T.contiguous().T, means.T.contiguous().T, var.T.contiguous().T
    log_weights_s = torch.stack([log_weights, log_weights], 1)[:, 0]
    assert not any(t.is_contiguous() for t in (x_t, means_t, var_t, log_weights_s))
    expected = gmkernels.mixture_log_likelihood(x, means, var, log_weights)
    assert torch.equal(gmkernels.mixture_log_likelihood(x_t, means_t, var_t, log_weights_s), expected)


def test_cpp_results_are_identical_across_thread_counts():
    if "cpp" not in gmkernels.backends():
        pytest.skip("compiled ops not built")
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2, 1):
            torch.set_num_threads(count)
            row = []
            for path in sorted(PATHS):
                x, means, var, log_weights = make_inputs(3000, PATHS[path], 6, "(C,d)", torch.float32, seed=12)
                row.append(value_and_grads("cpp", x, means, var, log_weights))
            results.append(row)
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for path, (value_a, grads_a), (value_b, grads_b) in zip(sorted(PATHS), results[0], other):
            if path == "direct":
                assert torch.equal(value_a, value_b)
                assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))
            else:
                # The tile path's products come from the BLAS, whose bits can follow its own
                # thread use (once not bit-identical on a loaded 16-core Intel machine; identical
                # when run alone there): equal up to rounding.
                for a, b in zip([value_a] + list(grads_a), [value_b] + list(grads_b)):
                    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("path", sorted(PATHS))
def test_works_under_torch_compile_fullgraph(backend, path):
    require_backend(op)
    if backend.type == "cpu" and gmkernels.get_backend() == "triton":
        pytest.skip("Triton interpreter ops are exercised in eager mode")
    x, means, var, log_weights = leaves(*make_inputs(16, PATHS[path], 3, "(C,)", torch.float32, backend))

    @torch.compile(fullgraph=True, backend="aot_eager")
    def loss(x, means, var, log_weights):
        return -gmkernels.mixture_log_likelihood(x, means, var, log_weights).mean()

    value = loss(x, means, var, log_weights)
    value.backward()
    x64 = x.detach().double().cpu().requires_grad_()
    expected = -reference(x64, means.detach().double().cpu(), var.detach().double().cpu(),
                          log_weights.detach().double().cpu()).mean()
    expected.backward()
    assert torch.allclose(value.detach().cpu().double(), expected.detach(), rtol=1e-5)
    assert torch.allclose(x.grad.cpu().double(), x64.grad, rtol=1e-4, atol=1e-6)


BAD_INPUTS = [
    (dict(x=torch.zeros(3)), ValueError, r"x must be \(B, d\)"),
    (dict(x=torch.zeros(3, 4)), ValueError, "d = 2"),
    (dict(means=torch.zeros(0, 2)), ValueError, "at least one component"),
    (dict(var=0.0), ValueError, "var must be finite and > 0"),
    (dict(var=math.inf), ValueError, "var must be finite and > 0"),
    (dict(var=torch.tensor([1.0, -0.5, 1.0])), ValueError, "var must be finite and > 0, got min -0.5"),
    (dict(var=torch.tensor([1.0, math.nan, 1.0])), ValueError, "var must be finite and > 0"),
    (dict(var=torch.tensor([1.0, math.inf, 1.0])), ValueError, "var must be finite and > 0"),
    (dict(var=torch.ones(2, 2)), ValueError, "var must be a float or of shape"),
    (dict(var="1"), TypeError, "var must be a float or a tensor"),
    (dict(var=torch.ones(3, dtype=torch.float64)), TypeError, "var must have the dtype of x"),
    (dict(log_weights=torch.zeros(2)), ValueError, r"log_weights must have shape \(C,\)"),
    (dict(log_weights=torch.tensor([0.0, math.nan, 0.0])), ValueError, "NaN"),
    (dict(log_weights=torch.tensor([-math.inf, math.nan, -math.inf])), ValueError, "NaN"),
    (dict(log_weights=torch.tensor([0.0, math.inf, 0.0])), ValueError, r"\+inf"),
    (dict(x=torch.zeros(3, 2, dtype=torch.float64)), TypeError, "must have the dtype of x"),
    (dict(x=torch.zeros(3, 2, dtype=torch.int64)), TypeError, "x must have dtype"),
    (dict(means=[[0.0, 0.0]]), TypeError, "means must be a torch.Tensor"),
]


@pytest.mark.parametrize("override, error, message", BAD_INPUTS)
def test_bad_input_raises_a_clear_error(override, error, message):
    args = dict(x=torch.zeros(5, 2), means=torch.zeros(3, 2), var=1.0, log_weights=None)
    args.update(override)
    with pytest.raises(error, match=message):
        gmkernels.mixture_log_likelihood(**args)


@pytest.mark.parametrize("d", [1, 2, 9, 32])
@pytest.mark.parametrize("radius", [1.0, 2.5])
def test_regular_simplex_vertices_are_equidistant_centred_at_radius(d, radius):
    vertices = gmkernels.simplex_vertices(d, radius)
    assert vertices.shape == (d + 1, d) and vertices.dtype == torch.float64
    assert torch.allclose(vertices.mean(0), torch.zeros(d, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(vertices.norm(dim=1), torch.full((d + 1,), radius, dtype=torch.float64))
    distances = torch.cdist(vertices, vertices)[~torch.eye(d + 1, dtype=torch.bool)]
    assert torch.allclose(distances, torch.full_like(distances, radius * math.sqrt(2 * (d + 1) / d)))


# Vertex norms of MD-GAN's published simplex_coordinates(d), evaluated once with that code.
PUBLISHED_NORMS = {2: 0.89442719, 3: 0.88585184, 9: 0.94356783, 32: 0.98407681}


@pytest.mark.parametrize("d", [1, 2, 3, 9, 32])
def test_mdgan_layout_matches_the_closed_form_of_the_published_construction(d):
    """The code starts from e_0..e_{d-1} and a (1, ..., 1), a = (1 - sqrt(d + 1)) / d, subtracts
    c = (1 + a) / (d + 1) from every coordinate and divides by s_d, where s_0 = 0 and
    s_i = sqrt(s_{i-1} + y_i^2) over the centred first vertex y = e_0 - c."""
    a = (1 - math.sqrt(d + 1)) / d
    c = (1 + a) / (d + 1)
    first = torch.full((d,), -c, dtype=torch.float64)
    first[0] += 1
    s = 0.0
    for y in first.tolist():
        s = math.sqrt(s + y * y)
    expected = torch.cat([torch.eye(d, dtype=torch.float64), torch.full((1, d), a, dtype=torch.float64)]) - c
    vertices = gmkernels.simplex_vertices(d, layout="mdgan")
    assert torch.allclose(vertices, expected / s, rtol=0, atol=1e-15)
    if d in PUBLISHED_NORMS:
        assert abs(vertices.norm(dim=1)[0].item() - PUBLISHED_NORMS[d]) < 1e-8
    # Still a regular simplex centred at the origin, only not of unit radius.
    norms = vertices.norm(dim=1)
    assert torch.allclose(norms, norms[0].expand(d + 1)) and vertices.mean(0).abs().max() < 1e-15
    distances = torch.cdist(vertices, vertices)[~torch.eye(d + 1, dtype=torch.bool)]
    assert torch.allclose(distances, norms[0] * math.sqrt(2 * (d + 1) / d) * torch.ones_like(distances))
    assert torch.equal(gmkernels.simplex_vertices(d, 2.0, layout="mdgan"), 2.0 * vertices)


def test_mdgan_layout_has_the_documented_norm_for_d9():
    assert abs(gmkernels.simplex_vertices(9, layout="mdgan").norm(dim=1)[0].item() - 0.9436) < 1e-4


def test_simplex_vertices_reject_bad_arguments():
    with pytest.raises(ValueError, match="d must be >= 1"):
        gmkernels.simplex_vertices(0)
    with pytest.raises(TypeError, match="d must be a Python int"):
        gmkernels.simplex_vertices(2.0)
    with pytest.raises(ValueError, match="radius must be"):
        gmkernels.simplex_vertices(3, radius=-1.0)
    with pytest.raises(ValueError, match="layout must be one of"):
        gmkernels.simplex_vertices(3, layout="burkardt")


def _uses_matrix_products(x, means, var, log_weights):
    """Whether forward + backward on the cpp backend ran the tiled path (BLAS products)."""
    with gmkernels.use_backend("cpp"), torch.profiler.profile() as profile:
        value_and_grads("cpp", x, means, var, log_weights)
    return any(event.name in ("aten::mm", "aten::addmm") for event in profile.events())


@pytest.mark.parametrize("var_kind", ["(C,)", "(C,d)"])
def test_cpp_small_problems_take_the_direct_path_whatever_c(var_kind, monkeypatch):
    """B C d <= 2**22 on the CPU: the direct kernel (no matrix product) for C > 65 too, with the
    values and gradients of the float64 truth; GMKERNELS_MLL_DIRECT_MAX_WORK=0 restores the
    tiled path for the same problem, which gives the same truth."""
    if "cpp" not in gmkernels.backends():
        pytest.skip("compiled ops not built")
    x, means, var, log_weights = make_inputs(40, 300, 5, var_kind, seed=31)
    want, want_grads = truth(x, means, var, log_weights)
    for setting, tiled in (("", False), (str(40 * 300 * 5 - 1), True), ("0", True)):
        monkeypatch.setenv(DIRECT_MAX_WORK, setting)
        assert _uses_matrix_products(x, means, var, log_weights) == tiled, setting
        got, grads = value_and_grads("cpp", x, means, var, log_weights)
        assert torch.allclose(got, want, rtol=1e-10, atol=1e-10)
        for g, w in zip(grads, want_grads):
            assert torch.allclose(g, w, rtol=1e-8, atol=1e-9)


def _pass_uses_matrix_products(x, means, var, log_weights, wanted=None):
    """Whether the forward (wanted None) or the backward with (x_grad, component_grads, var_grad) = wanted
    ran the tiled path on the cpp backend."""
    ops = torch.ops.gmkernels
    with torch.profiler.profile() as profile:
        log_likelihood = ops.mixture_log_likelihood(x, means, var, log_weights)
    forward = any(event.name in ("aten::mm", "aten::addmm") for event in profile.events())
    if wanted is None:
        return forward
    with torch.profiler.profile() as profile:
        ops.mixture_log_likelihood_backward(torch.ones(x.shape[0]), x, means, var, log_weights,
                                            log_likelihood, *wanted)
    return any(event.name in ("aten::mm", "aten::addmm") for event in profile.events())


@pytest.mark.parametrize("batch, dim, wanted, tiled", [
    (300, 15, None, False),            # forward, d < 16: direct whatever B C d (4.5e6 here)
    (600, 15, None, False),            # ... (9.0e6)
    (500, 16, None, False),            # forward, d >= 16, B C d = 8.0e6 <= 2**23
    (600, 16, None, True),             # forward, d >= 16, B C d = 9.6e6 > 2**23
    (300, 40, None, True),             # forward, d >= 16, B C d = 1.2e7 > 2**23
    (60, 60, (True, False, False), False),   # backward x, B C d = 3.6e6 <= 2**22
    (80, 60, (True, False, False), True),    # backward x, d > 16, B C d = 4.8e6 > 2**22
    (300, 16, (True, False, False), False),  # backward x, d <= 16: direct whatever B C d (4.8e6)
    (60, 16, (True, True, True), False),     # backward with component gradients, d <= 16
    (60, 17, (False, True, True), True),     # ... d > 16, however small B C d (1.0e6)
    (300, 15, (True, True, True), True),     # ... 4 < d <= 16 but B C d = 4.5e6 > 2**22
    (2000, 4, (True, True, True), False),    # ... d <= 4: direct whatever B C d (8.0e6)
])
def test_cpp_path_rules_by_pass(batch, dim, wanted, tiled, monkeypatch):
    """C = 1000 > 65 on the CPU: which passes the direct kernel keeps (use_tiled in
    csrc/binding/mixture_log_likelihood.cpp); the values on either path are the other tests'."""
    if "cpp" not in gmkernels.backends():
        pytest.skip("compiled ops not built")
    monkeypatch.delenv(DIRECT_MAX_WORK)
    x, means, var, log_weights = make_inputs(batch, 1000, dim, "(C,)", torch.float32, seed=32)
    assert _pass_uses_matrix_products(x, means, var, log_weights, wanted) == tiled


@pytest.mark.parametrize("var_kind, wanted", [("(C,)", (True, True, True)), ("(C,d)", (True, False, False)),
                                              ("(C,d)", (False, True, True)), ("(C,d)", (True, True, False))])
def test_opcheck_cpp_small_problem_direct_path_with_many_components(var_kind, wanted, monkeypatch):
    if "cpp" not in gmkernels.backends():
        pytest.skip("compiled ops not built")
    monkeypatch.delenv(DIRECT_MAX_WORK)
    ops = torch.ops.gmkernels
    x, means, var, log_weights = leaves(*make_inputs(11, 200, 4, var_kind, torch.float32, seed=33))
    torch.library.opcheck(ops.mixture_log_likelihood.default, (x, means, var, log_weights))
    log_likelihood = ops.mixture_log_likelihood(x, means, var, log_weights).detach()
    torch.library.opcheck(ops.mixture_log_likelihood_backward.default,
                          (torch.randn(11), x.detach(), means.detach(), var.detach(),
                           log_weights.detach(), log_likelihood, *wanted))


def test_cpp_rejects_a_malformed_direct_max_work_setting(monkeypatch):
    if "cpp" not in gmkernels.backends():
        pytest.skip("compiled ops not built")
    monkeypatch.setenv(DIRECT_MAX_WORK, "lots")
    x, means, var, log_weights = make_inputs(4, 80, 3, "(C,)", torch.float32)
    with pytest.raises(RuntimeError, match="GMKERNELS_MLL_DIRECT_MAX_WORK must be a non-negative integer"):
        gmkernels.mixture_log_likelihood(x, means, var, log_weights)


def assert_cpp_float32_matches_float64_truth(x, means, var, log_weights, grad):
    """The cpp backend in float32 against the reference in float64: values, and the gradients of
    all four inputs for the upstream ``grad``, within float32 rounding."""
    results = []
    for name, dtype in (("cpp", torch.float32), ("reference", torch.float64)):
        inputs = leaves(*(t.to(dtype) for t in (x, means, var, log_weights)))
        with gmkernels.use_backend(name):
            out = gmkernels.mixture_log_likelihood(*inputs)
        results.append((out, torch.autograd.grad(out, inputs, grad.to(dtype))))
    (got, grads), (want, want_grads) = results
    assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-4)
    for g, w in zip(grads, want_grads):
        assert torch.allclose(g.double(), w, rtol=1e-4, atol=1e-4 * float(w.abs().max()))


@pytest.mark.parametrize("components", [7, 72, 79])
@pytest.mark.parametrize("var_kind", ["(C,)", "(C,d)"])
def test_cpp_float32_exps_in_simd_registers_match_float64_truth(components, var_kind):
    """The float32 CPU kernels take their exps a SIMD register at a time (8 or 16 lanes) with a
    scalar tail: C = 72 fills whole registers of a tiled row, C = 79 leaves a tail, C = 7 is
    the direct path (row blocks of whole registers). Rows of ragged length (B = 37), and points
    from near to 40 standard deviations away, so that exponents span the polynomial's range and
    its cut-off at -87: values and all four gradients against float64 within float32 rounding."""
    if "cpp" not in gmkernels.backends():
        pytest.skip("compiled ops not built")
    x, means, var, log_weights = make_inputs(37, components, 6, var_kind, torch.float32, seed=41)
    x = x * torch.linspace(0.1, 6.0, 37)[:, None]
    grad = torch.randn(37, generator=torch.Generator().manual_seed(42))
    assert_cpp_float32_matches_float64_truth(x, means, var, log_weights, grad)


@pytest.mark.parametrize("components", [72, 1100])
@pytest.mark.parametrize("spread", ["peaked", "flat"])
def test_cpp_float32_sums_leaving_out_negligible_terms_match_float64_truth(spread, components):
    """The float32 CPU tiles (with AVX-512) leave out of the forward's sums, and take no exp for,
    the terms below eps / C of a row's largest on rows where most terms are such (peaked
    responsibilities: tiny var), and sum every term of the other rows (flat: huge var); the
    backward's weights likewise. Over one tile (C = 72) and two (C = 1100: 1024 and a ragged 76),
    values and all four gradients against float64 truth within float32 rounding, and a row
    holding a NaN gives NaN (the NaN term is never left out)."""
    if "cpp" not in gmkernels.backends():
        pytest.skip("compiled ops not built")
    gen = torch.Generator().manual_seed(23)
    means = 3 * torch.randn(components, 8, generator=gen)
    nearest = torch.randint(components, (40,), generator=gen)
    x = means[nearest] + 0.3 * torch.randn(40, 8, generator=gen)
    var = (0.05 if spread == "peaked" else 50.0) * (1 + torch.rand(components, generator=gen))
    log_weights = torch.log_softmax(torch.randn(components, generator=gen), 0)
    grad = torch.randn(40, generator=gen)
    assert_cpp_float32_matches_float64_truth(x, means, var, log_weights, grad)
    x[5, 3] = math.nan
    with gmkernels.use_backend("cpp"):
        out = gmkernels.mixture_log_likelihood(x, means, var, log_weights)
    assert torch.isnan(out[5]) and not torch.isnan(out[torch.arange(40) != 5]).any()


def penalty_in_x_truth(x, means, var, log_weights, grad, upstream):
    """d <grad_x, upstream> / d (grad, x, means, var, log_weights), grad_x = d <grad, ll> / dx: autograd
    twice through the reference in float64 (var as the (C,) or (C, d) table the kernels take)."""
    inputs = [t.detach().double().requires_grad_() for t in (grad, x, means, var, log_weights)]
    grad_d, x_d, means_d, var_d, log_weights_d = inputs
    (grad_x,) = torch.autograd.grad(reference(x_d, means_d, var_d, log_weights_d), x_d, grad_d,
                                    create_graph=True)
    return torch.autograd.grad((grad_x * upstream.double()).sum(), inputs, allow_unused=True,
                               materialize_grads=True)


def fused_penalty(x, means, var, log_weights, grad, upstream, needs):
    """The CPU double backward kernel of a penalty in x, on the forward kernel's log-likelihood."""
    log_likelihood = torch.ops.gmkernels.mixture_log_likelihood(x, means, var, log_weights)
    return torch.ops.gmkernels.mixture_log_likelihood_double_backward(
        upstream, grad, x, means, var, log_weights, log_likelihood, *needs)


@given(batch=st.integers(1, 9), components=st.one_of(st.integers(1, 6), st.integers(63, 72)),
       dim=st.integers(1, 5), diagonal=st.booleans(), needs=st.lists(st.booleans(), min_size=5,
       max_size=5).filter(any), zero_grad_row=st.booleans(), off=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_cpp_fused_penalty_double_backward_matches_float64_truth(batch, components, dim, diagonal,
                                                                 needs, zero_grad_row, off, seed):
    """A gradient penalty's backward on the cpp backend (CPU, no graph recorded) takes this kernel:
    each wanted result against autograd twice through the reference, unwanted ones empty; with a
    row whose upstream gradient is 0 and a switched-off component."""
    if "cpp" not in gmkernels.backends():
        pytest.skip("compiled ops not built")
    x, means, var, log_weights = make_inputs(batch, components, dim, "(C,d)" if diagonal else "(C,)",
                                             seed=seed)
    if off and components > 1:
        log_weights = log_weights.clone()
        log_weights[0] = -math.inf
    gen = torch.Generator().manual_seed(seed + 1)
    grad = torch.randn(batch, dtype=torch.float64, generator=gen)
    if zero_grad_row:
        grad[0] = 0
    upstream = torch.randn(batch, dim, dtype=torch.float64, generator=gen)
    got = fused_penalty(x, means, var, log_weights, grad, upstream, needs)
    want = penalty_in_x_truth(x, means, var, log_weights, grad, upstream)
    for index, (g, w, need) in enumerate(zip(got, want, needs)):
        if not need:
            assert g.numel() == 0, index
            continue
        assert g.shape == w.shape, index
        assert torch.allclose(g, w, rtol=1e-9, atol=1e-9 * (1 + w.abs().max().item())), \
            (index, (g - w).abs().max().item())


def check_fused_penalty_on_two_threads(x, means, var, log_weights, grad, upstream, needs):
    """On 2 threads, the fused kernel's wanted results: in float64 against the torch form
    (penalty_in_x), in float32 against the float64 kernel on the same (float32) inputs; the
    unwanted ones empty."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        got = fused_penalty(x, means, var, log_weights, grad, upstream, needs)
        want = op.penalty_in_x(upstream, grad, x, means, var, log_weights, needs)
        for index, (g, w, need) in enumerate(zip(got, want, needs)):
            if not need:
                assert g.numel() == 0, index
                continue
            assert torch.allclose(g, w, rtol=1e-9, atol=1e-9 * (1 + w.abs().max().item())), \
                (index, (g - w).abs().max().item())
        inputs32 = [t.float() for t in (x, means, var, log_weights, grad, upstream)]
        got32 = fused_penalty(*inputs32, needs)
        exact = fused_penalty(*[t.double() for t in inputs32], needs)
        for index, (g, w, need) in enumerate(zip(got32, exact, needs)):
            if need:
                assert g.dtype == torch.float32
                relative = (g.double() - w).abs().max() / (w.abs().max() + 1e-30)
                assert relative <= 1e-3, (index, relative.item())
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("var_kind", ["(C,)", "(C,d)"])
def test_cpp_fused_penalty_double_backward_over_several_tiles_and_in_float32(var_kind):
    """Components enough for tiles of fewer rows than B (2^21 elements a tile: 300 rows at
    C = 7000), on 2 threads: float64 against the torch form (penalty_in_x), float32 against the
    float64 kernel on the same (float32) inputs."""
    if "cpp" not in gmkernels.backends():
        pytest.skip("compiled ops not built")
    x, means, var, log_weights = make_inputs(700, 7000, 3, var_kind, seed=5)
    x = 0.3 * x   # responsibilities spread over many components
    gen = torch.Generator().manual_seed(6)
    grad = torch.rand(700, dtype=torch.float64, generator=gen)
    upstream = torch.randn(700, 3, dtype=torch.float64, generator=gen)
    check_fused_penalty_on_two_threads(x, means, var, log_weights, grad, upstream, (True,) * 5)


@pytest.mark.parametrize("needs", [(True,) * 5, (False, True, True, False, False),
                                   (False, True, False, False, False), (True, False, False, True, True)])
@pytest.mark.parametrize("var_kind", ["(C,)", "(C,d)"])
def test_cpp_fused_penalty_double_backward_with_peaked_responsibilities(var_kind, needs):
    """Each row of x next to one of C = 7000 means, small variances: a handful of nonzero
    responsibilities per row (checked below), so every tile takes the sparse form, which visits
    the nonzeros only (a Parzen window's usual case). float64 against the torch form
    (penalty_in_x), float32 against the float64 kernel on the same inputs; a row with a zero
    upstream gradient and a switched-off component."""
    if "cpp" not in gmkernels.backends():
        pytest.skip("compiled ops not built")
    _, means, var, log_weights = make_inputs(700, 7000, 3, var_kind, seed=9)
    gen = torch.Generator().manual_seed(10)
    x = means[torch.randint(7000, (700,), generator=gen)] + 0.01 * torch.randn(700, 3, generator=gen,
                                                                                dtype=torch.float64)
    var = 1e-4 * var
    log_weights = log_weights.clone()
    log_weights[1] = -math.inf
    grad = torch.rand(700, dtype=torch.float64, generator=gen)
    grad[4] = 0
    upstream = torch.randn(700, 3, dtype=torch.float64, generator=gen)
    for dtype in (torch.float64, torch.float32):   # the premise, at each precision's cut-off
        responsibilities = torch.softmax(op.exponents(x, means, var, log_weights).to(dtype), 1)
        nonzero = (responsibilities > torch.finfo(dtype).eps / 7000).double().mean().item()
        assert nonzero * 32 <= 1, nonzero
    check_fused_penalty_on_two_threads(x, means, var, log_weights, grad, upstream, needs)


@pytest.mark.parametrize("batch", [64, 256, 1024])   # direct, direct, tiled (B C d vs 2^16)
@pytest.mark.parametrize("var_kind", ["(C,)", "(C,d)"])
def test_cpp_fused_penalty_at_mdgan_sizes_matches_the_torch_form(batch, var_kind):
    """MD-GAN's simplex head (C = 10, d = 9) under a gradient penalty: the one-thread direct
    kernel (small B C d) and the tiled one both give the torch closed form (penalty_in_x) in
    float64, with a switched-off component and a zero upstream gradient row."""
    if "cpp" not in gmkernels.backends():
        pytest.skip("compiled ops not built")
    x, means, var, log_weights = make_inputs(batch, 10, 9, var_kind, seed=batch)
    log_weights = log_weights.clone()
    log_weights[3] = -math.inf
    gen = torch.Generator().manual_seed(8)
    grad = torch.randn(batch, dtype=torch.float64, generator=gen)
    grad[5] = 0
    upstream = torch.randn(batch, 9, dtype=torch.float64, generator=gen)
    needs = (True,) * 5
    got = fused_penalty(x, means, var, log_weights, grad, upstream, needs)
    want = op.penalty_in_x(upstream, grad, x, means, var, log_weights, needs)
    for index, (g, w) in enumerate(zip(got, want)):
        assert torch.allclose(g, w, rtol=1e-9, atol=1e-9 * (1 + w.abs().max().item())), \
            (index, (g - w).abs().max().item())


def test_gradient_penalty_backward_takes_the_fused_kernel_on_cpp_only_without_a_graph(monkeypatch):
    """The penalty's backward (no graph recorded) calls the kernel; with create_graph (a third
    derivative) the torch form runs instead, and both give the reference backend's result."""
    if "cpp" not in gmkernels.backends():
        pytest.skip("compiled ops not built")
    # the need_* flags, and whether the first backward's responsibilities came along
    calls = spy_on(monkeypatch, "mixture_log_likelihood_double_backward",
                   lambda args: (*args[-6:-1], args[-1] is not None))
    x, means, var, log_weights = [t.requires_grad_() for t in make_inputs(6, 70, 3, "(C,d)", seed=2)]
    results = {}
    for name in ("cpp", "reference"):
        for create_graph in (False, True):
            with gmkernels.use_backend(name):
                (grad_x,) = torch.autograd.grad(gmkernels.mixture_log_likelihood(
                    x, means, var, log_weights).sum(), x, create_graph=True)
                results[name, create_graph] = torch.autograd.grad(
                    grad_x.square().sum(), (x, means, var), create_graph=create_graph)
    # needs: the inputs the penalty's backward is taken into (x, means, var), not log_weights,
    # though it requires grad, nor the upstream gradient of ones; the table of responsibilities
    # (C = 70, the tiled path) read instead of recomputed
    assert calls == [(False, True, True, True, False, True)]
    for create_graph in (False, True):
        for g, w in zip(results["cpp", create_graph], results["reference", create_graph]):
            assert torch.allclose(g, w, rtol=1e-9, atol=1e-12)


def test_a_gradient_in_x_alone_skips_the_component_gradients(monkeypatch):
    """The log-likelihood's backward op is asked for the gradient in x only when a pass wants x
    only, though the means, var and log_weights require grad; with a pass that wants every
    input, for all of them."""
    if "cpp" not in gmkernels.backends():
        pytest.skip("compiled ops not built")
    ops = _registry.compiled_ops()
    backward = ops.mixture_log_likelihood_backward
    flags = []

    def spy(*args):
        flags.append(args[6:9])   # x_grad, component_grads, var_grad
        return backward(*args)
    monkeypatch.setattr(ops, "mixture_log_likelihood_backward", spy)
    inputs = [t.requires_grad_() for t in make_inputs(7, 4, 3, "(C,d)", seed=5)]
    with gmkernels.use_backend("cpp"):
        torch.autograd.grad(gmkernels.mixture_log_likelihood(*inputs).sum(), inputs[0])
        torch.autograd.grad(gmkernels.mixture_log_likelihood(*inputs).sum(), inputs[0],
                            create_graph=True)
        gmkernels.mixture_log_likelihood(*inputs).sum().backward()
    assert flags == [(True, False, False), (True, False, False), (True, True, True)]

@pytest.mark.parametrize("components", [10, 70], ids=["direct", "tiled"])
def test_gradient_penalty_runs_the_first_order_backward_once(monkeypatch, components):
    """A penalty step runs the backward op once (the first gradient, with create_graph): the
    penalty's backward must not reach the forward's node through the log-likelihood the
    backward op reads (it would run the whole backward again there, on a zero gradient)."""
    if "cpp" not in gmkernels.backends():
        pytest.skip("compiled ops not built")
    ops = _registry.compiled_ops()
    backward_op = ops.mixture_log_likelihood_backward   # the eager call the formulas make
    calls = []

    def spy(*args):
        calls.append(torch.is_grad_enabled())
        return backward_op(*args)
    monkeypatch.setattr(ops, "mixture_log_likelihood_backward", spy)
    # the tiled path's first gradient keeps its responsibilities for the penalty's backward
    keeping = spy_on(monkeypatch, "mixture_log_likelihood_backward_keeping_responsibilities",
                     lambda args: torch.is_grad_enabled())
    x, means, var, log_weights = [t.requires_grad_() for t in make_inputs(6, components, 3, "(C,)",
                                                                        seed=4)]
    with gmkernels.use_backend("cpp"):
        (grad_x,) = torch.autograd.grad(gmkernels.mixture_log_likelihood(
            x, means, var, log_weights).sum(), x, create_graph=True)
        grad_x.square().sum().backward()
    # the first gradient's, recording its graph (the autograd.Function that keeps the table runs
    # its op with grad mode off)
    assert (calls, keeping) == (([True], []) if components <= DIRECT_MAX else ([], [False]))
    truth = penalty_in_x_truth(x, means, var, log_weights, torch.ones(6), 2 * grad_x.detach())
    for got, want in zip((x.grad, means.grad, var.grad, log_weights.grad), truth[1:]):
        assert torch.allclose(got.double(), want, rtol=1e-4, atol=1e-5)


# The forward that keeps its (B, C) exponents for the backward (cpp, CPU, eager; see
# keeps_exponents). Its size rules are measured for speed; the tests below lower them so that
# small problems take the path.
KEEP_MAX_BYTES = "GMKERNELS_MLL_KEEP_MAX_BYTES"


@contextlib.contextmanager
def keeping_small_problems():
    """Small problems with C > 65 keep their exponents; yields the list of the flags
    (x_grad, component_grads, var_grad) of each backward that read kept exponents."""
    if "cpp" not in gmkernels.backends():
        pytest.skip("compiled ops not built")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(op, "_KEEP_MIN_DIM", 1)
        patch.setattr(op, "_KEEP_MIN_WORK", ((0, 0),))
        patch.delenv(KEEP_MAX_BYTES, raising=False)
        yield spy_on(patch, "mixture_log_likelihood_backward_from_exponents", lambda args: args[-3:])


@pytest.fixture
def keep_small_problems():
    with keeping_small_problems() as calls:
        yield calls


@given(batch=st.integers(1, 40), components=st.integers(66, 140), dim=st.integers(1, 6),
       var_kind=st.sampled_from(VAR_KINDS), switched_off=st.booleans(),
       wanted=st.lists(st.booleans(), min_size=4, max_size=4).filter(any),
       seed=st.integers(0, 2**31 - 1))
def test_cpp_kept_exponents_give_the_float64_truth(batch, components, dim, var_kind, switched_off,
                                                   wanted, seed):
    """Values and the gradients of every subset of inputs that require grad, against float64
    autograd through the reference; the backward read the kept exponents (spy), with the flags of
    what was wanted."""
    x, means, var, log_weights = make_inputs(batch, components, dim, var_kind, seed=seed)
    if switched_off:
        log_weights = log_weights.clone()
        log_weights[1::3] = -math.inf
    if not isinstance(var, torch.Tensor):
        wanted[2] = False
    if not any(wanted):
        wanted[0] = True
    want, want_grads = truth(x, means, var, log_weights)
    inputs = [t.detach().clone().requires_grad_(w) if isinstance(t, torch.Tensor) else t
              for t, w in zip((x, means, var, log_weights), wanted)]
    grad = torch.randn(batch, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with keeping_small_problems() as calls, gmkernels.use_backend("cpp"):
        out = gmkernels.mixture_log_likelihood(*inputs)
        grads = iter(torch.autograd.grad(out, [t for t, w in zip(inputs, wanted) if w], grad))
    assert calls == [(wanted[0], any(wanted[1:]), wanted[2])]
    assert torch.allclose(out.detach(), want, rtol=1e-10, atol=1e-10)
    for w, expected in zip(wanted, want_grads):
        if w:
            g = next(grads)
            assert torch.allclose(g, expected, rtol=1e-9, atol=1e-9 * (1 + expected.abs().max().item()))


@pytest.mark.parametrize("var_kind", ["(C,)", "(C,d)"])
def test_cpp_kept_exponents_over_several_row_blocks_in_float32(keep_small_problems, var_kind):
    """C = 5000: blocks of 838 rows (2^22 elements a block), the last one partial, on 2 threads.
    float64: kept against recomputed; float32: the kept path's error against the float64 result
    at most twice the recomputing path's."""
    x, means, var, log_weights = make_inputs(2000, 5000, 3, var_kind, torch.float32, seed=7)
    threads = torch.get_num_threads()
    results = {}
    try:
        torch.set_num_threads(2)
        for dtype in (torch.float32, torch.float64):
            for keep in (True, False):
                inputs = leaves(*(t.to(dtype) for t in (x, means, var, log_weights)))
                os.environ[KEEP_MAX_BYTES] = str(1 << 30) if keep else "0"
                try:
                    with gmkernels.use_backend("cpp"):
                        out = gmkernels.mixture_log_likelihood(*inputs)
                    results[dtype, keep] = (out, *torch.autograd.grad(out.sum(), inputs))
                finally:
                    del os.environ[KEEP_MAX_BYTES]
    finally:
        torch.set_num_threads(threads)
    assert len(keep_small_problems) == 2
    for index, (kept, recomputed, kept64, exact) in enumerate(zip(
            results[torch.float32, True], results[torch.float32, False],
            results[torch.float64, True], results[torch.float64, False])):
        scale = exact.abs().max().item()
        assert torch.allclose(kept64, exact, rtol=1e-10, atol=1e-10 * (1 + scale)), index
        kept_error = (kept.double() - exact).abs().max().item()
        recomputed_error = (recomputed.double() - exact).abs().max().item()
        assert kept.dtype == torch.float32
        assert kept_error <= 2 * recomputed_error + 1e-6 * scale, (index, kept_error, recomputed_error)


def test_cpp_kept_exponents_serve_one_backward_then_the_op_recomputes(keep_small_problems):
    """retain_graph: the first backward consumes (overwrites) the kept table, the second
    recomputes; create_graph: the op's own backward formula, so a gradient penalty's double
    backward is exact. Every result against the reference backend."""
    x, means, var, log_weights = [t.requires_grad_() for t in make_inputs(9, 80, 4, "(C,d)", seed=3)]
    results = {}
    for name in ("cpp", "reference"):
        with gmkernels.use_backend(name):
            out = gmkernels.mixture_log_likelihood(x, means, var, log_weights)
            first = torch.autograd.grad(out.sum(), (x, means, var), retain_graph=True)
            second = torch.autograd.grad(out.sum(), (x, means, var))
            (grad_x,) = torch.autograd.grad(
                gmkernels.mixture_log_likelihood(x, means, var, log_weights).sum(), x, create_graph=True)
            penalty = torch.autograd.grad(grad_x.square().sum(), (x, means, var))
        results[name] = (*first, *second, *penalty)
    assert len(keep_small_problems) == 1
    for g, w in zip(results["cpp"], results["reference"]):
        assert torch.allclose(g, w, rtol=1e-9, atol=1e-12)


def test_keeps_exponents_rules(monkeypatch):
    """Where the forward keeps the table: eager cpp on the CPU, a gradient to be taken, C > 65,
    d >= 16, B C d >= 2^23 (2^22 from d = 32, 2^21 from d = 256) and the table within
    GMKERNELS_MLL_KEEP_MAX_BYTES (default 8 MiB, 64 MiB from d = 256)."""
    if "cpp" not in gmkernels.backends():
        pytest.skip("compiled ops not built")
    monkeypatch.delenv(KEEP_MAX_BYTES, raising=False)

    def keeps(batch=1000, components=1000, dim=64, dtype=torch.float32, requires_grad=True):
        x = torch.empty(batch, dim, dtype=dtype, requires_grad=requires_grad)
        means = torch.empty(components, dim, dtype=dtype)
        return op.keeps_exponents(x, means, torch.empty(components, dtype=dtype),
                                  torch.empty(components, dtype=dtype))
    with gmkernels.use_backend("cpp"):
        assert keeps()
        assert keeps(batch=2048, components=1024)              # exactly 8 MiB
        assert not keeps(batch=2049, components=1024)
        assert not keeps(dtype=torch.float64, batch=2048, components=1024)
        assert not keeps(requires_grad=False)
        assert keeps(dim=16)
        assert not keeps(dim=15, batch=2048, components=1024)
        assert not keeps(components=65, batch=100000)
        assert keeps(batch=2048, components=256, dim=16)       # B C d = 2^23 below d = 32
        assert not keeps(batch=2048, components=255, dim=16)
        assert not keeps(batch=1024, components=256, dim=31)   # 2^23 - 2^18
        assert keeps(batch=512, components=256, dim=32)        # 2^22 from d = 32
        assert not keeps(batch=512, components=255, dim=32)
        assert keeps(batch=64, components=128, dim=256)        # 2^21 from d = 256
        assert not keeps(batch=64, components=127, dim=256)
        assert not keeps(batch=64, components=128, dim=255)
        with torch.no_grad():
            assert not keeps()
        # from d = 256 the default budget is 64 MiB
        assert keeps(batch=4096, components=4096, dim=256)
        assert not keeps(batch=4097, components=4096, dim=256)
        assert not keeps(batch=4096, components=4096, dim=255)
        monkeypatch.setenv(KEEP_MAX_BYTES, "0")
        assert not keeps()
        assert not keeps(dim=256)
        monkeypatch.setenv(KEEP_MAX_BYTES, str(64 << 20))
        assert keeps(batch=4096, components=4096)
        monkeypatch.setenv(KEEP_MAX_BYTES, str(8 << 20))
        assert not keeps(batch=4096, components=4096, dim=256)
        monkeypatch.setenv(KEEP_MAX_BYTES, "8M")
        with pytest.raises(ValueError, match="GMKERNELS_MLL_KEEP_MAX_BYTES must be a non-negative integer"):
            keeps()
    monkeypatch.delenv(KEEP_MAX_BYTES)
    with gmkernels.use_backend("reference"):
        assert not keeps()


def test_opcheck_cpp_keeping_exponents_pair():
    if "cpp" not in gmkernels.backends():
        pytest.skip("compiled ops not built")
    x, means, var, log_weights = _op_args("tiled", var_kind="(C,d)")
    keeping = torch.ops.gmkernels.mixture_log_likelihood_keeping_exponents
    exponents = torch.empty(11, means.shape[0])
    torch.library.opcheck(keeping.default, (x, means, var, log_weights, exponents))
    log_likelihood = keeping(x, means, var, log_weights, exponents)
    assert torch.allclose(log_likelihood, torch.logsumexp(exponents, 1), rtol=1e-5, atol=1e-5)
    torch.library.opcheck(torch.ops.gmkernels.mixture_log_likelihood_backward_from_exponents.default,
                          (torch.randn(11), x, means, var, log_weights, log_likelihood, exponents,
                           True, True, False))


# The gradient penalty that keeps its first backward's (B, C) responsibilities for the double
# backward (cpp, CPU, eager; see _BackwardKeepingResponsibilities): from the forward's kept
# exponents, or recomputed into a new table.
@contextlib.contextmanager
def spying_on_kept_responsibilities():
    """Yields (first, second): the table_has_exponents flag of each first backward that kept the
    responsibilities, and for each penalty's double backward whether it was given them."""
    with pytest.MonkeyPatch.context() as patch:
        first = spy_on(patch, "mixture_log_likelihood_backward_keeping_responsibilities",
                       lambda args: args[7])
        second = spy_on(patch, "mixture_log_likelihood_double_backward",
                        lambda args: args[-1] is not None)
        yield first, second


def penalty_gradients(name, inputs, upstream, retain=False):
    """The first gradients of <ll, upstream> in every input (taken with create_graph), then the
    gradients of sum_b t_b ||that gradient in x||^2 (t_b = b + 1) in every input, on backend
    ``name``; with ``retain``, two penalty backwards through one first gradient."""
    tensors = [t for t in inputs if isinstance(t, torch.Tensor)]
    with gmkernels.use_backend(name):
        out = gmkernels.mixture_log_likelihood(*inputs)
        first = torch.autograd.grad((out * upstream).sum(), tensors, create_graph=True)
        grad_x = first[0]
        weights = torch.arange(1, grad_x.shape[0] + 1, dtype=grad_x.dtype)
        penalty = (grad_x.square().sum(1) * weights).sum()
        first = [g.detach() for g in first]
        if not retain:
            return (*first, *torch.autograd.grad(penalty, tensors))
        return (*first, *torch.autograd.grad(penalty, tensors, retain_graph=True),
                *torch.autograd.grad(penalty, tensors))


@given(batch=st.integers(1, 30), components=st.integers(66, 140), dim=st.integers(1, 6),
       var_kind=st.sampled_from(VAR_KINDS), switched_off=st.booleans(),
       forward_keeps=st.booleans(), zero_rows=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_cpp_penalty_reading_kept_responsibilities_gives_the_reference_result(
        batch, components, dim, var_kind, switched_off, forward_keeps, zero_rows, seed):
    """The first gradients in every input (create_graph) and a penalty in x's gradients into
    every input against the reference backend (float64), the double backward reading the
    table; the upstream gradient with zero rows (the table holds r, not grad r, which would
    lose them); the table from the forward's exponents or recomputed into a new one, its rows
    padded when C is not a multiple of 16."""
    if "cpp" not in gmkernels.backends():
        pytest.skip("compiled ops not built")
    x, means, var, log_weights = make_inputs(batch, components, dim, var_kind, seed=seed)
    if switched_off:
        log_weights = log_weights.clone()
        log_weights[1::3] = -math.inf
    upstream = torch.randn(batch, generator=torch.Generator().manual_seed(seed % 1000),
                           dtype=torch.float64)
    if zero_rows:
        upstream[::2] = 0
    inputs = leaves(x, means, var, log_weights)
    want = penalty_gradients("reference", inputs, upstream)
    with contextlib.ExitStack() as stack:
        if forward_keeps:
            stack.enter_context(keeping_small_problems())
        first, second = stack.enter_context(spying_on_kept_responsibilities())
        got = penalty_gradients("cpp", inputs, upstream)
    assert first == [forward_keeps]
    assert second == [True]
    for g, w in zip(got, want):
        assert torch.allclose(g, w, rtol=1e-9, atol=1e-9 * (1 + w.abs().max().item()))


def test_cpp_kept_responsibilities_serve_one_double_backward_then_it_recomputes():
    """retain_graph: the first penalty backward consumes the table, the second recomputes; both
    give the reference backend's gradients. A problem of one row block with 2 threads and of
    several (C = 5000: blocks of 419 rows in the double backward), in float32 against float64."""
    if "cpp" not in gmkernels.backends():
        pytest.skip("compiled ops not built")
    x, means, var, log_weights = make_inputs(9, 80, 4, "(C,d)", seed=3)
    upstream = torch.ones(9, dtype=torch.float64)
    inputs = leaves(x, means, var, log_weights)
    want = penalty_gradients("reference", inputs, upstream, retain=True)
    with spying_on_kept_responsibilities() as (first, second):
        got = penalty_gradients("cpp", inputs, upstream, retain=True)
    assert first == [False]
    assert second == [True, False]
    for g, w in zip(got, want):
        assert torch.allclose(g, w, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("var_kind", ["(C,)", "(C,d)"])
def test_cpp_kept_responsibilities_over_several_row_blocks_in_float32(var_kind):
    """C = 5000: the double backward's blocks of 419 rows, the last one partial; float32 error
    against the float64 result at most twice that of the recomputing path (keeping switched off
    by GMKERNELS_MLL_KEEP_MAX_BYTES=0)."""
    if "cpp" not in gmkernels.backends():
        pytest.skip("compiled ops not built")
    x, means, var, log_weights = make_inputs(1000, 5000, 3, var_kind, torch.float32, seed=8)
    upstream = torch.ones(1000)
    exact = penalty_gradients("cpp", leaves(*(t.double() for t in (x, means, var, log_weights))),
                              upstream.double())
    results = {}
    with spying_on_kept_responsibilities() as (first, second):
        for keep in (True, False):
            os.environ[KEEP_MAX_BYTES] = str(1 << 30) if keep else "0"
            try:
                results[keep] = penalty_gradients("cpp", leaves(x, means, var, log_weights),
                                                  upstream)
            finally:
                del os.environ[KEEP_MAX_BYTES]
    assert first == [False] and second == [True, False]   # kept, recomputed
    for kept, recomputed, truth_ in zip(results[True], results[False], exact):
        scale = truth_.abs().max().item()
        kept_error = (kept.double() - truth_).abs().max().item()
        recomputed_error = (recomputed.double() - truth_).abs().max().item()
        assert kept_error <= 2 * recomputed_error + 1e-6 * scale, (kept_error, recomputed_error)


def test_keeps_responsibilities_rules(monkeypatch):
    """Where a recorded first backward keeps its responsibilities: eager cpp on the CPU, C > 65,
    where that backward takes the tiled path, and the table within the keep budget."""
    if "cpp" not in gmkernels.backends():
        pytest.skip("compiled ops not built")
    monkeypatch.delenv(KEEP_MAX_BYTES, raising=False)
    monkeypatch.delenv(DIRECT_MAX_WORK)   # the module's fixture sets it

    def keeps(batch=256, components=256, dim=32, component_grads=True):
        return op.keeps_responsibilities(torch.empty(batch, dim), torch.empty(components, dim),
                                         component_grads)
    with gmkernels.use_backend("cpp"):
        assert keeps()
        assert not keeps(components=65)
        assert not keeps(batch=0)
        assert keeps(batch=2048, components=1024)               # exactly 8 MiB
        assert not keeps(batch=2049, components=1024)
        assert keeps(batch=4096, components=4096, dim=256)      # 64 MiB from d = 256
        monkeypatch.setenv(DIRECT_MAX_WORK, "0")
        assert keeps(dim=2)
        monkeypatch.delenv(DIRECT_MAX_WORK)
        # the direct backward's sizes (csrc/binding/mixture_log_likelihood.cpp): d <= 4 with
        # the component gradients, d <= 16 up to B C d = 2^22
        assert not keeps(dim=4, batch=4096, components=4096)
        assert not keeps(dim=16)
        assert keeps(dim=16, batch=1024, components=257)
        assert not keeps(dim=16, batch=4096, components=1024, component_grads=False)
        assert keeps(dim=17, batch=1024, components=1024, component_grads=False)
        monkeypatch.setenv(KEEP_MAX_BYTES, "0")
        assert not keeps()
    monkeypatch.delenv(KEEP_MAX_BYTES)
    with gmkernels.use_backend("reference"):
        assert not keeps()


def test_kept_table_with_rows_out_of_order_is_refused():
    """The ops that take a (B, C) table accept padded rows (row stride >= C, unit column
    stride), and refuse others with a message naming the table."""
    if "cpp" not in gmkernels.backends():
        pytest.skip("compiled ops not built")
    x, means, var, log_weights = _op_args("tiled", var_kind="(C,d)")
    keeping = torch.ops.gmkernels.mixture_log_likelihood_keeping_exponents
    padded = torch.empty(11, 96)[:, :70]
    assert torch.allclose(keeping(x, means, var, log_weights, padded),
                          keeping(x, means, var, log_weights, torch.empty(11, 70)))
    with pytest.raises(RuntimeError, match="exponents must have rows of unit stride"):
        keeping(x, means, var, log_weights, torch.empty(70, 11).t())
    with pytest.raises(RuntimeError, match="exponents must be a"):
        keeping(x, means, var, log_weights, torch.empty(11, 71))


def test_opcheck_cpp_keeping_responsibilities_pair():
    if "cpp" not in gmkernels.backends():
        pytest.skip("compiled ops not built")
    x, means, var, log_weights = _op_args("tiled", var_kind="(C,d)")
    log_likelihood = gmkernels.mixture_log_likelihood(x, means, var, log_weights)
    grad = torch.randn(11)
    table = torch.empty(11, means.shape[0])
    keeping = torch.ops.gmkernels.mixture_log_likelihood_backward_keeping_responsibilities
    torch.library.opcheck(keeping.default, (grad, x, means, var, log_weights, log_likelihood,
                                            table, False, True, True, True))
    keeping(grad, x, means, var, log_weights, log_likelihood, table, False, True, True, True)
    assert torch.allclose(table.sum(1), torch.ones(11), rtol=1e-5)   # responsibilities
    # The double backward reads a table of any row stride (here C = 70 unpadded, where its own
    # tiles pad to 80) as it reads its recomputed tiles.
    double_backward = torch.ops.gmkernels.mixture_log_likelihood_double_backward
    upstream = torch.randn(11, 4, generator=torch.Generator().manual_seed(3))
    args = (upstream, grad, x, means, var, log_weights, log_likelihood, True, True, True, True,
            True)
    padded = torch.empty(11, 96)[:, :70]
    padded.copy_(table)
    for kept in (table, padded):
        for got, want in zip(double_backward(*args, kept.clone() if kept is table else kept),
                             double_backward(*args)):
            assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)

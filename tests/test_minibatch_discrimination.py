"""minibatch_discrimination on every backend: values and gradients against the float64 reference
(and an independent loop), gradcheck, opcheck, ties, non-contiguous and empty inputs, thread-count
determinism, bad input, torch.compile."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import gmkernels
from gmkernels.ops import minibatch_discrimination as op
from gmkernels.reference.minibatch_discrimination import minibatch_discrimination as reference

from conftest import assert_close_per_element, backend_device, require_backend


def magnitudes(M, grad_out):
    """What each output and each gradient element sums, in absolute value and weighted by its
    conditioning (float64), for per-element tolerances. e_ij = exp(-d_ij) turns the rounding of
    the distance d_ij into a relative error of the same size: d_ij is a sum of C float32 terms
    (absolute error ~ eps d_ij) of float32 inputs, each rounded by up to eps |M| (absolute error
    ~ eps a_ij with a_ij = sum_c |M_ic| + |M_jc|, larger than eps d_ij for far-out, close points:
    at scale 20 it decided a gradient entry by 1.3x). So term ij weighs e_ij (1 + d_ij + a_ij).
    o_ib sums such positive terms; dL/dM_ibc sums
    (g_ib + g_jb) e_ij sign(.) over j, whose terms cancel, so its weights are |g_ib + g_jb|. An
    output of 1e-7 is thus held to 1e-7's ulps, not to those of the largest output."""
    M, grad_out = M.detach().double().cpu(), grad_out.detach().double().cpu()
    distance = (M[:, None] - M[None, :]).abs().sum(-1)                         # (N, N, B)
    e = torch.exp(-distance).masked_fill(torch.eye(M.shape[0], dtype=torch.bool)[:, :, None], 0.0)
    spread = (M[:, None].abs() + M[None, :].abs()).sum(-1)                     # a_ij, (N, N, B)
    weight = e * (1 + distance + spread)
    value_scale = weight.sum(1)
    grad_scale = ((grad_out[:, None] + grad_out[None, :]).abs() * weight).sum(1)   # (N, B)
    return value_scale, grad_scale[:, :, None].expand(M.shape)


def assert_float32_rounding(out32, grad32, truth, truth_grad, plain, plain_grad, M, grad_out, what=""):
    """float32 value and gradient within rounding of the float64 truth, element by element."""
    value_scale, grad_scale = magnitudes(M, grad_out)
    assert_close_per_element(out32, truth, plain, scale=value_scale, what=f"{what} value")
    assert_close_per_element(grad32, truth_grad, plain_grad, scale=grad_scale, what=f"{what} gradient")


def kernel_backends():
    return [name for name in gmkernels.backends() if name in op.IMPLEMENTED and name != "reference"]


def loop_over_pairs(M):
    N, B, _ = M.shape
    out = torch.zeros(N, B, dtype=torch.float64)
    for i in range(N):
        for j in range(N):
            if i != j:
                out[i] += torch.exp(-(M[i] - M[j]).abs().sum(-1))
    return out


def value_and_grad(M, grad_out):
    M = M.detach().requires_grad_()
    out = gmkernels.minibatch_discrimination(M)
    (grad,) = torch.autograd.grad(out, M, grad_out)
    return out.detach(), grad


def truth_and_plain32(M, grad_out):
    """The float64 reference (truth) and the plain float32 reference on the same inputs."""
    with gmkernels.use_backend("reference"):
        truth = value_and_grad(M.double(), grad_out.double())
        plain32 = value_and_grad(M.float(), grad_out.float())
    return truth, plain32


@given(n=st.integers(0, 7), kernels=st.integers(1, 4), kernel_dim=st.integers(1, 5), seed=st.integers(0, 999))
def test_reference_matches_a_loop_over_pairs(n, kernels, kernel_dim, seed):
    M = torch.randn(n, kernels, kernel_dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    got = reference(M)
    assert got.shape == (n, kernels)
    assert torch.allclose(got, loop_over_pairs(M), rtol=1e-12, atol=1e-12)


# Both sides of every code-path threshold of the kernels: N crosses the CPU kernel's lane groups
# (16 floats, 8 doubles), row blocks (4) and, in one draw of eight, row chunks (64); B crosses the
# switch between the row-split (B < 8) and symmetric schemes; C crosses the compile-time
# dimensions (<= 8) into the run-time path and its gradient passes. Scale 20 puts points far
# apart (terms underflow); ties (coordinates on a grid) give the zero subgradient and duplicates.
@given(n=st.integers(0, 30).map(lambda k: k if k <= 26 else 61 + 3 * (k - 27)),
       kernels=st.one_of(st.integers(1, 7), st.integers(8, 10)), kernel_dim=st.integers(0, 12),
       scale=st.sampled_from([0.05, 0.5, 3.0, 20.0]), ties=st.booleans(), seed=st.integers(0, 2**31))
def test_values_and_gradients_match_float64_reference_on_every_backend(n, kernels, kernel_dim, scale, ties, seed):
    gen = torch.Generator().manual_seed(seed)
    M = scale * torch.randn(n, kernels, kernel_dim, generator=gen, dtype=torch.float64)
    if ties:
        M = torch.round(2 * M / scale) * scale / 2 if scale != 20.0 else torch.round(M / 8) * 8
    grad_out = torch.randn(n, kernels, generator=gen, dtype=torch.float64)
    (truth, truth_grad), (plain, plain_grad) = truth_and_plain32(M, grad_out)
    for name in kernel_backends():
        device = backend_device(name)
        if name == "triton" and device.type == "cpu" and n > 20:
            continue    # seconds to a minute in the interpreter; row chunks (64) are the CPU kernel's
        with gmkernels.use_backend(name):
            out64, grad64 = value_and_grad(M.to(device), grad_out.to(device))
            out32, grad32 = value_and_grad(M.float().to(device), grad_out.float().to(device))
        assert out64.dtype == torch.float64 and out32.dtype == torch.float32
        assert out32.shape == (n, kernels) and grad32.shape == M.shape
        assert torch.allclose(out64.cpu(), truth, rtol=1e-12, atol=1e-12), name
        assert torch.allclose(grad64.cpu(), truth_grad, rtol=1e-12, atol=1e-12), name
        assert_float32_rounding(out32, grad32, truth, truth_grad, plain, plain_grad, M, grad_out, name)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_on_gpu_accumulate_in_float32(backend, dtype):
    require_backend(op)
    if backend.type != "cuda":
        pytest.skip("float16 / bfloat16 run on GPU backends only")
    gen = torch.Generator().manual_seed(4)
    M = (0.3 * torch.randn(300, 20, 5, generator=gen)).to(dtype)
    grad_out = torch.randn(300, 20, generator=gen).to(dtype)
    out, grad = value_and_grad(M.to(backend), grad_out.to(backend))
    assert out.dtype == dtype and grad.dtype == dtype
    with gmkernels.use_backend("reference"):
        truth, truth_grad = value_and_grad(M.double(), grad_out.double())
    # Inputs are exactly representable in float64, so only float32 accumulation and the final
    # rounding to `dtype` remain: a half-precision ulp of each value, plus float32 sums of N terms.
    eps = torch.finfo(dtype).eps
    assert ((out.cpu().double() - truth).abs() <= eps * truth.abs() + 1e-4 * truth.abs().max()).all()
    assert ((grad.cpu().double() - truth_grad).abs() <= eps * truth_grad.abs()
            + 1e-4 * truth_grad.abs().max()).all()


def test_large_distances_underflow_to_zero_without_nan(backend):
    require_backend(op)
    M = torch.tensor([[[0.0, 0.0]], [[60.0, 50.0]], [[0.0, 400.0]], [[0.0, 0.5]]],
                     dtype=torch.float32, device=backend)
    out, grad = value_and_grad(M, torch.ones(4, 1, device=backend))
    with gmkernels.use_backend("reference"):
        truth, truth_grad = value_and_grad(M.double().cpu(), torch.ones(4, 1, dtype=torch.float64))
    assert torch.isfinite(out).all() and torch.isfinite(grad).all()
    assert torch.allclose(out.cpu().double(), truth, rtol=1e-6, atol=1e-30)
    assert torch.allclose(grad.cpu().double(), truth_grad, rtol=1e-6, atol=1e-30)


def interpreted():
    """The Triton interpreter costs ~0.1 s a call: gradcheck then uses its fast mode (a random
    projection of the Jacobian instead of one column per input)."""
    return gmkernels.get_backend() == "triton" and backend_device("triton").type == "cpu"


@pytest.mark.parametrize("shape", [(9, 3, 4), (7, 9, 3)])   # row-split (B < 8) and symmetric (B >= 8)
def test_gradcheck_float64(backend, shape):
    require_backend(op)
    M = torch.randn(*shape, dtype=torch.float64, device=backend, requires_grad=True)
    assert torch.autograd.gradcheck(gmkernels.minibatch_discrimination, (M,), fast_mode=interpreted())


def test_gradcheck_float64_runtime_dimension_and_row_split(backend):
    require_backend(op)
    # C = 11 > 8 takes the run-time dimension path; B = 2 < 8 the row-split scheme on the CPU.
    M = torch.randn(6, 2, 11, dtype=torch.float64, device=backend, requires_grad=True)
    assert torch.autograd.gradcheck(gmkernels.minibatch_discrimination, (M,), fast_mode=interpreted())


@pytest.mark.parametrize("shape", [(7, 3, 5), (20, 9, 2), (1, 2, 3), (0, 2, 3)])
@pytest.mark.parametrize("name", ["cpp", "cuda"])
def test_opcheck_compiled(name, shape):
    if name not in gmkernels.backends() or name not in op.IMPLEMENTED:
        pytest.skip(f"compiled {name} ops not usable here")
    device = backend_device(name)
    M = torch.randn(*shape, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.gmkernels.minibatch_discrimination.default, (M,))
    torch.library.opcheck(torch.ops.gmkernels.minibatch_discrimination_backward.default,
                          (torch.randn(shape[:2], device=device), M.detach()))


@pytest.mark.parametrize("shape", [(7, 3, 5), (1, 2, 3)])
def test_opcheck_triton(shape):
    if "triton" not in gmkernels.backends():
        pytest.skip("triton not usable here")
    device = backend_device("triton")
    M = torch.randn(*shape, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.gmkernels_triton.minibatch_discrimination.default, (M,))
    torch.library.opcheck(torch.ops.gmkernels_triton.minibatch_discrimination_backward.default,
                          (torch.randn(shape[:2], device=device), M.detach()))


def penalty_truth(M, grad_out, upstream):
    """The double backward's truth: <d out / d M (grad_out), upstream> differentiated in grad_out
    and M by autograd through the reference (float64)."""
    M = M.detach().double().requires_grad_()
    grad_out = grad_out.detach().double().requires_grad_()
    (grad,) = torch.autograd.grad(reference(M), M, grad_out, create_graph=True)
    return torch.autograd.grad((grad * upstream).sum(), (grad_out, M), allow_unused=True,
                               materialize_grads=True)


def double_backward_scales(M, grad_out, upstream):
    """What each entry of the double backward sums in absolute value: over j, e_ij |h_ij| for
    grad_out, |g_i + g_j| e_ij |h_ij| for M, |h_ij| <= sum_c |V_ic - V_jc|
    (csrc/kernels/minibatch_discrimination.h)."""
    e = torch.exp(-(M[:, None] - M[None, :]).abs().sum(-1))                    # (N, N, B)
    h = (upstream[:, None] - upstream[None, :]).abs().sum(-1)
    pair_sums = (grad_out[:, None] + grad_out[None, :]).abs()
    return (e * h).sum(1), (pair_sums * e * h).sum(1)[:, :, None].expand(M.shape)


@given(n=st.integers(0, 24).map(lambda k: k if k <= 20 else 60 + 5 * (k - 20)),
       kernels=st.integers(1, 10), kernel_dim=st.integers(1, 11), ties=st.booleans(),
       needs=st.sampled_from([(True, True), (True, False), (False, True)]),
       seed=st.integers(0, 2**31))
def test_fused_double_backward_equals_autograd_twice_through_the_reference(
        n, kernels, kernel_dim, ties, needs, seed):
    """A gradient penalty's backward on the cpp backend takes the fused kernel (fixed dimensions
    up to 8 and a run-time one, several row chunks past N = 64, tied coordinates with their 0
    subgradient); against autograd twice through the reference."""
    if "cpp" not in gmkernels.backends():
        pytest.skip("compiled ops not built")
    gen = torch.Generator().manual_seed(seed)
    M = torch.randn(n, kernels, kernel_dim, generator=gen, dtype=torch.float64)
    if ties:
        M = torch.round(2 * M) / 2
    grad_out = torch.randn(n, kernels, generator=gen, dtype=torch.float64)
    upstream = torch.randn(n, kernels, kernel_dim, generator=gen, dtype=torch.float64)
    truth = penalty_truth(M, grad_out, upstream)
    fused = torch.ops.gmkernels.minibatch_discrimination_double_backward(upstream, grad_out, M,
                                                                         *needs)
    scales = double_backward_scales(M, grad_out, upstream)
    for got, want, scale, need in zip(fused, truth, scales, needs):
        if not need:
            assert got.numel() == 0
            continue
        assert got.shape == want.shape
        error = (got - want).abs()
        assert (error <= 1e-12 * (scale + 1)).all(), error.max().item()


def test_fused_double_backward_in_float32_and_on_two_threads():
    """float32 within float rounding of the float64 kernel on the same inputs, and the same bits
    for 1 and 2 threads (each output element is summed by one work item)."""
    if "cpp" not in gmkernels.backends():
        pytest.skip("compiled ops not built")
    gen = torch.Generator().manual_seed(3)
    inputs = [torch.randn(300, 5, 4, generator=gen), torch.randn(300, 5, generator=gen),
              torch.randn(300, 5, 4, generator=gen)]          # M, grad_out, V: N^2 B C > 2^21
    double_backward = torch.ops.gmkernels.minibatch_discrimination_double_backward
    want = double_backward(*[t.double() for t in (inputs[2], inputs[1], inputs[0])], True, True)
    scales = double_backward_scales(*[t.double() for t in inputs])
    threads = torch.get_num_threads()
    try:
        results = []
        for count in (1, 2):
            torch.set_num_threads(count)
            results.append(double_backward(inputs[2], inputs[1], inputs[0], True, True))
    finally:
        torch.set_num_threads(threads)
    for one, two in zip(*results):
        assert torch.equal(one, two)
    for got, w, scale in zip(results[0], want, scales):
        assert ((got.double() - w).abs() <= 1e-5 * (scale + 1)).all()


def test_ties_get_the_zero_subgradient_like_the_reference(backend):
    require_backend(op)
    gen = torch.Generator().manual_seed(3)
    M = torch.randn(10, 9, 3, generator=gen, dtype=torch.float64)
    M[3] = M[7]                 # two identical rows: every coordinate tied
    M[1] = M[5]
    M[0, :, 1] = M[2, :, 1]     # single tied coordinates
    M[4:, 2, 0] = 0.25          # one coordinate tied across six rows
    grad_out = torch.randn(10, 9, generator=gen, dtype=torch.float64)
    with gmkernels.use_backend("reference"):
        truth, truth_grad = value_and_grad(M, grad_out)
    out, grad = value_and_grad(M.to(backend), grad_out.to(backend))
    assert torch.allclose(out.cpu(), truth, rtol=1e-12, atol=1e-12)
    assert torch.allclose(grad.cpu(), truth_grad, rtol=1e-12, atol=1e-12)


def test_all_rows_identical_give_n_minus_1_and_zero_gradient(backend):
    require_backend(op)
    M = torch.full((6, 2, 3), 0.7, device=backend)
    out, grad = value_and_grad(M, torch.randn(6, 2, device=backend))
    assert torch.equal(out.cpu(), torch.full((6, 2), 5.0))
    assert torch.equal(grad.cpu(), torch.zeros(6, 2, 3))


def test_non_contiguous_input_gives_the_contiguous_result(backend):
    require_backend(op)
    base = torch.randn(5, 9, 13, device=backend)
    M = base.permute(2, 0, 1)[:, :, ::2]     # (13, 5, 5) view with odd strides
    assert not M.is_contiguous()
    grad_out = torch.randn(5, 13, device=backend).T
    assert not grad_out.is_contiguous()
    out, grad = value_and_grad(M, grad_out)
    expected_out, expected_grad = value_and_grad(M.contiguous(), grad_out.contiguous())
    assert torch.equal(out, expected_out) and torch.equal(grad, expected_grad)


@pytest.mark.parametrize("shape", [(0, 4, 5), (1, 4, 5), (3, 0, 5), (1, 1, 1)])
def test_empty_and_single_sample_batches(backend, shape):
    require_backend(op)
    M = torch.randn(*shape, device=backend)
    out, grad = value_and_grad(M, torch.randn(shape[:2], device=backend))
    assert out.shape == shape[:2] and grad.shape == shape
    assert not out.any() and not grad.any()


def test_zero_kernel_dim_counts_every_other_sample(backend):
    require_backend(op)
    out = gmkernels.minibatch_discrimination(torch.empty(5, 3, 0, device=backend))
    assert torch.equal(out.cpu(), torch.full((5, 3), 4.0))


@pytest.mark.parametrize("kernels", [3, 12])   # row-split and symmetric schemes
def test_cpp_is_identical_across_runs_and_thread_counts(kernels):
    if "cpp" not in gmkernels.backends():
        pytest.skip("compiled ops not built")
    gen = torch.Generator().manual_seed(8)
    # N^2 B C >= 2^21: large enough for the kernel to use more than one thread.
    M = torch.randn(400, kernels, 5, generator=gen)
    assert_cpp_identical_across_thread_counts(M, torch.randn(400, kernels, generator=gen))


def assert_cpp_identical_across_thread_counts(M, grad_out):
    """Value and gradient of the cpp backend bit-identical on 1, 2 and again 1 thread."""
    results = []
    threads = torch.get_num_threads()
    try:
        for count in (1, 2, 1):
            torch.set_num_threads(count)
            with gmkernels.use_backend("cpp"):
                results.append(value_and_grad(M, grad_out))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


# The CPU kernel runs its lanes over kernels instead of samples for N <= 128, B >= 8 and
# N C <= 1024: both sides of N = 128, of B = 8 and of N C = 1024, B filling its last lane group
# (16 floats, 8 doubles) or not, the compile-time dimensions and the run-time one (C = 11), C = 0.
@pytest.mark.parametrize("shape", [(2, 8, 3), (16, 256, 8), (17, 9, 5), (32, 40, 11), (128, 20, 8),
                                   (129, 20, 4), (64, 7, 4), (93, 9, 11), (94, 9, 11), (5, 24, 0),
                                   (1, 8, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpp_lanes_over_kernels_match_the_reference(shape, dtype):
    if "cpp" not in gmkernels.backends():
        pytest.skip("compiled ops not built")
    gen = torch.Generator().manual_seed(sum(shape))
    M = torch.randn(*shape, generator=gen, dtype=torch.float64)
    grad_out = torch.randn(*shape[:2], generator=gen, dtype=torch.float64)
    (truth, truth_grad), (plain, plain_grad) = truth_and_plain32(M, grad_out)
    with gmkernels.use_backend("cpp"):
        out, grad = value_and_grad(M.to(dtype), grad_out.to(dtype))
    if dtype == torch.float64:
        assert torch.allclose(out, truth, rtol=1e-12, atol=1e-12)
        assert torch.allclose(grad, truth_grad, rtol=1e-12, atol=1e-12)
    else:
        assert_float32_rounding(out, grad, truth, truth_grad, plain, plain_grad, M, grad_out)


def test_cpp_lanes_over_kernels_identical_across_thread_counts():
    if "cpp" not in gmkernels.backends():
        pytest.skip("compiled ops not built")
    gen = torch.Generator().manual_seed(9)
    # N^2 B C = 2^21 with N = 64: the lanes-over-kernels scheme, on more than one thread.
    M = torch.randn(64, 64, 8, generator=gen)
    assert_cpp_identical_across_thread_counts(M, torch.randn(64, 64, generator=gen))


def test_works_under_torch_compile_fullgraph(backend):
    require_backend(op)
    if backend.type == "cpu" and gmkernels.get_backend() == "triton":
        pytest.skip("Triton interpreter ops are exercised in eager mode")
    M = torch.randn(12, 4, 5, device=backend, requires_grad=True)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def loss(m):
        return (gmkernels.minibatch_discrimination(m) ** 2).sum()

    value = loss(M)
    value.backward()
    out, grad = value_and_grad(M, 2 * gmkernels.minibatch_discrimination(M).detach())
    assert torch.allclose(value, (out**2).sum()) and torch.allclose(M.grad, grad)


@pytest.mark.parametrize("M, error, message", [
    (torch.zeros(3, 4), ValueError, r"M must be \(N, B, C\)"),
    (torch.zeros(3, 4, 2, dtype=torch.int32), TypeError, "M must have dtype"),
    (torch.zeros(3, 4, 2, dtype=torch.float16), TypeError, "M must have dtype"),
    ([[[0.0]]], TypeError, "M must be a torch.Tensor"),
])
def test_bad_input_raises_a_clear_error(M, error, message):
    with pytest.raises(error, match=message):
        gmkernels.minibatch_discrimination(M)

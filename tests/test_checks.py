"""What the ops' value checks read of a tensor (gmkernels/ops/_checks.summary): its extremes, its
total and its row totals' extremes, on both implementations (the compiled one-pass summary on
the CPU, the torch-op form elsewhere), against plain torch reductions in float64: many chunks
(the compiled pass splits the rows between threads), short and long rows, non-contiguous
tensors, NaN and infinities anywhere, int64 beyond float precision."""
import math

import pytest
import torch

import gmkernels
from conftest import ALL_BACKENDS, backend_device
from gmkernels import backend
from gmkernels.ops import _checks

COMPILED = backend.compiled_module() is not None


@pytest.fixture(params=["compiled", "torch ops"])
def implementation(request, monkeypatch):
    """_checks.summary as the compiled extension computes it, or as the torch-op form does."""
    if request.param == "compiled":
        if not COMPILED:
            pytest.skip("the compiled extension is not built")
    else:
        monkeypatch.setattr(backend, "compiled_module", lambda: None)
    return request.param


def expected(values: torch.Tensor, row_sums: bool) -> list:
    wide = values.double()
    result = [wide.min().item(), wide.max().item(), wide.sum().item()]
    if row_sums:
        totals = wide.sum(1)
        result += [totals.min().item(), totals.max().item()]
    return result


def assert_summary(summary, values, row_sums):
    truth = expected(values, row_sums)
    got = list(summary)[:len(truth)]
    assert got[:2] == truth[:2]   # extremes are exact
    assert got[2:] == pytest.approx(truth[2:], rel=1e-12, abs=1e-9 * values.numel())
    if not row_sums:
        assert summary.row_low is None and summary.row_high is None


# (rows, cols): one short chunk, short rows over several chunks (the compiled pass takes 2^16
# elements a chunk), long rows, a single row and a single column.
SHAPES = [(7, 3), (30000, 10), (5000, 2), (300, 700), (1, 5000), (90001, 1)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("row_sums", [False, True])
def test_summary_matches_torch_reductions(implementation, dtype, shape, row_sums):
    gen = torch.Generator().manual_seed(shape[0] * 31 + shape[1])
    values = torch.randn(shape, generator=gen, dtype=dtype) * 3 + 0.5
    assert_summary(_checks.summary(values, row_sums), values, row_sums)


def test_summary_of_non_contiguous_and_one_dimensional_tensors(implementation):
    gen = torch.Generator().manual_seed(5)
    wide = torch.randn(40, 3000, generator=gen)
    transposed = wide.t()   # (3000, 40), not contiguous: rows are columns of `wide`
    assert_summary(_checks.summary(transposed, row_sums=True), transposed, True)
    strided = wide[:, ::7]
    assert_summary(_checks.summary(strided, row_sums=True), strided, True)
    flat = torch.randn(200001, generator=gen, dtype=torch.float64)
    assert_summary(_checks.summary(flat), flat, False)
    scalar = torch.tensor(2.5)
    assert list(_checks.summary(scalar)) == [2.5, 2.5, 2.5, None, None]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("position", [0, 12345, 199999])
@pytest.mark.parametrize("row_sums", [False, True])
def test_summary_is_nan_wherever_a_nan_is(implementation, dtype, position, row_sums):
    values = torch.rand(20000, 10, dtype=dtype)
    values.view(-1)[position] = math.nan
    summary = _checks.summary(values, row_sums)
    fields = list(summary) if row_sums else list(summary)[:3]
    assert all(math.isnan(field) for field in fields), summary


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_summary_reports_infinities_without_nan(implementation, dtype):
    values = torch.rand(20000, 10, dtype=dtype)
    values[15000, 3] = math.inf
    low, high, total, row_low, row_high = _checks.summary(values, row_sums=True)
    assert (high, total, row_high) == (math.inf, math.inf, math.inf)
    assert 0 <= low < 1 and math.isfinite(row_low)
    values[2, 0] = -math.inf
    low, high, total, _, _ = _checks.summary(values, row_sums=True)
    assert (low, high) == (-math.inf, math.inf) and math.isnan(total)
    infinite = torch.full((5,), math.inf, dtype=dtype)
    assert list(_checks.summary(infinite))[:3] == [math.inf, math.inf, math.inf]


def test_summary_of_int64_is_exact(implementation):
    big = 2 ** 60 + 1   # not a float64
    values = torch.tensor([3, -big, 7, big, 0] * 30000)
    low, high, _, _, _ = _checks.summary(values)
    assert (low, high) == (-big, big) and isinstance(low, int) and isinstance(high, int)
    labels = torch.randint(0, 9, (100000,))
    low, high, total, _, _ = _checks.summary(labels)
    assert (low, high) == (int(labels.min()), int(labels.max()))
    assert total == float(labels.sum())


def test_summary_reads_tensors_inside_torch_func_transforms(implementation):
    """torch.func.grad hands the function a wrapped tensor without storage of its own: the
    summary of it is the summary of the values it wraps."""
    values = torch.randn(300, 7, dtype=torch.float64)
    seen = []

    def function(wrapped):
        seen.append(_checks.summary(wrapped, row_sums=True))
        return wrapped.sum()
    torch.func.grad(function)(values)
    assert_summary(seen[0], values, True)


@pytest.mark.skipif(not COMPILED, reason="the compiled extension is not built")
def test_compiled_summary_rejects_what_it_cannot_read():
    summarize = backend.compiled_module().value_summary
    with pytest.raises(RuntimeError, match="at least one element"):
        summarize(torch.empty(0, 3))
    with pytest.raises(RuntimeError, match="float32, float64 or int64"):
        summarize(torch.zeros(3, dtype=torch.int32))
    with pytest.raises(RuntimeError, match="2-D"):
        summarize(torch.zeros(3), True)


@pytest.mark.parametrize("bad, message", [
    (lambda p: p.index_fill(1, torch.tensor([0]), math.nan), "must be finite"),
    (lambda p: p.index_fill(0, torch.tensor([25000]), -0.5), "must be >= 0"),
    (lambda p: p * 1.01, "rows must sum to 1"),
])
def test_probability_checks_see_a_bad_value_in_any_chunk(implementation, bad, message):
    """The checks that read the summary (class_pairwise_kl's probabilities here) find a bad row
    far from the first chunk."""
    probs = torch.softmax(torch.randn(30000, 10), 1)
    gmkernels.class_pairwise_kl(probs)   # fine as it is
    with pytest.raises(ValueError, match=message):
        gmkernels.class_pairwise_kl(bad(probs))


@pytest.mark.parametrize("op", ["class_pairwise_kl", "mixture_log_likelihood", "nearest_neighbors"])
def test_checked_ops_run_under_torch_func_on_the_reference_backend(op):
    """The reference backend supports torch.func (README): its value checks read the wrapped
    inputs, and torch.func.grad gives autograd's gradient."""
    gen = torch.Generator().manual_seed(3)
    if op == "class_pairwise_kl":
        point = torch.softmax(torch.randn(40, 6, generator=gen, dtype=torch.float64), 1)
        labels = torch.randint(0, 6, (40,), generator=gen)

        def function(probs):
            return gmkernels.class_pairwise_kl(probs, labels).sum()
    elif op == "mixture_log_likelihood":
        point = torch.rand(7, dtype=torch.float64, generator=gen) + 0.5   # the variances
        x = torch.randn(9, 3, generator=gen, dtype=torch.float64)
        means = torch.randn(7, 3, generator=gen, dtype=torch.float64)
        log_weights = torch.log_softmax(torch.randn(7, generator=gen, dtype=torch.float64), 0)

        def function(var):
            return gmkernels.mixture_log_likelihood(x, means, var, log_weights).sum()
    else:
        point = torch.randn(12, 4, generator=gen, dtype=torch.float64)
        points = torch.randn(20, 4, generator=gen, dtype=torch.float64)

        def function(query):   # not differentiable: the checks run, the values are read
            found = gmkernels.nearest_neighbors(query, points, k=2)
            return (query * found.kth_distance.detach().sum()).sum()
    with gmkernels.use_backend("reference"):
        transformed = torch.func.grad(function)(point)
        leaf = point.clone().requires_grad_()
        (expected_grad,) = torch.autograd.grad(function(leaf), leaf)
    assert torch.allclose(transformed, expected_grad, rtol=1e-10, atol=1e-12)


# Each op with one bad value that its value checks catch, and a bad shape that is checked always.
BAD_VALUES = {
    "class_pairwise_kl": (lambda: gmkernels.class_pairwise_kl(torch.tensor([[0.5, 0.7], [0.2, 0.8]]),
                                                              torch.tensor([0, 1])), "rows must sum to 1"),
    "mixture_log_likelihood": (lambda: gmkernels.mixture_log_likelihood(torch.zeros(3, 2), torch.zeros(4, 2),
                                                                        torch.full((4,), -1.0)), "var must be"),
    "mixture_sample": (lambda: gmkernels.mixture_sample(torch.zeros(3, 2), torch.full((3, 2), math.inf), 5),
                       "scale"),
    "nearest_neighbors": (lambda: gmkernels.nearest_neighbors(torch.zeros(3, 2), torch.zeros(4, 2), 1,
                                                              radii=torch.full((4,), math.nan)), "radii"),
}


@pytest.mark.parametrize("op", sorted(BAD_VALUES))
def test_value_checks_switch_off_in_a_block_and_back_after_it(op):
    call, message = BAD_VALUES[op]
    with pytest.raises(ValueError, match=message):
        call()
    with gmkernels.value_checks(False):
        assert not gmkernels.value_checks_enabled()
        call()                                            # the bad value is not looked at
        with pytest.raises(ValueError, match="x must be"):  # shapes are checked either way
            gmkernels.mixture_log_likelihood(torch.zeros(3), torch.zeros(4, 2), 1.0)
    assert gmkernels.value_checks_enabled()
    with pytest.raises(ValueError, match=message):
        call()


def test_value_checks_block_restores_the_setting_on_exceptions_and_set_takes_only_a_bool():
    with pytest.raises(RuntimeError, match="inside"):
        with gmkernels.value_checks(False):
            raise RuntimeError("inside")
    assert gmkernels.value_checks_enabled()
    with pytest.raises(TypeError, match="enabled must be a bool"):
        gmkernels.set_value_checks(0)
    gmkernels.set_value_checks(False)
    try:
        assert not gmkernels.value_checks_enabled()
    finally:
        gmkernels.set_value_checks(True)


@pytest.mark.parametrize("backend_name", ALL_BACKENDS)
def test_without_value_checks_index_ranges_are_still_checked(backend_name):
    """Kernels index tables by label and component (Triton's without a bound of their own): the
    ranges are checked whatever the switch says."""
    if backend_name not in gmkernels.backends():
        pytest.skip(f"backend {backend_name!r} is not usable here")
    device = backend_device(backend_name)
    with gmkernels.value_checks(False), gmkernels.use_backend(backend_name):
        with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
            gmkernels.class_pairwise_kl(torch.full((4, 3), 1 / 3, device=device),
                                        torch.tensor([0, 1, 2, 7], device=device))
        with pytest.raises(ValueError, match=r"component must lie in \[0, 2\)"):
            gmkernels.mixture_sample(torch.zeros(2, 3, device=device), torch.ones(2, 3, device=device), 2,
                                     component=torch.tensor([0, 2], device=device))


@pytest.mark.parametrize("setting, outcome", [("0", "off"), ("1", "on"), ("no", "ValueError")])
def test_value_checks_environment_variable(setting, outcome):
    import os
    import subprocess
    import sys
    code = ("import gmkernels, torch\n"
            "try:\n"
            "    gmkernels.class_pairwise_kl(torch.tensor([[0.5, 0.7]]), torch.tensor([0]))\n"
            "    print('off')\n"
            "except ValueError:\n"
            "    print('on')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=dict(os.environ, GMKERNELS_VALUE_CHECKS=setting))
    if outcome == "ValueError":
        assert result.returncode != 0 and "GMKERNELS_VALUE_CHECKS must be 0 or 1, got 'no'" in result.stderr
    else:
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.strip() == outcome

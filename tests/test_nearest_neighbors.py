"""nearest_neighbors on every backend: k-th neighbour distances and ball counts against an
independent float64 computation (cdist without the matrix-product shortcut, then sorting and
counting), duplicates and ties decided exactly (a point's k-th neighbour lies exactly on the
radius it defines), self-exclusion by index, opcheck, the declared schema, thread-count
determinism, torch.compile, no backward, bad input."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import gmkernels
from gmkernels.ops import nearest_neighbors as op
from gmkernels.ops import _registry

from conftest import backend_device, require_backend


def truth(query, points, k, radii=None, exclude_self=False, query_radii=None):
    """float64: the distance matrix by explicit differences, sorted per row; the ball counts by
    comparing it with the radii (within: per query row; points_within: per point)."""
    q, p = query.detach().cpu().double(), points.detach().cpu().double()
    distance = torch.cdist(q, p, compute_mode="donot_use_mm_for_euclid_dist")
    counted = torch.ones_like(distance, dtype=torch.bool)
    if exclude_self:
        counted.fill_diagonal_(False)
    kth = torch.stack([row[mask].sort().values[k - 1] for row, mask in zip(distance, counted)]) \
        if len(q) else torch.zeros(0, dtype=torch.float64)
    if radii is None:
        within = torch.zeros(len(q), dtype=torch.int64)
    else:
        within = ((distance <= radii.detach().cpu().double()[None, :]) & counted).sum(1)
    if query_radii is None:
        points_within = torch.zeros(len(p), dtype=torch.int64)
    else:
        points_within = ((distance <= query_radii.detach().cpu().double()[:, None]) & counted).sum(0)
    return kth, within, points_within


def distance_tolerance(query, points, kth_truth):
    """Rounding of a distance from D-term float sums (squared norms and dot products): the
    squared distance is within ~ (D + 4) eps (||p||^2 + ||q||^2) of the truth."""
    eps = torch.finfo(query.dtype).eps
    scale = query.double().square().sum(1).cpu() + points.double().square().sum(1).max().cpu()
    squared_error = 2 * (query.shape[1] + 4) * eps * scale
    return squared_error.sqrt().minimum(squared_error / kth_truth.clamp(min=1e-300)) + 1e-300


def assert_matches_truth(result, query, points, k, radii=None, exclude_self=False, query_radii=None):
    kth, within, points_within = truth(query, points, k, radii, exclude_self, query_radii)
    assert result.kth_distance.dtype == query.dtype and result.within.dtype == torch.int64
    assert torch.equal(result.points_within.cpu(), points_within)
    error = (result.kth_distance.cpu().double() - kth).abs()
    allowed = distance_tolerance(query.cpu(), points.cpu(), kth)
    assert (error <= allowed).all(), f"k-th distance off by {error.max():.3g}"
    assert torch.equal(result.within.cpu(), within)


def random_set(n, d, seed, dtype=torch.float64, duplicates=0, grid=False):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(-2, 3, (n, d), generator=gen).to(dtype) if grid else \
        torch.randn(n, d, generator=gen, dtype=dtype)
    for _ in range(duplicates):
        i, j = torch.randint(n, (2,), generator=gen).tolist()
        x[i] = x[j]
    return x


def backend_limits():
    """Small sets under the Triton interpreter (it runs each program in Python)."""
    return (24, 9) if gmkernels.get_backend() == "triton" else (70, 40)


def usable_backends():
    return [name for name in op.IMPLEMENTED if name in gmkernels.backends()]


@given(seed=st.integers(0, 2**31 - 1), k=st.integers(1, 5), exclude_self=st.booleans(),
       duplicates=st.integers(0, 6), grid=st.booleans(), dtype=st.sampled_from(["float32", "float64"]))
def test_every_backend_equals_the_float64_truth_with_its_own_radii(
        seed, k, exclude_self, duplicates, grid, dtype):
    """The radii of a set (k-th neighbour, self excluded) and then the ball counts of that set's
    rows and of another set's: the count of set X in its own balls is decided by the pairs that
    define the radii, so one ulp of difference between the two calls would miscount. (The
    Triton interpreter takes seconds per call: it gets the fixed cases below instead.)"""
    for name in usable_backends():
        if name == "triton" and backend_device(name).type == "cpu":
            continue
        with gmkernels.use_backend(name):
            check_own_radii(backend_device(name), seed, k, exclude_self, duplicates, grid, dtype)


@pytest.mark.parametrize("seed, k, exclude_self, duplicates, grid, dtype", [
    (0, 1, False, 3, False, "float32"), (1, 3, True, 0, True, "float32"), (2, 2, True, 4, False, "float64")])
def test_each_backend_equals_the_float64_truth_with_its_own_radii_fixed_cases(
        backend, seed, k, exclude_self, duplicates, grid, dtype):
    require_backend(op)
    check_own_radii(backend, seed, k, exclude_self, duplicates, grid, dtype)


def check_own_radii(backend, seed, k, exclude_self, duplicates, grid, dtype):
    max_rows, max_dim = backend_limits()
    gen = torch.Generator().manual_seed(seed)
    n, m = (int(v) for v in torch.randint(k + 1, max_rows, (2,), generator=gen))
    d = int(torch.randint(1, max_dim, (1,), generator=gen))
    x = random_set(n, d, seed, getattr(torch, dtype), duplicates, grid).to(backend)
    y = random_set(m, d, seed + 1, getattr(torch, dtype), duplicates, grid).to(backend)
    y[: min(3, m, n)] = x[: min(3, m, n)]                       # shared rows across the sets
    radii_x = gmkernels.nearest_neighbors(x, x, k, exclude_self=True).kth_distance
    radii_y = gmkernels.nearest_neighbors(y, y, k, exclude_self=True).kth_distance
    assert_matches_truth(gmkernels.nearest_neighbors(x, x, k, exclude_self=True), x, x, k,
                         exclude_self=True)
    # Counts against the backend's own radii equal the float64 counts against the float64 radii:
    # the pairs on a boundary are the ones that define it, inside in both.
    truth_x, _, _ = truth(x, x, k, exclude_self=True)
    truth_y, _, _ = truth(y, y, k, exclude_self=True)
    for points, radii, radii64, excluded in ((x, radii_x, truth_x, exclude_self), (y, radii_y, truth_y, False)):
        result = gmkernels.nearest_neighbors(x, points, 1, radii=radii, query_radii=radii_x,
                                             exclude_self=excluded)
        expected_kth, expected_within, expected_points_within = truth(
            x, points, 1, radii64, excluded, truth_x)
        assert torch.equal(result.within.cpu(), expected_within), "ball counts differ from float64"
        assert torch.equal(result.points_within.cpu(), expected_points_within), \
            "query-ball counts differ from float64"
        error = (result.kth_distance.cpu().double() - expected_kth).abs()
        assert (error <= distance_tolerance(x.cpu(), points.cpu(), expected_kth)).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("d", [1, 7, 8, 64, 300])
def test_sizes_across_tiles_and_chunks(backend, dtype, d):
    """Row counts and dimensions that straddle the kernels' panels, tiles and chunks."""
    require_backend(op)
    if gmkernels.get_backend() == "triton" and d > 64:
        pytest.skip("Triton interpreter: small sizes only")
    n, m = (53, 141) if gmkernels.get_backend() != "triton" else (19, 37)
    x = random_set(n, d, 1, dtype).to(backend)
    y = random_set(m, d, 2, dtype).to(backend)
    gen = torch.Generator().manual_seed(3)
    radii = (torch.rand(m, dtype=dtype, generator=gen) * 2 * d ** 0.5).to(backend)
    query_radii = (torch.rand(n, dtype=dtype, generator=gen) * 2 * d ** 0.5).to(backend)
    for k in (1, 4):
        assert_matches_truth(gmkernels.nearest_neighbors(x, y, k, radii=radii, query_radii=query_radii),
                             x, y, k, radii, query_radii=query_radii)


def test_duplicates_are_neighbours_at_zero_and_self_is_excluded_once_by_index(backend):
    require_backend(op)
    points = torch.tensor([[0.0, 0.0], [0.0, 0.0], [3.0, 4.0], [3.0, 4.0], [3.0, 4.0], [6.0, 8.0]],
                          device=backend)
    result = gmkernels.nearest_neighbors(points, points, 1, exclude_self=True)
    assert result.kth_distance.tolist() == [0.0, 0.0, 0.0, 0.0, 0.0, 5.0]
    second = gmkernels.nearest_neighbors(points, points, 2, exclude_self=True).kth_distance
    assert second.tolist() == [5.0, 5.0, 0.0, 0.0, 0.0, 5.0]
    # Without exclusion each row is its own neighbour at distance 0.
    assert gmkernels.nearest_neighbors(points, points, 1).kth_distance.tolist() == [0.0] * 6


def test_equal_distances_are_ties_and_the_boundary_is_inside(backend):
    require_backend(op)
    centre_and_ring = torch.tensor([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0],
                                    [3.0, 4.0]], dtype=torch.float64, device=backend)
    origin = centre_and_ring[:1]
    for k, expected in ((1, 0.0), (2, 1.0), (5, 1.0), (6, 5.0)):
        assert gmkernels.nearest_neighbors(origin, centre_and_ring, k).kth_distance.item() == expected
    radii = torch.tensor([5.0], dtype=torch.float64, device=backend)
    query = torch.tensor([[3.0, 4.0], [-4.0, 3.0], [3.0, 4.000001], [0.0, 0.0]],
                         dtype=torch.float64, device=backend)
    counts = gmkernels.nearest_neighbors(query, origin, 1, radii=radii).within
    assert counts.tolist() == [1, 1, 0, 1]
    # The same balls around the query rows: the origin is inside three of them (on two boundaries).
    around_query = gmkernels.nearest_neighbors(query, origin, 1, query_radii=radii.expand(4).contiguous())
    assert around_query.points_within.tolist() == [3] and around_query.within.tolist() == [0] * 4
    assert gmkernels.nearest_neighbors(query, origin, 1, radii=-radii).within.tolist() == [0] * 4


def test_a_points_kth_neighbour_lies_exactly_on_its_radius_in_float32(backend):
    """Non-representable coordinates in float32, each point's k-th neighbour (by float64 index)
    queried alone against that point's ball: always inside, with the radius of the same call
    family (any rounding difference between the two calls would put about half outside)."""
    require_backend(op)
    n, d, k = (12, 5, 3) if gmkernels.get_backend() == "triton" else (200, 33, 3)
    x = random_set(n, d, 7, torch.float32).to(backend)
    radii = gmkernels.nearest_neighbors(x, x, k, exclude_self=True).kth_distance
    distance = torch.cdist(x.cpu().double(), x.cpu().double(), compute_mode="donot_use_mm_for_euclid_dist")
    distance.fill_diagonal_(float("inf"))
    kth_index = distance.sort(1).indices[:, k - 1]
    # Query row c is the k-th neighbour of centre c; within counts all centres, so ask for >= 1
    # and check centre c directly through a one-ball call per row block.
    inside = [gmkernels.nearest_neighbors(x[kth_index[c]][None], x[c][None], 1,
                                          radii=radii[c][None]).within.item() for c in range(n)]
    assert inside == [1] * n


def test_empty_query_gives_empty_results(backend):
    require_backend(op)
    points = torch.randn(5, 3, device=backend)
    result = gmkernels.nearest_neighbors(points[:0], points, 2, radii=torch.ones(5, device=backend),
                                         query_radii=torch.ones(0, device=backend))
    assert result.kth_distance.shape == (0,) and result.within.shape == (0,)
    assert result.points_within.tolist() == [0] * 5


def test_non_contiguous_inputs_give_the_contiguous_result(backend):
    require_backend(op)
    x = random_set(30, 12, 4, torch.float32).to(backend)
    y = random_set(40, 24, 5, torch.float32).to(backend)[:, ::2]
    radii = torch.full((40, 2), 3.0, device=backend)[:, 0]
    query_radii = torch.full((30, 3), 3.0, device=backend)[:, 1]
    expected = gmkernels.nearest_neighbors(x, y.contiguous(), 3, radii=radii.contiguous(),
                                           query_radii=query_radii.contiguous())
    result = gmkernels.nearest_neighbors(x, y, 3, radii=radii, query_radii=query_radii)
    for got, want in zip(result, expected):
        assert torch.equal(got, want)


@pytest.mark.parametrize("grid", [False, True])
def test_a_set_against_itself_equals_it_against_a_copy(backend, grid):
    """The k-NN radii of one set (the same tensor twice, self excluded) equal, bit for bit, those
    against a copy of it (the CPU kernel visits each pair once for the former and feeds both rows;
    every pair in the other orientation for the latter), across tiles and chunks, with duplicates
    and ties."""
    require_backend(op)
    n, d = (300, 300) if gmkernels.get_backend() != "triton" else (24, 9)
    x = random_set(n, d, 11, torch.float32, duplicates=n // 4, grid=grid).to(backend)
    for k in (1, 3, 7):
        alone = gmkernels.nearest_neighbors(x, x, k, exclude_self=True)
        copied = gmkernels.nearest_neighbors(x, x.clone(), k, exclude_self=True)
        assert torch.equal(alone.kth_distance, copied.kth_distance)
        assert_matches_truth(alone, x, x, k, exclude_self=True)


def test_cpp_results_do_not_depend_on_the_thread_count():
    if "cpp" not in gmkernels.backends():
        pytest.skip("compiled ops not built")
    x, y = random_set(500, 70, 8, torch.float32), random_set(450, 70, 9, torch.float32)
    gen = torch.Generator().manual_seed(1)
    radii, query_radii = torch.rand(450, generator=gen) * 12, torch.rand(500, generator=gen) * 12
    threads = torch.get_num_threads()
    try:
        with gmkernels.use_backend("cpp"):
            results = []
            for count in (1, 2, 3):
                torch.set_num_threads(count)
                results.append(gmkernels.nearest_neighbors(x, y, 5, radii=radii, query_radii=query_radii))
                results.append(gmkernels.nearest_neighbors(x, x, 5, exclude_self=True))
    finally:
        torch.set_num_threads(threads)
    assert results[0].within.sum() > 0 and results[0].points_within.sum() > 0
    for count in (1, 2):
        for result, want in zip(results[2 * count:2 * count + 2], results[:2]):
            for got, expected in zip(result, want):
                assert torch.equal(got, expected)


def compiled_namespaces():
    namespaces = {"cpp": "gmkernels", "cuda": "gmkernels", "triton": "gmkernels_triton"}
    return [(namespaces[name], backend_device(name)) for name in ("cpp", "cuda", "triton")
            if name in op.IMPLEMENTED and name in gmkernels.backends()]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(dtype):
    namespaces = compiled_namespaces()
    if not namespaces:
        pytest.skip("no compiled or Triton ops here")
    for namespace, device in namespaces:
        x = torch.randn(11, 5, dtype=dtype, device=device)
        y = torch.randn(13, 5, dtype=dtype, device=device)
        radii = torch.rand(13, dtype=dtype, device=device) * 3
        kernel = getattr(torch.ops, namespace).nearest_neighbors.default
        query_radii = torch.rand(11, dtype=dtype, device=device) * 3
        torch.library.opcheck(kernel, (x, y, radii, query_radii, 2, False))
        torch.library.opcheck(kernel, (x, x, None, None, 3, True))


@pytest.mark.parametrize("namespace", ["gmkernels", "gmkernels_triton"])
def test_the_kernel_ops_have_the_declared_schema_and_no_backward_op(namespace):
    if namespace == "gmkernels" and gmkernels.build_info()["compiled"] is False:
        pytest.skip("the compiled extension is not built")
    if namespace == "gmkernels_triton" and "triton" not in gmkernels.backends():
        pytest.skip("triton is not usable here")
    declaration = op._OP.declaration
    kernel = getattr(getattr(torch.ops, namespace), declaration.name).default
    assert str(kernel._schema) == f"{namespace}::{declaration.schema}"
    assert not declaration.differentiable
    assert not hasattr(getattr(torch.ops, namespace), declaration.backward_name)


def test_the_implemented_backends_are_those_of_the_other_ops():
    from gmkernels.ops import minibatch_discrimination
    assert op.IMPLEMENTED == minibatch_discrimination.IMPLEMENTED


def test_a_backward_through_it_raises_not_differentiable(backend):
    require_backend(op)
    x = torch.randn(6, 3, device=backend, requires_grad=True)
    distance = gmkernels.nearest_neighbors(x, x.detach(), 2).kth_distance
    if gmkernels.get_backend() == "reference":
        pytest.skip("the reference is plain PyTorch (differentiable where torch is)")
    with pytest.raises(RuntimeError, match="not differentiable"):
        distance.sum().backward()


def test_a_declaration_without_backward_registers_no_backward_op():
    declaration = _registry.OpDeclaration(name="x", schema="x(Tensor a) -> Tensor",
                                          reference=lambda a: a, fake=lambda a: a)
    assert not declaration.differentiable and declaration.backward is None


def test_works_under_torch_compile_fullgraph(backend):
    require_backend(op)
    if backend.type == "cpu" and gmkernels.get_backend() == "triton":
        pytest.skip("Triton interpreter ops are exercised in eager mode")
    x, y = torch.randn(20, 6, device=backend), torch.randn(25, 6, device=backend)
    radii = torch.rand(25, device=backend) * 3

    @torch.compile(fullgraph=True, backend="aot_eager")
    def fraction_inside(a, b, r):
        return (gmkernels.nearest_neighbors(a, b, 2, radii=r).within > 0).float().mean()

    expected = (gmkernels.nearest_neighbors(x, y, 2, radii=radii).within > 0).float().mean()
    assert fraction_inside(x, y, radii).item() == expected.item()


def test_works_under_inductor_fullgraph():
    if "cpp" not in gmkernels.backends():
        pytest.skip("compiled ops not built")
    x, y = torch.randn(20, 6), torch.randn(25, 6)
    with gmkernels.use_backend("cpp"):
        compiled = torch.compile(lambda a, b: gmkernels.nearest_neighbors(a, b, 3).kth_distance * 2,
                                 fullgraph=True)
        assert torch.equal(compiled(x, y), gmkernels.nearest_neighbors(x, y, 3).kth_distance * 2)


POINTS = torch.randn(5, 3)
BAD_INPUTS = [
    (dict(query=torch.randn(5)), ValueError, r"query must be \(Q, D\)"),
    (dict(points=torch.randn(5, 3, 1)), ValueError, r"points must be \(M, D\)"),
    (dict(points=torch.randn(5, 4)), ValueError, "points must have query's feature size D = 3"),
    (dict(query=torch.randn(5, 3).int()), TypeError, "query must have dtype"),
    (dict(points=torch.randn(5, 3).double()), TypeError, "points must have the dtype of query"),
    (dict(radii=torch.ones(4)), ValueError, r"radii must be \(M,\) = \(5,\)"),
    (dict(radii=torch.ones(5, 1)), ValueError, r"radii must be \(M,\)"),
    (dict(radii=torch.full((5,), float("nan"))), ValueError, "radii must not be NaN"),
    (dict(radii=torch.ones(5, dtype=torch.float64)), TypeError, "radii must have the dtype of query"),
    (dict(query_radii=torch.ones(4)), ValueError, r"query_radii must be \(Q,\) = \(5,\)"),
    (dict(query_radii=torch.full((5,), float("nan"))), ValueError, "query_radii must not be NaN"),
    (dict(k=0), ValueError, "k must be >= 1, got 0"),
    (dict(k=6), ValueError, r"k must be in \[1, 5\]"),
    (dict(k=5, exclude_self=True), ValueError, r"k must be in \[1, 4\]"),
    (dict(k=2.0), TypeError, "k must be a Python int"),
    (dict(exclude_self=1), TypeError, "exclude_self must be a bool"),
    (dict(query=torch.randn(4, 3), exclude_self=True), ValueError, "exclude_self needs"),
    (dict(query=torch.full((5, 3), float("inf"))), ValueError, "query must be finite"),
    (dict(points=torch.full((5, 3), float("nan"))), ValueError, "points must be finite"),
]


@pytest.mark.parametrize("override, error, message", BAD_INPUTS)
def test_bad_input_raises_a_clear_error(override, error, message):
    args = dict(query=POINTS, points=POINTS, k=1, radii=None, query_radii=None, exclude_self=False)
    args.update(override)
    with pytest.raises(error, match=message):
        gmkernels.nearest_neighbors(args.pop("query"), args.pop("points"), args.pop("k"), **args)


def test_binding_guards_direct_calls():
    if "cpp" not in gmkernels.backends():
        pytest.skip("compiled ops not built")
    with pytest.raises(RuntimeError, match=r"k must be in \[1, 4\]"):
        torch.ops.gmkernels.nearest_neighbors(POINTS, POINTS, None, None, 5, True)
    with pytest.raises(RuntimeError, match=r"radii must be \(M,\)"):
        torch.ops.gmkernels.nearest_neighbors(POINTS, POINTS, torch.ones(3), None, 1, False)
    with pytest.raises(RuntimeError, match=r"query_radii must be \(Q,\)"):
        torch.ops.gmkernels.nearest_neighbors(POINTS, POINTS, None, torch.ones(3), 1, False)

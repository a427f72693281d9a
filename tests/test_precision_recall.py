"""gmkernels.metrics.precision_recall: equal to a float64 loop over pairs (the definitions of
Kynkäänniemi et al. 2019 and Naeem et al. 2020, boundary inside) to 1e-9 on every backend; the
hand-made sets (identical: 1/1, disjoint: 0/0, duplicates with a zero radius); bad input."""
import math

import pytest
import torch

import gmkernels
from gmkernels import metrics
from gmkernels.ops import nearest_neighbors as op

from conftest import require_backend


def loop_precision_recall(real, fake, k):
    """Plain Python over all pairs in float64: radii exclude the sample itself by index."""
    real, fake = real.double().tolist(), fake.double().tolist()

    def radii(rows):
        return [sorted(math.dist(a, b) for j, b in enumerate(rows) if j != i)[k - 1]
                for i, a in enumerate(rows)]

    real_radii, fake_radii = radii(real), radii(fake)
    in_real = [sum(math.dist(r, f) <= rr for r, rr in zip(real, real_radii)) for f in fake]
    in_fake = [sum(math.dist(f, r) <= fr for f, fr in zip(fake, fake_radii)) for r in real]
    nearest_fake = [min(math.dist(r, f) for f in fake) for r in real]
    return dict(
        precision=sum(c > 0 for c in in_real) / len(fake),
        recall=sum(c > 0 for c in in_fake) / len(real),
        density=sum(in_real) / (k * len(fake)),
        coverage=sum(d <= rr for d, rr in zip(nearest_fake, real_radii)) / len(real),
    )


def assert_equal_to_loop(result, real, fake, k):
    expected = loop_precision_recall(real, fake, k)
    for name, value in expected.items():
        assert abs(getattr(result, name) - value) <= 1e-9, (name, getattr(result, name), value)


def sized(n, m):
    """Smaller sets under the Triton interpreter (it runs each program in Python)."""
    return (n // 3, m // 3) if gmkernels.get_backend() == "triton" else (n, m)


def sets(n, m, d, seed, shift=0.5, dtype=torch.float64, grid=False):
    gen = torch.Generator().manual_seed(seed)
    if grid:
        return (torch.randint(-2, 3, (n, d), generator=gen).to(dtype),
                torch.randint(-1, 4, (m, d), generator=gen).to(dtype))
    return (torch.randn(n, d, generator=gen, dtype=dtype),
            torch.randn(m, d, generator=gen, dtype=dtype) * 1.2 + shift)


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("seed", [0, 1])
def test_equals_the_float64_loop(backend, k, seed):
    require_backend(op)
    real, fake = sets(*sized(41, 37), 6, seed)
    result = metrics.precision_recall(real.to(backend), fake.to(backend), k=k)
    assert 0 < result.precision < 1          # neither set covers the other entirely
    assert_equal_to_loop(result, real, fake, k)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_equals_the_float64_loop_on_a_grid_full_of_ties(backend, dtype):
    """Integer coordinates: many samples at equal distances and on ball boundaries, exact in
    float32 too."""
    require_backend(op)
    real, fake = sets(*sized(45, 40), 3, 2, dtype=dtype, grid=True)
    for k in (1, 3):
        assert_equal_to_loop(metrics.precision_recall(real.to(backend), fake.to(backend), k=k),
                             real, fake, k)


def test_identical_sets_give_one(backend):
    require_backend(op)
    real, _ = sets(30, 1, 5, 3, dtype=torch.float32)
    shuffled = real[torch.randperm(30, generator=torch.Generator().manual_seed(0))]
    result = metrics.precision_recall(real.to(backend), shuffled.to(backend), k=3)
    assert (result.precision, result.recall, result.coverage) == (1.0, 1.0, 1.0)
    assert result.density >= 1.0


def test_disjoint_far_sets_give_zero(backend):
    require_backend(op)
    real, fake = sets(25, 20, 4, 4, shift=1000.0)
    result = metrics.precision_recall(real.to(backend), fake.to(backend), k=3)
    assert (result.precision, result.recall, result.density, result.coverage) == (0.0, 0.0, 0.0, 0.0)


def test_duplicates_give_zero_radii_whose_boundary_counts(backend):
    """With k = 1 a duplicated real sample has radius 0; a fake sample equal to it is inside
    (the boundary counts), one a little off is not."""
    require_backend(op)
    real = torch.tensor([[0.0, 0.0], [0.0, 0.0], [10.0, 0.0], [20.0, 0.0], [20.0, 0.0]],
                        device=backend)
    fake = torch.tensor([[0.0, 0.0], [20.0, 0.5], [50.0, 0.0], [60.0, 0.0]], device=backend)
    result = metrics.precision_recall(real, fake, k=1)
    assert result.precision == 0.25       # only (0, 0): on two zero radii and on the radius 10
    assert result.density == 3 / 4        # of (10, 0); (20, 0.5) is outside both kinds
    assert result.coverage == 3 / 5       # the two (0, 0) and (10, 0), whose nearest fake is on its radius
    assert_equal_to_loop(result, real.cpu(), fake.cpu(), 1)


BAD = [
    (dict(k=0), ValueError, "k must be >= 1"),
    (dict(k=10), ValueError, "k must be smaller than the number of samples"),
    (dict(k=2.5), TypeError, "k must be a Python int"),
    (dict(fake_features=torch.randn(8, 4)), ValueError, "fake_features must have the feature size"),
    (dict(real_features=torch.randn(10)), ValueError, r"real_features must be \(N, D\)"),
    (dict(fake_features=torch.randn(8, 3, 1)), ValueError, r"fake_features must be \(N, D\)"),
    (dict(fake_features=torch.randn(8, 3).double()), TypeError, "must have the dtype of real_features"),
    (dict(real_features=[[1.0, 2.0]]), TypeError, "real_features must be a torch.Tensor"),
]


@pytest.mark.parametrize("override, error, message", BAD)
def test_bad_arguments_raise_naming_the_argument(override, error, message):
    args = dict(real_features=torch.randn(10, 3), fake_features=torch.randn(8, 3), k=3)
    args.update(override)
    with pytest.raises(error, match=message):
        metrics.precision_recall(**args)


def test_exported():
    assert gmkernels.metrics.precision_recall is metrics.precision_recall
    assert "precision_recall" in metrics.__all__ and "PrecisionRecall" in metrics.__all__

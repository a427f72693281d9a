"""gmkernels.metrics.kernel_inception_distance: torch-fidelity's KID on the same subsets."""
import numpy as np
import pytest
import torch

from gmkernels.metrics import kernel_inception_distance


def loop_kid(a: np.ndarray, b: np.ndarray, subsets: int, subset_size: int, seed: int):
    """torch-fidelity's formula written out with plain float64 loops: per round the unbiased MMD^2
    (sum over i != j of k(x_i, x_j) and k(y_i, y_j) / (m (m - 1)) - 2 sum k(x_i, y_j) / m^2),
    k(x, y) = (x . y / d + 1)^3; mean and std (ddof 0) over rounds. The rounds' rows are drawn as
    the function documents: randperm(N_a)[:m], then randperm(N_b)[:m], from one seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    m, d = subset_size, a.shape[1]
    values = []
    for _ in range(subsets):
        x = a[torch.randperm(len(a), generator=generator)[:m].numpy()]
        y = b[torch.randperm(len(b), generator=generator)[:m].numpy()]
        xx = yy = xy = 0.0
        for i in range(m):
            for j in range(m):
                if i != j:
                    xx += (float(np.dot(x[i], x[j])) / d + 1) ** 3
                    yy += (float(np.dot(y[i], y[j])) / d + 1) ** 3
                xy += (float(np.dot(x[i], y[j])) / d + 1) ** 3
        values.append((xx + yy) / (m * (m - 1)) - 2 * xy / (m * m))
    return float(np.mean(values)), float(np.std(values)), values


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sizes", [(60, 45, 7), (40, 40, 3)])
def test_kid_equals_the_loop_formula_on_the_same_subsets(dtype, sizes):
    n_a, n_b, d = sizes
    gen = torch.Generator().manual_seed(5)
    a = torch.randn(n_a, d, generator=gen, dtype=torch.float64).to(dtype)
    b = (torch.randn(n_b, d, generator=gen, dtype=torch.float64) * 1.3 + 0.4).to(dtype)
    result = kernel_inception_distance(a, b, subsets=6, subset_size=25, generator=11)
    mean, std, values = loop_kid(a.double().numpy(), b.double().numpy(), 6, 25, seed=11)
    assert abs(result.mean - mean) < 1e-9 and abs(result.std - std) < 1e-9
    np.testing.assert_allclose(result.values.numpy(), values, rtol=0, atol=1e-9)
    # A generator object and the same int seed draw the same subsets.
    again = kernel_inception_distance(a, b, subsets=6, subset_size=25, generator=torch.Generator().manual_seed(11))
    assert torch.equal(again.values, result.values)


def test_identical_distributions_give_about_zero_and_shifted_ones_positive():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(2000, 16, generator=gen, dtype=torch.float64)
    b = torch.randn(2000, 16, generator=gen, dtype=torch.float64)
    same = kernel_inception_distance(a, b, subsets=20, subset_size=500)
    shifted = kernel_inception_distance(a, b + 0.5, subsets=20, subset_size=500)
    assert abs(same.mean) < 3 * same.std / 20 ** 0.5 + 1e-3       # unbiased: ~0, either sign
    assert shifted.mean > 0.05 and shifted.mean > 10 * abs(same.mean)
    # The same rows on both sides: every round's MMD^2 is the unbiased estimate of 0 with X = Y,
    # 2 (sum_{i != j} k(x_i, x_j) / (m (m - 1)) - sum_{i, j} k / m^2), not exactly zero.
    twice = kernel_inception_distance(a, a.clone(), subsets=3, subset_size=2000)
    assert abs(twice.mean) < 0.02 and twice.std < 1e-12


@pytest.mark.parametrize("call,error,message", [
    (lambda a: kernel_inception_distance(a, a[:, :3], subset_size=5), ValueError, "same feature size"),
    (lambda a: kernel_inception_distance(a[0], a, subset_size=5), ValueError, r"a must be \(N, d\)"),
    (lambda a: kernel_inception_distance(a, a.long(), subset_size=5), TypeError, "b must have dtype"),
    (lambda a: kernel_inception_distance(a, a, subset_size=11), ValueError, "must not exceed"),
    (lambda a: kernel_inception_distance(a, a, subset_size=1), ValueError, "subset_size must be >= 2"),
    (lambda a: kernel_inception_distance(a, a, subsets=0, subset_size=5), ValueError, "subsets must be >= 1"),
    (lambda a: kernel_inception_distance(a, a, subsets=2.0, subset_size=5), TypeError, "subsets must be a Python int or NumPy integer"),
    (lambda a: kernel_inception_distance(a, a, subset_size=5, generator="x"), TypeError, "generator must be"),
    (lambda a: kernel_inception_distance(a, [[1.0]], subset_size=5), TypeError, "b must be a torch.Tensor"),
])
def test_bad_kid_input_raises_a_clear_error(call, error, message):
    with pytest.raises(error, match=message):
        call(torch.randn(10, 4))

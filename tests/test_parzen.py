"""parzen_log_likelihood against a direct numpy/scipy computation of goodfeli/adversarial's
protocol: LL(x) = logmeanexp_j(-||x - mu_j||^2 / (2 sigma^2)) - d log(sigma sqrt(2 pi)), sigma
chosen on validation from logspace(-1, 0, 10), mean +- std / sqrt(N)."""
import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp

import gmkernels
from gmkernels.metrics import ParzenResult, parzen_log_likelihood


def direct_parzen(samples: np.ndarray, points: np.ndarray, sigma: float) -> np.ndarray:
    squared = ((points[:, None, :] - samples[None, :, :]) ** 2).sum(-1)
    dim = samples.shape[1]
    return logsumexp(-squared / (2 * sigma**2), axis=1) - math.log(samples.shape[0]) \
        - dim * math.log(sigma * math.sqrt(2 * math.pi))


def data(seed=0, dim=6):
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 1, (5, dim))
    draw = lambda n: centres[rng.integers(5, size=n)] + 0.2 * rng.standard_normal((n, dim))  # noqa: E731
    return draw(300), draw(120), draw(50)     # samples, test, validation


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_given_sigma_matches_direct_computation(dtype):
    samples, test, _ = data()
    result = parzen_log_likelihood(torch.tensor(samples, dtype=dtype), torch.tensor(test, dtype=dtype),
                                   sigma=0.3, batch_size=7, progress=False)
    expected = direct_parzen(samples.astype(np.float64), test, 0.3)
    assert isinstance(result, ParzenResult) and result.sigma == 0.3 and result.validation_means == {}
    tolerance = 1e-4 if dtype == torch.float32 else 1e-10
    assert np.allclose(result.log_likelihood.double().numpy(), expected, atol=tolerance)
    assert abs(result.mean - expected.mean()) < tolerance
    assert abs(result.stderr - expected.std() / math.sqrt(len(expected))) < tolerance


def test_sigma_is_chosen_on_validation_from_the_published_grid():
    samples, test, validation = data(1)
    grid = np.logspace(-1, 0, 10)
    validation_means = [direct_parzen(samples, validation, s).mean() for s in grid]
    best = grid[int(np.argmax(validation_means))]
    result = parzen_log_likelihood(torch.tensor(samples), torch.tensor(test), validation=torch.tensor(validation),
                                   progress=False)
    assert result.sigma == pytest.approx(best, rel=1e-12)
    assert list(result.validation_means) == pytest.approx(list(grid), rel=1e-12)
    assert list(result.validation_means.values()) == pytest.approx(validation_means, rel=1e-10)
    assert result.mean == pytest.approx(direct_parzen(samples, test, best).mean(), rel=1e-10)


def test_images_are_flattened_and_arrays_accepted_and_the_progress_bar_runs(capsys):
    samples, test, _ = data(2, dim=12)
    as_images = lambda a: a.reshape(-1, 3, 2, 2)  # noqa: E731
    result = parzen_log_likelihood(as_images(samples), as_images(test), sigma=0.5, batch_size=50, progress=True)
    assert result.mean == pytest.approx(direct_parzen(samples, test, 0.5).mean(), rel=1e-10)
    assert "parzen" in capsys.readouterr().err


def test_kernel_backends_give_the_reference_result(backend):
    if gmkernels.get_backend() == "reference":
        pytest.skip("compares a kernel backend with the reference")
    samples, test, _ = data(3)
    samples_t, test_t = torch.tensor(samples, device=backend), torch.tensor(test, device=backend)
    result = parzen_log_likelihood(samples_t, test_t, sigma=0.2, progress=False)
    with gmkernels.use_backend("reference"):
        expected = parzen_log_likelihood(samples_t.cpu(), test_t.cpu(), sigma=0.2, progress=False)
    assert torch.allclose(result.log_likelihood.cpu(), expected.log_likelihood, rtol=1e-10)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(), ValueError, "pass sigma, or a validation set"),
    (dict(sigma=-1.0), ValueError, "sigma must be a finite float > 0"),
    (dict(sigma=0.1, batch_size=0), ValueError, "batch_size must be >= 1"),
    (dict(validation=np.zeros((4, 3))), ValueError, "validation must be"),
    (dict(validation=np.zeros((4, 6)), sigmas=[]), ValueError, "sigmas must be a non-empty"),
    (dict(sigma=0.1, test=np.zeros((4, 5))), ValueError, "test must have d = 6"),
    (dict(sigma=0.1, test=np.zeros(4)), ValueError, r"test must be \(N, d\)"),
    (dict(sigma=0.1, test=np.zeros((4, 6), dtype=np.int64)), TypeError, "test must have dtype"),
])
def test_bad_arguments_raise(kwargs, error, message):
    args = dict(samples=np.zeros((10, 6)), test=np.zeros((4, 6)))
    args.update(kwargs)
    with pytest.raises(error, match=message):
        parzen_log_likelihood(args.pop("samples"), args.pop("test"), progress=False, **args)

"""gmkernels.metrics: IS against hand-computed cases and a numpy copy of improved-gan's code, mIS
against a numpy copy of DeLiGAN's script and the seed-000 sketch table, FID against
hand-computed cases and scipy's sqrtm (random and rank-deficient covariances), streaming and
distributed moments, the batching helpers, bad input."""
import math
import os

import numpy as np
import pytest
import scipy.linalg
import scipy.optimize
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gmkernels import metrics
from gmkernels.metrics import GaussianMoments


def random_probs(num_samples, num_classes, seed, sharpness=2.0):
    gen = torch.Generator().manual_seed(seed)
    return torch.softmax(sharpness * torch.randn(num_samples, num_classes, generator=gen,
                                                 dtype=torch.float64), 1)


# ---------------------------------------------------------------------------------------------
# Inception score


def improved_gan_inception_score(preds, splits):
    """openai/improved-gan inception_score/model.py, get_inception_score, after the softmax."""
    scores = []
    for i in range(splits):
        part = preds[(i * preds.shape[0] // splits):((i + 1) * preds.shape[0] // splits), :]
        kl = part * (np.log(part) - np.log(np.expand_dims(np.mean(part, 0), 0)))
        kl = np.mean(np.sum(kl, 1))
        scores.append(np.exp(kl))
    return np.mean(scores), np.std(scores)


def test_inception_score_hand_computed_cases():
    # Two confident, different predictions: p(y) uniform, KL = log 2 each -> IS = 2.
    assert metrics.inception_score(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), splits=1) == pytest.approx((2.0, 0.0))
    # Identical rows: KL = 0 -> IS = 1.
    assert metrics.inception_score(torch.full((6, 3), 1 / 3), splits=3) == pytest.approx((1.0, 0.0))
    # Split 1 = rows 0-1 (score 2), split 2 = rows 2-3: p(y) = (3/4, 1/4),
    # KL(row 2) = log(4/3), KL(row 3) = 1/2 log(2/3) + 1/2 log 2 = 1/2 log(4/3); mean 3/4 log(4/3).
    probs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.5, 0.5]])
    second = math.exp(0.75 * math.log(4 / 3))
    mean, std = metrics.inception_score(probs, splits=2)
    assert mean == pytest.approx((2 + second) / 2) and std == pytest.approx(abs(2 - second) / 2)


@pytest.mark.parametrize("num_samples, splits", [(1000, 10), (103, 10), (57, 1), (12, 12)])
def test_inception_score_equals_improved_gans_code(num_samples, splits):
    probs = random_probs(num_samples, 7, num_samples)
    expected = improved_gan_inception_score(probs.numpy(), splits)
    assert metrics.inception_score(probs, splits) == pytest.approx(expected, rel=1e-12)
    assert metrics.inception_score(probs.float(), splits) == pytest.approx(expected, rel=1e-5)


def test_inception_score_splits_are_contiguous_not_shuffled():
    probs = torch.cat([torch.eye(4, dtype=torch.float64).repeat(5, 1),      # 20 diverse rows
                       torch.eye(4, dtype=torch.float64)[:1].repeat(20, 1)])  # 20 identical rows
    mean, std = metrics.inception_score(probs, splits=2)
    assert (mean, std) == pytest.approx((2.5, 1.5))  # scores 4 and 1


def test_inception_score_zero_probabilities_contribute_zero():
    probs = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]])
    mean, _ = metrics.inception_score(probs, splits=1)
    assert math.isfinite(mean)
    assert mean == pytest.approx(math.exp(0.5 * math.log(2)))


# ---------------------------------------------------------------------------------------------
# Modified inception score


def deligan_modified_inception_score(preds, splits):
    """val-iisc/deligan transfer_cifar10_softmax_b1.py: the per-class loop (classes 0..splits-1,
    the number of classes), returning per-class (exp(kl), split mean, split std) and the overall
    (mean, std)."""
    argmax = preds.argmax(axis=1)
    scores, per_class = [], []
    for i in range(splits):
        part = preds[argmax == i]
        logp = np.log(part)
        self = np.sum(part * logp, axis=1)
        cross = np.mean(np.dot(part, np.transpose(logp)), axis=1)
        diff = self - cross
        kl = np.mean(self - cross)
        kl1 = []
        for j in range(splits):
            diffj = diff[(j * diff.shape[0] // splits):((j + 1) * diff.shape[0] // splits)]
            kl1.append(np.exp(diffj.mean()))
        per_class.append((np.exp(kl), np.mean(kl1), np.std(kl1)))
        scores.append(np.exp(kl))
    return np.array(per_class), (np.mean(scores), np.std(scores))


def test_modified_inception_score_equals_deligans_script():
    probs = random_probs(3000, 10, 0)
    assert int(torch.bincount(probs.argmax(1), minlength=10).min()) >= 10
    per_class, overall = deligan_modified_inception_score(probs.numpy(), 10)
    assert metrics.modified_inception_score(probs) == pytest.approx(overall, rel=1e-10)
    scores = metrics.modified_inception_score_per_class(probs)
    assert np.allclose(scores.score.numpy(), per_class[:, 0], rtol=1e-10)
    assert np.allclose(scores.split_mean.numpy(), per_class[:, 1], rtol=1e-10)
    assert np.allclose(scores.split_std.numpy(), per_class[:, 2], rtol=1e-8, atol=1e-12)
    assert torch.equal(scores.count, torch.bincount(probs.argmax(1), minlength=10))


def test_global_mode_is_exp_of_the_mean_over_all_samples():
    probs = random_probs(200, 5, 1)
    kl = [(probs[i] * (probs[i].log() - probs[j].log())).sum().item()
          for i in range(200) for j in range(200) if probs[j].argmax() == probs[i].argmax()]
    counts = torch.bincount(probs.argmax(1), minlength=5)[probs.argmax(1)]
    weights = [1 / counts[i].item() for i in range(200) for j in range(200)
               if probs[j].argmax() == probs[i].argmax()]
    expected = math.exp(sum(w * k for w, k in zip(weights, kl)) / 200)
    score, spread = metrics.modified_inception_score(probs, mode="global")
    assert score == pytest.approx(expected, rel=1e-12) and math.isnan(spread)


def test_given_labels_and_empty_classes_are_left_out():
    probs = random_probs(60, 4, 2)
    labels = torch.tensor([0, 5] * 30)
    scores = metrics.modified_inception_score_per_class(probs, labels, num_classes=7)
    assert scores.count.tolist() == [30, 0, 0, 0, 0, 30, 0]
    assert torch.isnan(scores.score[[1, 2, 3, 4, 6]]).all()
    for k in (0, 5):  # a class's score depends on its own samples only
        alone = metrics.modified_inception_score_per_class(probs[labels == k], torch.zeros(30, dtype=torch.int64))
        assert alone.score[0].item() == pytest.approx(scores.score[k].item(), rel=1e-12)
    mean, std = metrics.modified_inception_score(probs, labels, num_classes=7)
    finite = scores.score[[0, 5]]
    assert mean == pytest.approx(float(finite.mean())) and std == pytest.approx(float(finite.std(correction=0)))


def class_with_score(target, category, num_categories):
    """Two probability rows, both predicting `category`, whose class score exp(mean_i kl_i) is
    `target` (kl_i = half of KL(p_i || p_other)): the rows lean by t towards two other classes."""
    other_a, other_b = (category + 1) % num_categories, (category + 2) % num_categories

    def rows(t):
        base = np.full(num_categories, 1e-3)
        base[category] = 1.0
        p, q = base.copy(), base.copy()
        p[other_a] += t
        q[other_b] += t
        return p / p.sum(), q / q.sum()

    def log_score(t):
        p, q = rows(t)
        kl_pq, kl_qp = (p * np.log(p / q)).sum(), (q * np.log(q / p)).sum()
        return (kl_pq + kl_qp) / 4 - math.log(target)

    t = scipy.optimize.brentq(log_score, 0.0, 0.999, xtol=1e-14)
    return np.stack(rows(t))


SKETCH_TABLE = [  # DeLiGAN's Table (seed 000): per-category scores and the "Overall" column
    ("similar, GAN", [1.31, 1.39, 1.49, 1.25], (1.36, 0.09)),
    ("similar, DeLiGAN", [1.40, 1.30, 1.47, 1.22], (1.35, 0.10)),   # Tomato printed as "1.9"
    ("dissimilar, GAN", [1.80, 1.48, 1.50, 1.53, 1.74], (1.61, 0.13)),
    ("dissimilar, DeLiGAN", [2.09, 1.57, 1.65, 1.75, 1.87], (1.79, 0.18)),
]


@pytest.mark.parametrize("name, per_category, overall", SKETCH_TABLE, ids=[row[0] for row in SKETCH_TABLE])
def test_seed_000_sketch_table_overall_column_reproduces(name, per_category, overall):
    """Samples built so that each category's score is the table's value; the metric's overall
    (mean, ddof=0 std over categories) then rounds to the table's Overall cell."""
    num_categories = len(per_category)
    probs = torch.tensor(np.concatenate([class_with_score(score, c, num_categories)
                                         for c, score in enumerate(per_category)]))
    scores = metrics.modified_inception_score_per_class(probs)
    assert np.allclose(scores.score.numpy(), per_category, rtol=1e-9)
    mean, std = metrics.modified_inception_score(probs)
    assert (round(mean, 2), round(std, 2)) == overall
    assert round(float(np.std(per_category, ddof=1)), 2) != overall[1]  # ddof=1 would not


def test_seed_000_tomato_entry_as_printed_does_not_reproduce_its_overall():
    probs = torch.tensor(np.concatenate([class_with_score(score, c, 4)
                                         for c, score in enumerate([1.40, 1.9, 1.47, 1.22])]))
    mean, std = metrics.modified_inception_score(probs)
    assert (round(mean, 2), round(std, 2)) != (1.35, 0.10)


# ---------------------------------------------------------------------------------------------
# Fréchet distance


def scipy_frechet(mean_a, cov_a, mean_b, cov_b):
    """pytorch-fid's formula with scipy's sqrtm (real part)."""
    covmean = scipy.linalg.sqrtm(cov_a @ cov_b)
    diff = mean_a - mean_b
    return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean.real))


def test_frechet_distance_hand_computed_cases():
    # 1-d: means 1 and 4, variances 2 and 2 (ddof=1): 9 + 2 + 2 - 2 * 2 = 9.
    a, b = torch.tensor([[0.0], [2.0]]), torch.tensor([[3.0], [5.0]])
    assert metrics.frechet_distance(a, b) == pytest.approx(9.0, rel=1e-14)
    # Diagonal covariances: sum (sqrt(s_a) - sqrt(s_b))^2 + |mu_a - mu_b|^2.
    mean_a, mean_b = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    var_a, var_b = np.array([4.0, 1.0, 0.25]), np.array([1.0, 9.0, 0.0])
    expected = 1 + 4 + ((np.sqrt(var_a) - np.sqrt(var_b)) ** 2).sum()
    got = metrics.frechet_distance_from_moments(mean_a, np.diag(var_a), mean_b, np.diag(var_b))
    assert got == pytest.approx(expected, rel=1e-14)


def test_identical_features_give_zero_never_negative():
    features = torch.randn(50, 16, dtype=torch.float64)
    assert metrics.frechet_distance(features, features.clone()) == pytest.approx(0.0, abs=1e-10)
    assert metrics.frechet_distance(features, features.clone()) >= 0.0


@pytest.mark.parametrize("num_samples, dim", [(400, 12), (2000, 64)])
def test_frechet_distance_matches_scipy_sqrtm_on_random_covariances(num_samples, dim):
    gen = torch.Generator().manual_seed(dim)
    mixing = torch.randn(dim, dim, generator=gen, dtype=torch.float64)
    a = torch.randn(num_samples, dim, generator=gen, dtype=torch.float64) @ mixing
    b = torch.randn(num_samples, dim, generator=gen, dtype=torch.float64) @ mixing.T + 0.3
    cov_a, cov_b = np.cov(a.numpy(), rowvar=False), np.cov(b.numpy(), rowvar=False)
    expected = scipy_frechet(a.numpy().mean(0), cov_a, b.numpy().mean(0), cov_b)
    assert metrics.frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    assert metrics.frechet_distance(a.float(), b.float()) == pytest.approx(expected, rel=1e-4)


def test_frechet_distance_on_rank_deficient_covariances_matches_scipy():
    """Fewer samples than dimensions (rank N - 1 < d)."""
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(10, 32, generator=gen, dtype=torch.float64)
    b = torch.randn(12, 32, generator=gen, dtype=torch.float64) * 2
    cov_a, cov_b = np.cov(a.numpy(), rowvar=False), np.cov(b.numpy(), rowvar=False)
    assert np.linalg.matrix_rank(cov_a) == 9 and np.linalg.matrix_rank(cov_b) == 11
    expected = scipy_frechet(a.numpy().mean(0), cov_a, b.numpy().mean(0), cov_b)
    assert metrics.frechet_distance(a, b) == pytest.approx(expected, rel=1e-7)


@pytest.mark.parametrize("seed", range(3))
def test_frechet_distance_is_exact_for_singular_commuting_covariances(seed):
    """S_a, S_b = Q diag(lambda) Q^T with many zero eigenvalues: the exact distance is
    sum (sqrt lambda_a - sqrt lambda_b)^2. Ours reaches it to rounding; sqrtm's result carries the
    square roots of the null space's rounding noise (~1e-7 here)."""
    rng = np.random.default_rng(seed)
    rotation, _ = np.linalg.qr(rng.standard_normal((50, 50)))
    values_a = np.concatenate([3 * rng.random(20), np.zeros(30)])
    values_b = np.concatenate([np.zeros(10), rng.random(25), np.zeros(15)])
    cov_a = rotation @ np.diag(values_a) @ rotation.T
    cov_b = rotation @ np.diag(values_b) @ rotation.T
    exact = ((np.sqrt(values_a) - np.sqrt(values_b)) ** 2).sum()
    got = metrics.frechet_distance_from_moments(np.zeros(50), cov_a, np.zeros(50), cov_b)
    assert got == pytest.approx(exact, abs=1e-12)
    assert abs(scipy_frechet(np.zeros(50), cov_a, np.zeros(50), cov_b) - exact) > 1e-9


def test_streaming_moments_equal_one_shot_moments_and_merge():
    gen = torch.Generator().manual_seed(5)
    features = torch.randn(1000, 7, generator=gen, dtype=torch.float64) * 3 + 100  # far from 0
    moments = GaussianMoments()
    for batch in features.split(37):
        moments.update(batch.float() if batch.shape[0] % 2 else batch)
    reference = GaussianMoments().update(features)
    assert moments.count == 1000
    assert torch.allclose(reference.mean, features.mean(0), rtol=1e-14)
    assert torch.allclose(reference.covariance, torch.cov(features.T), rtol=1e-12)
    assert torch.allclose(moments.mean, features.mean(0), rtol=1e-6)
    shards = [GaussianMoments().update(chunk) for chunk in features.split(300)]
    merged = GaussianMoments()
    for shard in shards:
        merged.merge(shard)
    assert torch.allclose(merged.covariance, torch.cov(features.T), rtol=1e-12)
    other = torch.randn(500, 7, generator=gen, dtype=torch.float64)
    assert merged.frechet_distance(GaussianMoments().update(other)) == pytest.approx(
        metrics.frechet_distance(features, other), rel=1e-12)


def _all_reduce_worker(rank, world_size, init_file, features, result_queue):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        shard = features.chunk(world_size)[rank]
        moments = GaussianMoments(dim=features.shape[1])
        if rank == 0:
            moments.update(shard[:3]).update(shard[3:])
        else:
            moments.update(shard)
        moments.all_reduce()
        # NumPy copies travel by value: a tensor would travel as a shared-memory handle that the
        # parent can fail to open once this process has exited (FileNotFoundError under load).
        result_queue.put((rank, moments.count, moments.mean.numpy(), moments.covariance.numpy()))
    finally:
        dist.destroy_process_group()


def test_all_reduce_across_two_gloo_ranks_gives_the_moments_of_all_features(tmp_path):
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    features = torch.randn(101, 5, dtype=torch.float64) + 10
    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    processes = [context.Process(target=_all_reduce_worker,
                                 args=(rank, 2, str(tmp_path / "init"), features, queue))
                 for rank in range(2)]
    for process in processes:
        process.start()
    results = [queue.get() for _ in processes]
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    for _, count, mean, covariance in results:
        assert count == 101
        assert torch.allclose(torch.from_numpy(mean), features.mean(0), rtol=1e-13)
        assert torch.allclose(torch.from_numpy(covariance), torch.cov(features.T), rtol=1e-12)


def test_all_reduce_without_distributed_leaves_the_moments():
    moments = GaussianMoments().update(torch.randn(10, 3))
    before = (moments.count, moments.mean, moments.covariance)
    moments.all_reduce()
    assert moments.count == before[0] and torch.equal(moments.mean, before[1])


# ---------------------------------------------------------------------------------------------
# Callables in batches


class CountingLinear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(12, 5, dtype=torch.float64)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.layer(x.flatten(1))


def test_apply_in_batches_equals_one_call_and_uses_no_grad():
    model = CountingLinear()
    images = torch.randn(103, 3, 4, dtype=torch.float64)
    out = metrics.apply_in_batches(model, images, batch_size=25)
    assert model.calls == 5 and not out.requires_grad
    assert torch.allclose(out, model(images), rtol=1e-14)
    listed = metrics.apply_in_batches(model, list(images.split(40)))
    assert torch.allclose(listed, out, rtol=1e-14)


def test_metric_helpers_equal_the_metrics_on_the_outputs():
    model = CountingLinear()
    images = torch.randn(120, 12, dtype=torch.float64)
    classify = lambda x: model(x).softmax(1)  # noqa: E731
    probs = classify(images).detach()
    assert metrics.inception_score_of(classify, images, splits=4, batch_size=7) == pytest.approx(
        metrics.inception_score(probs, 4), rel=1e-12)
    assert metrics.modified_inception_score_of(classify, images, batch_size=50) == pytest.approx(
        metrics.modified_inception_score(probs), rel=1e-12, nan_ok=True)
    other = torch.randn(90, 12, dtype=torch.float64) + 1
    assert metrics.frechet_distance_of(model, images, other, batch_size=16) == pytest.approx(
        metrics.frechet_distance(model(images).detach(), model(other).detach()), rel=1e-10)
    moments = metrics.feature_moments(model, images, batch_size=11)
    assert torch.allclose(moments.covariance, torch.cov(model(images).detach().T), rtol=1e-12)


BAD_METRIC_INPUTS = [
    (lambda: metrics.inception_score(torch.full((5, 2), 0.5), splits=10), ValueError, "at least splits = 10 rows"),
    (lambda: metrics.inception_score(torch.full((5, 2), 0.5), splits=0), ValueError, "splits must be >= 1"),
    (lambda: metrics.inception_score(torch.full((5, 2), 0.5), splits=2.0), TypeError, "splits must be a Python int"),
    (lambda: metrics.inception_score(torch.full((5, 2), 0.6)), ValueError, "sum to 1"),
    (lambda: metrics.inception_score(torch.ones(5)), ValueError, r"probs must be \(N, C\)"),
    (lambda: metrics.modified_inception_score(torch.full((4, 2), 0.5), mode="deck"), ValueError, "mode must be"),
    (lambda: metrics.modified_inception_score(torch.zeros(0, 2)), ValueError, "at least one row"),
    (lambda: metrics.modified_inception_score(torch.full((4, 2), 0.5), torch.tensor([0, 1, 2, 0])),
     ValueError, r"labels must lie in \[0, 2\)"),
    (lambda: metrics.frechet_distance(torch.randn(5, 3), torch.randn(5, 4)), ValueError, "features_b must have d = 3"),
    (lambda: metrics.frechet_distance(torch.randn(1, 3), torch.randn(5, 3)), ValueError, "features_a must have at least 2 rows"),
    (lambda: metrics.frechet_distance(torch.randn(5), torch.randn(5, 3)), ValueError, r"features_a must be \(B, d\)"),
    (lambda: metrics.frechet_distance(torch.ones(4, 2, dtype=torch.int64), torch.randn(5, 2)), TypeError, "floating-point"),
    (lambda: metrics.frechet_distance(torch.tensor([[math.nan, 1.0], [0.0, 1.0]]), torch.randn(5, 2)), ValueError, "features_a must be finite"),
    (lambda: metrics.frechet_distance_from_moments(np.zeros(3), np.eye(2), np.zeros(3), np.eye(3)), ValueError, r"cov_a must have shape \(3, 3\)"),
    (lambda: GaussianMoments().covariance, ValueError, "at least 2 feature vectors"),
    (lambda: metrics.apply_in_batches(lambda x: x, torch.ones(4, 2), batch_size=0), ValueError, "batch_size must be"),
    (lambda: metrics.apply_in_batches(lambda x: x, [1, 2]), TypeError, "iterable of tensors"),
]


@pytest.mark.parametrize("call, error, message", BAD_METRIC_INPUTS)
def test_bad_metric_input_raises_a_clear_error(call, error, message):
    with pytest.raises(error, match=message):
        call()

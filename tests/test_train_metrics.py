"""Metrics glue: the 2-D mode protocol, stacked modes, clustering scores, the classifier cache."""
import json
import math

import pytest
import torch
from train_support import one_thread, tiny_config  # noqa: F401 (autouse fixture)

from gmgan import Trainer
from gmgan.classifier import metrics_classifier
from gmgan.clustering import clustering_accuracy, cluster, scores
from gmgan.scoring import (feature_set_metrics, histogram_kl_to_uniform, mode_statistics, nearest_training_images,
                           stacked_statistics)
from gmgan.trainer import feature_matching_loss


def test_mode_statistics_follow_the_3_std_protocol():
    means = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0]])
    samples = torch.tensor([[0.1, 0.0], [0.0, -0.149], [2.0, 0.16], [1.0, 1.0], [0.0, 2.0], [0.0, 2.1]])
    stats = mode_statistics(samples, means, std=0.05)   # high quality: distance <= 0.15
    assert stats["mode_counts"] == [2, 0, 2]
    assert stats["modes"] == 2
    assert stats["high_quality"] == pytest.approx(100 * 4 / 6)
    assert stats["reverse_kl"] == pytest.approx(math.log(3 / 2))   # two equal bins of three modes


def test_reverse_kl_is_zero_for_uniform_and_none_without_high_quality_samples():
    assert histogram_kl_to_uniform(torch.tensor([5, 5, 5, 5])) == pytest.approx(0.0)
    assert histogram_kl_to_uniform(torch.tensor([0, 9, 0, 0])) == pytest.approx(math.log(4))
    assert mode_statistics(torch.full((3, 2), 9.0), torch.zeros(1, 2), 0.05)["reverse_kl"] is None


def test_stacked_statistics_count_distinct_triples():
    digits = torch.tensor([[1, 2, 3], [1, 2, 3], [9, 9, 9], [0, 0, 0]])
    stats = stacked_statistics(digits, 10)
    assert stats["stacked_modes"] == 3
    p = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
    assert stats["stacked_kl"] == pytest.approx(float((p * torch.log(p * 1000)).sum()))


def test_clustering_accuracy_is_invariant_to_cluster_names():
    labels = [0, 0, 1, 1, 2, 2]
    assert clustering_accuracy(labels, [2, 2, 0, 0, 1, 1]) == 1.0
    assert clustering_accuracy(labels, [0, 1, 0, 1, 0, 1]) == pytest.approx(2 / 6)
    assert clustering_accuracy(labels, [5, 5, 5, 7, 7, 7]) == pytest.approx(4 / 6)   # fewer clusters


def test_feature_matching_uses_batch_means_with_l1_or_l2():
    real = torch.tensor([[1.0, 2.0], [3.0, 2.0]])
    fake = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    assert feature_matching_loss(real, fake, 1) == pytest.approx((2 + 1.5) / 2)
    assert feature_matching_loss(real, fake, 2) == pytest.approx((4 + 2.25) / 2)


def test_nearest_training_images_finds_exact_copies_across_chunks():
    train = torch.randn(9000, 1, 4, 4)
    found = nearest_training_images(train[[8500, 3, 8191]] + 1e-4, train, count=2)
    assert found[:, 0].tolist() == [8500, 3, 8191]


def test_evaluation_writes_metrics_and_the_scatter_of_2d_runs(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, variant="mdgan"))
    metrics = trainer.run()
    run = tmp_path / trainer.config.run_name
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["modes"] == metrics["modes"] and 0 <= saved["high_quality"] <= 100
    assert (run / "metrics.csv").read_text().startswith("step,variant")
    assert (run / "samples.png").stat().st_size > 1000
    # the evaluation generator is separate: evaluating twice gives the same numbers
    assert trainer.evaluate(plots=False)["mode_counts"] == metrics["mode_counts"]


@pytest.fixture
def short_classifier_training(monkeypatch):
    import gmgan.classifier

    monkeypatch.setattr(gmgan.classifier, "MIN_STEPS", 60)


def test_metrics_classifier_is_trained_once_and_cached(tmp_path, monkeypatch, short_classifier_training):
    monkeypatch.setenv("GMGAN_CACHE", str(tmp_path / "cache"))
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(200) % 4
    x = torch.randn(200, 1, 8, 8, generator=generator) * 0.1 + labels[:, None, None, None].float() / 2
    first = metrics_classifier("toy", (x, labels), (x[:40], labels[:40]), 4)
    assert first.test_accuracy > 0.9
    files = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(files) == 2 and files[0].endswith(".json") and files[1].endswith(".safetensors")
    again = metrics_classifier("toy", (x, labels), (x[:40], labels[:40]), 4)
    for a, b in zip(first.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dataset", ["digits", "stacked-digits"])
def test_image_evaluation_reports_classifier_metrics(tmp_path, monkeypatch, short_classifier_training, dataset):
    monkeypatch.setenv("GMGAN_CACHE", str(tmp_path / "cache"))
    trainer = Trainer(tiny_config(tmp_path, dataset=dataset, steps=2))
    metrics = trainer.run()
    assert metrics["classifier_test_accuracy"] > 0.8
    keys = ["fid", "kid", "kid_std", "parzen_mean"] + (["stacked_modes", "stacked_kl"] if dataset == "stacked-digits" else ["is", "mis"])
    for key in keys:
        assert math.isfinite(metrics[key]), key
    if dataset == "stacked-digits":
        assert 1 <= metrics["stacked_modes"] <= min(1000, metrics["eval_samples"])
    else:
        assert 1 <= metrics["is"] <= 10 and metrics["mis"] >= 1
    assert (tmp_path / trainer.config.run_name / "neighbours.png").exists()
    saved = json.loads((tmp_path / trainer.config.run_name / "metrics.json").read_text())
    assert saved["kid"] == metrics["kid"] and saved["kid_std"] >= 0


def _feature_sets():
    generator = torch.Generator().manual_seed(3)
    return (torch.randn(1500, 8, generator=generator, dtype=torch.float64),
            torch.randn(700, 8, generator=generator, dtype=torch.float64))


def test_feature_set_metrics_report_kid_of_the_features():
    from gmkernels import metrics as kernel_metrics

    features, test = _feature_sets()
    result = feature_set_metrics(features, test)
    kid = kernel_metrics.kernel_inception_distance(features, test, subsets=100, subset_size=700, generator=7_777_777)
    assert (result["kid"], result["kid_std"]) == (kid.mean, kid.std)
    assert feature_set_metrics(features + 1, test)["kid"] > 10 * abs(result["kid"])


def test_feature_set_metrics_report_precision_recall_density_coverage():
    from gmkernels import metrics as kernel_metrics

    features, test = _feature_sets()
    result = feature_set_metrics(features, test)
    expected = kernel_metrics.precision_recall(test, features, k=3)
    for key in ("precision", "recall", "density", "coverage"):
        assert result[key] == getattr(expected, key), key
    assert feature_set_metrics(features + 10, test)["precision"] == 0.0     # far from every real ball


def test_gmgan_clustering_scores_both_methods(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, variant="gmgan", steps=2))
    trainer.run(evaluate_end=False)
    result = cluster(trainer, per_component=20, classifier_steps=20)
    assert result["components"] == 25
    for key in ("gmgan_acc", "gmgan_nmi", "kmeans_acc", "kmeans_nmi"):
        assert 0 <= result[key] <= 1
    assert result["kmeans_acc"] > 0.9   # 25 tight, well separated blobs: k-means finds them


def test_infogan_clusters_by_q_categorical_argmax(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, variant="infogan", steps=2))
    trainer.run(evaluate_end=False)
    result = cluster(trainer)
    assert result["method"] == "InfoGAN" and result["components"] == 25
    x, labels = trainer.dataset.get(torch.arange(len(trainer.dataset)))
    with torch.no_grad():
        q_class = trainer.D(x)[0][:, 1:26].argmax(1)      # D's head: GAN logit, then Q's 25 class logits
    expected = scores(labels.numpy(), q_class.numpy())
    assert result["infogan_acc"] == pytest.approx(expected["acc"]) and result["infogan_nmi"] == pytest.approx(expected["nmi"])
    assert result["kmeans_acc"] > 0.9

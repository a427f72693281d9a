"""Stacked digits and the discriminator-capacity knobs: the stacked evaluation against a
hand count, end to end on a tiny run; the d_size parameter ratios; spectral normalization of D."""
import math
from collections import Counter

import pytest
import torch
from safetensors.torch import load_file
from torch.nn.utils import parametrize
from train_support import one_thread, tiny_config  # noqa: F401 (autouse fixture)

from gmgan import ConfigError, Trainer, build_config
from gmgan.compare import row_settings
from gmgan.data import StackedImages, load_dataset
from gmgan.models import build_networks, conv_discriminator_widths, parameter_count
from gmgan.scoring import (channel_accuracy, classifier_for, image_metrics, stacked_classifier_checks,
                           stacked_statistics)
from gmgan.variants import make_variant


@pytest.fixture(scope="module")
def classifier_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture
def cached_classifier(classifier_cache, monkeypatch):
    """A short-trained digits classifier (still > 95% on the test digits), trained once for this
    module in its own cache folder."""
    import gmgan.classifier

    monkeypatch.setattr(gmgan.classifier, "MIN_STEPS", 300)
    monkeypatch.setenv("GMGAN_CACHE", classifier_cache)


def hand_kl(counts: list, bins: int = 1000) -> float:
    """KL(p || uniform over bins) written out: sum_i p_i log(p_i * bins)."""
    total = sum(counts)
    return sum(c / total * math.log(c / total * bins) for c in counts)


def test_stacked_statistics_against_a_hand_count():
    # triples 123 x4, 456 x3, 789 x2, 0 x1, 999 x1: 5 modes of 1,000
    triples = [(1, 2, 3)] * 4 + [(4, 5, 6)] * 3 + [(7, 8, 9)] * 2 + [(0, 0, 0), (9, 9, 9)]
    stats = stacked_statistics(torch.tensor(triples), 10)
    assert stats["stacked_modes"] == 5
    # by hand: 4/11 log(4000/11) + 3/11 log(3000/11) + 2/11 log(2000/11) + 2 * 1/11 log(1000/11)
    #   = 2.14397 + 1.52950 + 0.94604 + 0.82010
    assert stats["stacked_kl"] == pytest.approx(5.439615, abs=1e-6)
    assert stats["stacked_kl"] == pytest.approx(hand_kl([4, 3, 2, 1, 1]), rel=1e-12)
    # (1, 2, 3) and (3, 2, 1) are different modes: the channel order counts
    assert stacked_statistics(torch.tensor([(1, 2, 3), (3, 2, 1)]), 10)["stacked_modes"] == 2
    with pytest.raises(ValueError, match="digit_labels"):
        stacked_statistics(torch.tensor([(1, 2, 10)]), 10)
    with pytest.raises(ValueError, match="shape"):
        stacked_statistics(torch.tensor([1, 2, 3]), 10)


def test_channel_accuracy_by_hand():
    true = torch.tensor([(1, 2, 3), (4, 5, 6), (7, 8, 9), (0, 0, 0)])
    predicted = torch.tensor([(1, 2, 3), (4, 0, 6), (7, 8, 0), (0, 0, 1)])   # 3 misreads, in channels 1, 2, 2
    result = channel_accuracy(predicted, true)
    assert result["classifier_channel_accuracy"] == [1.0, 0.75, 0.5]
    assert result["classifier_triple_accuracy"] == 0.25


def test_stacked_evaluation_of_known_real_triples(tmp_path, cached_classifier):
    """Samples built from real test digits with known labels: the evaluation's mode count and KL
    equal the hand count of the triples it was given (through the classifier, channel by channel)."""
    config = tiny_config(tmp_path, dataset="stacked-digits")
    dataset = load_dataset(config)
    classifier = classifier_for(config, dataset)
    digits, labels = dataset.test.base.images, dataset.test.base.labels
    predicted = classifier.predict(digits)[0].argmax(1)
    # one correctly read test digit of each class: the triples' labels are then known exactly
    first = {int(label): int(torch.nonzero((labels == label) & (predicted == label))[0]) for label in range(10)}
    wanted = [(3, 1, 4)] * 6 + [(1, 5, 9)] * 3 + [(2, 6, 5)] * 2 + [(3, 5, 8), (9, 7, 9), (0, 0, 0)]
    triples = torch.tensor([[first[a], first[b], first[c]] for a, b, c in wanted])
    samples = StackedImages(dataset.test.base, triples).get(torch.arange(len(wanted)))[0]
    assert samples.shape == (len(wanted), 3, 8, 8)
    metrics = image_metrics(config, dataset, samples)
    assert metrics["stacked_modes"] == 6
    assert metrics["stacked_kl"] == pytest.approx(hand_kl([6, 3, 2, 1, 1, 1]), rel=1e-12)
    # the classifier the counts rest on, per channel of the held-out real triples
    assert len(metrics["classifier_channel_accuracy"]) == 3
    assert min(metrics["classifier_channel_accuracy"]) > 0.95
    assert metrics["classifier_triple_accuracy"] <= min(metrics["classifier_channel_accuracy"])


def test_real_triples_reach_every_mode(tmp_path, cached_classifier):
    """26,000 held-out real triples through the same count: (nearly) all 1,000 modes, a KL near the
    sampling floor (999 / (2 * 26,000) = 0.019 for a perfect reader)."""
    config = tiny_config(tmp_path, dataset="stacked-digits")
    dataset = load_dataset(config)
    checks = stacked_classifier_checks(classifier_for(config, dataset), dataset.test, 10, 26000)
    assert checks["real_stacked_modes"] >= 990
    assert 0.01 < checks["real_stacked_kl"] < 0.1
    truth = dataset.test.base.labels[dataset.test.triples]
    assert stacked_statistics(truth, 10)["stacked_modes"] > 990   # 10,000 test triples cover the modes


def test_stacked_evaluation_end_to_end_on_a_tiny_run(tmp_path, cached_classifier):
    """A trained tiny run: the modes and KL it writes equal an independent count on its saved
    samples (set and Counter of the classifier's per-channel readings)."""
    trainer = Trainer(tiny_config(tmp_path, dataset="stacked-digits", steps=3, eval_samples=700,
                                  d_size="quarter", spectral_norm=True))
    metrics = trainer.run()
    samples = load_file(str(tmp_path / trainer.config.run_name / "samples.safetensors"))["samples"]
    assert samples.shape == (700, 3, 8, 8)
    classifier = classifier_for(trainer.config, trainer.dataset)
    readings = torch.stack([classifier.predict(samples[:, c:c + 1])[0].argmax(1) for c in range(3)], 1)
    counted = Counter(tuple(row) for row in readings.tolist())
    assert metrics["stacked_modes"] == len(counted)
    assert metrics["stacked_kl"] == pytest.approx(hand_kl(list(counted.values())), rel=1e-9)
    assert metrics["d_parameters"] == parameter_count(trainer.D)
    assert metrics["d_ratio"] == pytest.approx(0.25, abs=0.005)
    for key in ("fid", "parzen_mean", "real_stacked_kl"):
        assert math.isfinite(metrics[key]), key


@pytest.mark.parametrize("dataset, shape", [("stacked-digits", (3, 8, 8)), ("digits", (1, 8, 8))])
def test_d_size_parameter_ratios(tmp_path, dataset, shape):
    counts = {}
    for d_size in ("big", "half", "quarter"):
        config = build_config(dict(dataset=dataset, variant="gan", d_size=d_size, out_dir=str(tmp_path)))
        _, D = build_networks(config, shape, None, 1, 0)
        counts[d_size] = parameter_count(D)      # conv body + one-output head, counted on the real module
        assert D.widths["parameters"] == counts[d_size]
    assert D.widths["big_parameters"] == counts["big"]
    assert counts["half"] / counts["big"] == pytest.approx(0.5, abs=0.005)
    assert counts["quarter"] / counts["big"] == pytest.approx(0.25, abs=0.005)
    # the big D is today's default image D
    big = conv_discriminator_widths(shape[0], shape, 32, 256, "big")
    assert (big["channels"], big["hidden"]) == (32, 256)


def test_d_size_is_saved_and_fixed_across_resume(tmp_path):
    config = tiny_config(tmp_path, dataset="stacked-digits", d_size="half", spectral_norm=True, steps=2)
    trainer = Trainer(config)
    trainer.run(evaluate_end=False)
    again = Trainer.from_run_dir(trainer.run_dir)
    assert (again.config.d_size, again.config.spectral_norm) == ("half", True)
    assert parameter_count(again.D) == parameter_count(trainer.D)
    with pytest.raises(ConfigError, match="d_size"):
        Trainer.from_run_dir(trainer.run_dir, {"d_size": "quarter"})
    with pytest.raises(ConfigError, match="d_size"):
        build_config(dict(dataset="grid25", d_size="half"))     # the 2-D data's D is an MLP
    with pytest.raises(ConfigError, match="d_size"):
        build_config(dict(dataset="digits", d_size="tiny"))


def _normalized_layers(D):
    return [layer for layer in D.modules() if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear))
            and parametrize.is_parametrized(layer, "weight")]


@pytest.mark.parametrize("variant", ["gan", "mdgan"])
def test_spectral_norm_present_in_d_only_when_asked(tmp_path, variant):
    plain = Trainer(tiny_config(tmp_path, dataset="stacked-digits", variant=variant, run_name="plain"))
    assert _normalized_layers(plain.D) == []
    trainer = Trainer(tiny_config(tmp_path, dataset="stacked-digits", variant=variant, spectral_norm=True,
                                  minibatch_discrimination=True))
    layers = [layer for layer in trainer.D.modules() if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear))]
    assert len(layers) == 4 and _normalized_layers(trainer.D) == layers    # 2 conv, hidden, head
    assert not any(parametrize.is_parametrized(m) for m in trainer.G.modules())
    for _ in range(3):
        trainer.train_step()
    # a one-row (or 9-row) head: the power iteration's estimate is the top singular value, so the
    # effective weight has spectral norm 1
    head = trainer.D.head.weight.detach()
    assert torch.linalg.matrix_norm(head, ord=2) == pytest.approx(1.0, abs=0.05 if variant == "mdgan" else 1e-5)


def test_spectral_norm_and_d_size_resume_exactly(tmp_path):
    from test_train_resume import assert_identical, state

    changes = dict(dataset="stacked-digits", d_size="quarter", spectral_norm=True, steps=6, checkpoint_every=3)
    straight = Trainer(tiny_config(tmp_path, run_name="straight", **changes))
    straight.run(evaluate_end=False)
    interrupted = Trainer(tiny_config(tmp_path, run_name="resumed", **changes))
    interrupted.run(until=4, evaluate_end=False)
    resumed = Trainer.from_run_dir(str(tmp_path / "resumed"))
    resumed.run(evaluate_end=False)
    assert_identical(state(straight), state(resumed))


def test_compare_rows_with_options():
    assert row_settings("gan") == {"variant": "gan"}
    assert row_settings("gan+mbd") == {"variant": "gan", "minibatch_discrimination": True}
    assert row_settings("mdgan+sn+mbd") == {"variant": "mdgan", "spectral_norm": True,
                                            "minibatch_discrimination": True}
    with pytest.raises(ConfigError, match="unknown option 'bn'"):
        row_settings("gan+bn")


def test_stacked_preset():
    config = build_config({}, preset="stacked")
    assert (config.dataset, config.eval_samples, config.batch_size) == ("stacked-digits", 26000, 100)
    assert make_variant(config, 1000).d_out == 1

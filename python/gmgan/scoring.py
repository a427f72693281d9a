"""Evaluation of a trained generator, by the protocols of the papers' tables (docs/protocols.md).

2-D data (MD-GAN Tables 1-2): ``eval_samples`` (2,500) samples; a sample is high
quality when it lies within 3 std of its nearest mode; modes covered = modes that are the nearest
mode of at least one high-quality sample; ``reverse_kl`` = KL(p_gen || uniform) of the histogram
of high-quality samples over the modes (PacGAN), zero-count modes left out of the sum.

Images: a classifier trained on the real training split (gmgan.classifier) stands in for the
Inception network: IS and mIS of its softmax, FID of its 128-d features against the test split,
Parzen-window log-likelihood of the test split under the samples (sigma chosen on the validation
split), KID (the unbiased polynomial-kernel MMD^2 over subsets) and precision / recall / density /
coverage (k = 3) of the same features against the test split's, and a PNG of samples next to their
nearest training images (DeLiGAN's memorisation check).
Stacked digits (the published Stacked MNIST protocol, 26,000 samples): each channel is classified
by the digits classifier; modes = distinct predicted (a, b, c) triples of 1,000 and KL(label
histogram || uniform over the 1,000 triples), plus FID, KID and precision / recall of the
concatenated features. Every mode count rests on that classifier, so its accuracy on each channel
of the held-out real triples is reported too, with the modes and KL that the same count gives on
as many held-out real triples (``real_stacked_*``: what a perfect generator would score). Parzen
LL uses at most PARZEN_SAMPLES samples (the published protocol's 10,000).

The metrics themselves come from gmkernels.metrics; this module is the one place that calls them.
Its functions take what they use: the config, the dataset, the generator G and a sampler
``sample(n, generator, temperature) -> Batch`` (gmgan.trainer.Trainer.sample_fake).
"""
from __future__ import annotations

import csv
import json
import math
import os

import torch
from safetensors.torch import save_file

from gmkernels import metrics as kernel_metrics

from .classifier import metrics_classifier
from .config import Config, replace
from .data import Dataset, load_dataset
from .distributed import World, gather_rows
from .plots import image_grid, scatter_2d

HQ_THRESHOLD = 3.0   # in units of the mode std
PARZEN_SAMPLES = 10000
KID_SUBSETS, KID_SUBSET_SIZE = 100, 1000   # torch-fidelity's defaults
PR_NEIGHBOURS = 3                         # Kynkaanniemi et al.'s k
_EVAL_SEED = 7_777_777
_REAL_TRIPLES_SEED = 26_000


def histogram_kl_to_uniform(counts: torch.Tensor) -> float | None:
    """KL(p || uniform) of a histogram, zero bins left out; None when the histogram is empty."""
    total = counts.sum()
    if total == 0:
        return None
    p = counts[counts > 0].double() / total
    return float((p * torch.log(p * counts.numel())).sum())


def mode_statistics(samples: torch.Tensor, means: torch.Tensor, std: float, threshold: float = HQ_THRESHOLD) -> dict:
    """modes covered, % high-quality samples, reverse KL, per-mode counts (see module docstring)."""
    distance = torch.cdist(samples.double(), means.double())
    nearest = distance.min(1)
    high_quality = nearest.values <= threshold * std
    counts = torch.bincount(nearest.indices[high_quality], minlength=means.shape[0])
    return {"modes": int((counts > 0).sum()), "high_quality": 100.0 * float(high_quality.double().mean()),
            "reverse_kl": histogram_kl_to_uniform(counts), "mode_counts": counts.tolist()}


def stacked_statistics(digit_labels: torch.Tensor, digit_classes: int) -> dict:
    """digit_labels (n, 3): modes covered of digit_classes^3 and KL(p_gen || uniform)."""
    if digit_labels.dim() != 2 or digit_labels.shape[1] != 3:
        raise ValueError(f"digit_labels must have shape (n, 3), got {tuple(digit_labels.shape)}")
    if digit_labels.numel() and not 0 <= int(digit_labels.min()) <= int(digit_labels.max()) < digit_classes:
        raise ValueError(f"digit_labels must lie in [0, {digit_classes})")
    mode = (digit_labels * torch.tensor([digit_classes ** 2, digit_classes, 1])).sum(1)
    counts = torch.bincount(mode, minlength=digit_classes ** 3)
    return {"stacked_modes": int((counts > 0).sum()), "stacked_kl": histogram_kl_to_uniform(counts)}


def channel_accuracy(predicted: torch.Tensor, true: torch.Tensor) -> dict:
    """Per-channel accuracy of predicted (n, 3) digit labels, and the share of triples read right."""
    correct = predicted == true
    return {"classifier_channel_accuracy": correct.double().mean(0).tolist(),
            "classifier_triple_accuracy": float(correct.all(1).double().mean())}


def stacked_classifier_checks(classifier, test, digit_classes: int, n: int) -> dict:
    """What the stacked counts rest on: the classifier's accuracy on each channel of the held-out
    real test triples, and the modes / KL it reports for n triples of held-out digits (drawn
    with a fixed generator, as many as the generated samples)."""
    predicted, _ = _channels(classifier, test.get(torch.arange(len(test)))[0])
    results = channel_accuracy(predicted, test.base.labels[test.triples])
    generator = torch.Generator().manual_seed(_REAL_TRIPLES_SEED)
    triples = torch.randint(0, len(test.base), (n, 3), generator=generator)
    real, _ = _channels(classifier, test.base.images[triples].squeeze(2))
    reference = stacked_statistics(real, digit_classes)
    results.update(real_stacked_modes=reference["stacked_modes"], real_stacked_kl=reference["stacked_kl"])
    return results


@torch.no_grad()
def generate(config: Config, G: torch.nn.Module, sample, n: int, *, world: World | None = None,
             temperature: float | None = None):
    """n samples (x, component, labels) on the CPU, drawn by ``sample`` with a generator reserved
    for evaluation (so evaluating never moves the training RNG), split over ranks and gathered."""
    world = world or World()
    temperature = config.temperature if temperature is None else temperature
    per_rank = math.ceil(n / world.size)
    device = next(G.parameters()).device
    generator = torch.Generator(device=device).manual_seed(_EVAL_SEED + config.seed * 1009 + world.rank)
    was_training = G.training
    G.eval()
    parts = []
    for start in range(0, per_rank, 2500):
        parts.append(sample(min(2500, per_rank - start), generator=generator, temperature=temperature))
    G.train(was_training)
    x = gather_rows(torch.cat([b.x for b in parts]), world)[:n].cpu()
    component = labels = None
    if parts[0].component is not None:
        component = gather_rows(torch.cat([b.component for b in parts]), world)[:n].cpu()
    if parts[0].labels is not None:
        labels = gather_rows(torch.cat([b.labels for b in parts]), world)[:n].cpu()
    return x, component, labels


def _pair(prefix: str, pair) -> dict:
    """{prefix: mean, prefix_std: std} of a metric's (mean, std)."""
    return {prefix: float(pair[0]), prefix + "_std": float(pair[1])}


def classifier_for(config: Config, dataset: Dataset):
    """The cached metrics classifier: digits for stacked digits (applied per channel), else the
    dataset's own, always trained on the full real training split."""
    base = "digits" if config.dataset == "stacked-digits" else config.dataset
    data = dataset
    if base != config.dataset or config.train_per_class:
        data = load_dataset(replace(config, dataset=base, train_per_class=0))
    train_x, train_y = data.train.get(torch.arange(len(data.train)))
    test_x, test_y = data.test.get(torch.arange(len(data.test)))
    return metrics_classifier(f"{base}-d{config.data_seed}", (train_x, train_y), (test_x, test_y),
                              int(train_y.max()) + 1, progress=config.progress)


def _channels(classifier, images: torch.Tensor):
    """Per-channel predictions of a 1-channel classifier: (labels (n, C), features (n, C * 128))."""
    labels, features = [], []
    for channel in range(images.shape[1]):
        probs, hidden = classifier.predict(images[:, channel:channel + 1])
        labels.append(probs.argmax(1))
        features.append(hidden)
    return torch.stack(labels, 1), torch.cat(features, 1)


def feature_set_metrics(features: torch.Tensor, test_features: torch.Tensor) -> dict:
    """KID (torch-fidelity's KID_SUBSETS subsets of up to KID_SUBSET_SIZE rows) and precision,
    recall, density and coverage (k = PR_NEIGHBOURS) of the samples' classifier features against
    the test split's: the features FID compares."""
    size = min(KID_SUBSET_SIZE, len(features), len(test_features))
    kid = kernel_metrics.kernel_inception_distance(features, test_features, subsets=KID_SUBSETS, subset_size=size,
                                                   generator=_EVAL_SEED)
    pr = kernel_metrics.precision_recall(test_features, features, k=PR_NEIGHBOURS)
    return {"kid": kid.mean, "kid_std": kid.std, "precision": pr.precision, "recall": pr.recall,
            "density": pr.density, "coverage": pr.coverage}


def nearest_training_images(samples: torch.Tensor, train: torch.Tensor, count: int = 3) -> torch.Tensor:
    """(len(samples), count) indices of the nearest training images in L2 (chunked)."""
    flat_samples = samples.flatten(1).double()
    best_distance = best_index = None
    for start in range(0, train.shape[0], 8192):
        chunk = train[start:start + 8192].flatten(1).double()
        distance = torch.cdist(flat_samples, chunk)
        if best_distance is not None:
            distance = torch.cat([best_distance, distance], 1)
            index = torch.cat([best_index, torch.arange(start, start + chunk.shape[0]).expand(len(samples), -1)], 1)
        else:
            index = torch.arange(start, start + chunk.shape[0]).expand(len(samples), -1)
        best_distance, order = distance.topk(min(count, distance.shape[1]), largest=False)
        best_index = index.gather(1, order)
    return best_index


def image_metrics(config: Config, dataset: Dataset, samples: torch.Tensor) -> dict:
    """IS / mIS (improved-gan's 10 splits; DeLiGAN's per-class mIS) or the stacked modes, FID,
    KID and precision / recall / density / coverage against the test split and Parzen LL of the
    test split (sigma chosen on the validation split)."""
    results: dict = {}
    classifier = classifier_for(config, dataset)
    results["classifier_test_accuracy"] = classifier.test_accuracy
    test_x, _ = dataset.test.get(torch.arange(len(dataset.test)))
    validation_x, _ = dataset.validation.get(torch.arange(len(dataset.validation)))
    if dataset.digit_classes:
        digit_labels, features = _channels(classifier, samples)
        results.update(stacked_statistics(digit_labels, dataset.digit_classes))
        results.update(stacked_classifier_checks(classifier, dataset.test, dataset.digit_classes, len(samples)))
        _, test_features = _channels(classifier, test_x)
    else:
        probs, features = classifier.predict(samples)
        _, test_features = classifier.predict(test_x)
        results.update(_pair("is", kernel_metrics.inception_score(probs, splits=10)))
        results.update(_pair("mis", kernel_metrics.modified_inception_score(probs, mode="per_class")))
    results["fid"] = float(kernel_metrics.frechet_distance(features.double(), test_features.double()))
    results.update(feature_set_metrics(features.double(), test_features.double()))
    parzen = kernel_metrics.parzen_log_likelihood(samples[:PARZEN_SAMPLES].flatten(1).double(),
                                                  test_x.flatten(1).double(),
                                                  validation=validation_x.flatten(1).double(),
                                                  progress=config.progress)
    results.update(parzen_mean=float(parzen.mean), parzen_stderr=float(parzen.stderr),
                   parzen_sigma=float(parzen.sigma))
    return results


def neighbours_figure(dataset: Dataset, samples: torch.Tensor, path: str, rows: int = 8, count: int = 3) -> str:
    """Each row: a generated sample, then its `count` nearest training images."""
    train_x, _ = dataset.get(torch.arange(len(dataset)))
    shown = samples[:rows]
    index = nearest_training_images(shown, train_x, count)
    tiles = torch.cat([torch.cat([shown[i:i + 1], train_x[index[i]]]) for i in range(rows)])
    return image_grid(tiles, path, columns=count + 1, title="sample | nearest training images")


def write_metrics(run_dir: str, metrics: dict) -> None:
    with open(os.path.join(run_dir, "metrics.json"), "w") as handle:
        json.dump(metrics, handle, indent=1)
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) or v is None}
    with open(os.path.join(run_dir, "metrics.csv"), "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(scalars.keys())
        writer.writerow(scalars.values())


def evaluate_generator(config: Config, dataset: Dataset, G: torch.nn.Module, sample, *, step: int,
                       world: World | None = None, run_dir: str | None = None, plots: bool = True,
                       write: bool = False, temperature: float | None = None, extra: dict | None = None) -> dict:
    """Metrics of generator G (module docstring); rank 0 computes them from the samples of every
    rank, other ranks return {}. ``plots`` and ``write`` put their files in run_dir; ``extra``
    (e.g. the networks' parameter counts) is recorded with the metrics."""
    world = world or World()
    temperature = config.temperature if temperature is None else temperature
    samples, _, _ = generate(config, G, sample, config.eval_samples, world=world, temperature=temperature)
    if not world.is_main:
        return {}
    if (plots or write) and run_dir is None:
        raise ValueError("run_dir is needed to write plots or metrics")
    metrics: dict = {"step": step, "variant": config.variant, "dataset": config.dataset, "seed": config.seed,
                     "eval_samples": config.eval_samples, "temperature": temperature, **(extra or {})}
    if dataset.is_2d:
        metrics.update(mode_statistics(samples, dataset.modes, dataset.mode_std))
        if plots:
            metrics["samples_png"] = scatter_2d(
                samples, dataset.modes, os.path.join(run_dir, "samples.png"),
                f"{config.variant} seed {config.seed}: {metrics['modes']} modes, {metrics['high_quality']:.1f}% hq")
    else:
        metrics.update(image_metrics(config, dataset, samples))
        if plots:
            metrics["samples_png"] = image_grid(samples[:100], os.path.join(run_dir, "samples.png"),
                                                title=f"{config.variant} seed {config.seed}")
            metrics["neighbours_png"] = neighbours_figure(dataset, samples, os.path.join(run_dir, "neighbours.png"))
    if write:
        write_metrics(run_dir, metrics)
        save_file({"samples": samples.contiguous()}, os.path.join(run_dir, "samples.safetensors"))
    return metrics

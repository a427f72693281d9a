"""Datasets: the 2-D mixtures, scikit-learn's 8x8 digits, stacked digits, and file-based
MNIST / Fashion-MNIST / CIFAR-10. Everything is scaled to [-1, 1] (images) and held in memory.

A :class:`Dataset` gives ``len``, ``get(index) -> (x, labels)`` and ``labels``; image datasets also
carry a validation split (for Parzen's bandwidth) and a test split (for the metrics' classifier
and Parzen's score).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..config import Config
from .files import DataError, load_cifar10, load_idx_dataset
from .toy import TOY, toy_data

__all__ = ["DataError", "Dataset", "StackedImages", "load_dataset"]


class TensorImages:
    """Images (N, C, H, W) in [-1, 1] with int64 labels."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return self.images.shape[0]

    def get(self, index: torch.Tensor):
        return self.images[index], self.labels[index]

    @property
    def shape(self) -> tuple:
        return tuple(self.images.shape[1:])


class StackedImages:
    """Three single-channel images stacked as channels (Stacked MNIST): triple (a, b, c) of base
    indices gives a (3, H, W) image labelled 100 y_a + 10 y_b + y_c, one of 1,000 modes. Images
    are assembled on access, so 128,000 triples cost 3 int64 each."""

    def __init__(self, base: TensorImages, triples: torch.Tensor):
        self.base, self.triples = base, triples
        base_labels = base.labels[triples]
        self.labels = base_labels[:, 0] * 100 + base_labels[:, 1] * 10 + base_labels[:, 2]

    def __len__(self) -> int:
        return self.triples.shape[0]

    def get(self, index: torch.Tensor):
        triples = self.triples[index]
        return self.base.images[triples].squeeze(2), self.labels[index]

    @property
    def shape(self) -> tuple:
        return (3,) + tuple(self.base.images.shape[2:])


class TensorPoints(TensorImages):
    """2-D points (N, 2) with their mode labels."""

    @property
    def shape(self) -> tuple:
        return (2,)


@dataclass
class Dataset:
    name: str
    train: TensorImages | StackedImages
    num_classes: int
    validation: TensorImages | StackedImages | None = None
    test: TensorImages | StackedImages | None = None
    modes: torch.Tensor | None = None      # 2-D mode means (M, 2)
    mode_std: float | None = None
    digit_classes: int | None = None       # stacked data: classes per channel

    def __len__(self) -> int:
        return len(self.train)

    def get(self, index: torch.Tensor):
        return self.train.get(index)

    @property
    def labels(self) -> torch.Tensor:
        return self.train.labels

    @property
    def sample_shape(self) -> tuple:
        return self.train.shape

    @property
    def is_2d(self) -> bool:
        return self.modes is not None


def to_unit_range(images: torch.Tensor, top: float) -> torch.Tensor:
    """[0, top] -> [-1, 1] as float32."""
    return images.float() * (2.0 / top) - 1.0


def _stratified_split(labels: np.ndarray, fractions, seed: int):
    """Index arrays for consecutive fractions of every class (shuffled with seed)."""
    rng = np.random.default_rng(seed)
    parts = [[] for _ in fractions]
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        bounds = np.round(np.cumsum((0,) + tuple(fractions)) * len(members)).astype(int)
        for part, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
            parts[part].append(members[start:stop])
    return [torch.from_numpy(np.sort(np.concatenate(p))) for p in parts]


def _per_class(labels: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """The first `count` indices of each class in a seeded shuffle (DeLiGAN's limited data)."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(labels.numel(), generator=generator)
    chosen = [order[labels[order] == label][:count] for label in labels.unique()]
    return torch.sort(torch.cat(chosen)).values


def _digits(config: Config):
    """sklearn's 8x8 digits (1,797 images, 10 classes, values 0..16) split 70/10/20 per class
    into train / validation / test with data_seed."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = to_unit_range(torch.from_numpy(bunch.images), 16.0).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    train, validation, test = _stratified_split(bunch.target, (0.7, 0.1, 0.2), config.data_seed)
    return (TensorImages(images[train], labels[train]), TensorImages(images[validation], labels[validation]),
            TensorImages(images[test], labels[test]))


def _stack(base: TensorImages, count: int, generator: torch.Generator) -> StackedImages:
    return StackedImages(base, torch.randint(0, len(base), (count, 3), generator=generator))


def _from_files(config: Config):
    if config.dataset == "cifar10":
        (train_x, train_y), (test_x, test_y) = load_cifar10(config.data_dir)
    else:
        (train_x, train_y), (test_x, test_y) = load_idx_dataset(config.data_dir)
    train_x, test_x = to_unit_range(train_x, 255.0), to_unit_range(test_x, 255.0)
    # Validation: the last sixth of the training file (MNIST: 10,000 of 60,000, as in Goodfellow's
    # Parzen protocol); the generator trains on the rest.
    cut = train_x.shape[0] - max(1, train_x.shape[0] // 6)
    return (TensorImages(train_x[:cut], train_y[:cut]), TensorImages(train_x[cut:], train_y[cut:]),
            TensorImages(test_x, test_y))


def load_dataset(config: Config) -> Dataset:
    """The dataset named by config.dataset (see the module docstring of each source)."""
    if config.dataset in TOY:
        x, mode, means, std = toy_data(config.dataset, config.data_seed)
        return Dataset(config.dataset, TensorPoints(x, mode), means.shape[0], modes=means, mode_std=std)
    if config.dataset in ("digits", "stacked-digits"):
        train, validation, test = _digits(config)
    else:
        train, validation, test = _from_files(config)
    if config.train_per_class:
        train = TensorImages(*train.get(_per_class(train.labels, config.train_per_class, config.data_seed)))
    num_classes = int(max(train.labels.max(), test.labels.max())) + 1
    if config.dataset != "stacked-digits":
        return Dataset(config.dataset, train, num_classes, validation, test)
    # Stacked digits: training triples from the training digits, validation / test triples from
    # the held-out digits, so no test image appears in training.
    generator = torch.Generator().manual_seed(config.data_seed)
    return Dataset(config.dataset, _stack(train, config.stacked_size, generator), num_classes ** 3,
                   _stack(validation, 1000, generator), _stack(test, 10000, generator),
                   digit_classes=num_classes)


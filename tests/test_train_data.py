"""Datasets: the toy constants, digits, stacked digits, and the file loaders on generated files."""
import gzip
import math
import pickle
import struct

import numpy as np
import pytest
import torch
from train_support import tiny_config

from gmgan.config import ConfigError
from gmgan.data import DataError, load_dataset
from gmgan.data.files import read_idx
from gmgan.data.toy import GRID25_MEANS, RING8_MEANS


def test_grid25_is_25_modes_of_400_points_at_std_005(tmp_path):
    data = load_dataset(tiny_config(tmp_path, dataset="grid25"))
    assert len(data) == 10000 and data.mode_std == 0.05
    assert sorted(set(GRID25_MEANS.flatten().tolist())) == [-4.0, -2.0, 0.0, 2.0, 4.0]
    assert torch.equal(torch.bincount(data.labels), torch.full((25,), 400))
    spread = (data.train.images - data.modes[data.labels]).std()
    assert abs(float(spread) - 0.05) < 0.002


def test_ring8_has_eight_distinct_modes_on_the_unit_circle(tmp_path):
    data = load_dataset(tiny_config(tmp_path, dataset="ring8"))
    assert torch.allclose(RING8_MEANS.norm(dim=1), torch.ones(8))
    assert torch.cdist(RING8_MEANS, RING8_MEANS).add(torch.eye(8)).min() > 0.7   # 2 sin(pi/8) = 0.77
    assert torch.equal(torch.bincount(data.labels), torch.full((8,), 1250)) and data.mode_std == 0.01


def test_toy_data_depends_on_data_seed_only(tmp_path):
    a = load_dataset(tiny_config(tmp_path, seed=0)).train.images
    b = load_dataset(tiny_config(tmp_path, seed=5)).train.images
    c = load_dataset(tiny_config(tmp_path, data_seed=1)).train.images
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_digits_are_scaled_to_unit_range_and_split_without_overlap(tmp_path):
    data = load_dataset(tiny_config(tmp_path, dataset="digits"))
    assert data.train.images.shape[1:] == (1, 8, 8) and data.num_classes == 10
    assert data.train.images.min() == -1 and data.train.images.max() == 1
    assert len(data.train) + len(data.validation) + len(data.test) == 1797
    limited = load_dataset(tiny_config(tmp_path, dataset="digits", train_per_class=5))
    assert torch.equal(torch.bincount(limited.labels), torch.full((10,), 5))


def test_stacked_digits_label_is_the_three_channel_digits(tmp_path):
    data = load_dataset(tiny_config(tmp_path, dataset="stacked-digits", stacked_size=300))
    x, labels = data.get(torch.arange(5))
    assert x.shape == (5, 3, 8, 8) and data.num_classes == 1000 and data.digit_classes == 10
    base = data.train.base
    for row in range(5):
        triple = data.train.triples[row]
        assert torch.equal(x[row], base.images[triple, 0])
        assert labels[row] == base.labels[triple[0]] * 100 + base.labels[triple[1]] * 10 + base.labels[triple[2]]


def write_idx(path, array: np.ndarray, compress=False):
    codes = {np.uint8: 0x08}
    header = bytes([0, 0, codes[array.dtype.type], array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    opener = gzip.open if compress else open
    with opener(path, "wb") as handle:
        handle.write(header + array.tobytes())


@pytest.mark.parametrize("compress", [False, True])
def test_idx_loader_reads_generated_mnist_files(tmp_path, compress):
    rng = np.random.default_rng(0)
    images = {"train": rng.integers(0, 256, (24, 28, 28), dtype=np.uint8),
              "t10k": rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)}
    labels = {"train": np.arange(24, dtype=np.uint8) % 10, "t10k": np.arange(6, dtype=np.uint8)}
    suffix = ".gz" if compress else ""
    for split in ("train", "t10k"):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte{suffix}", images[split], compress)
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte{suffix}", labels[split], compress)
    np.testing.assert_array_equal(read_idx(str(tmp_path / f"train-images-idx3-ubyte{suffix}")), images["train"])
    data = load_dataset(tiny_config(tmp_path, dataset="fashion-mnist", data_dir=str(tmp_path), arch="conv",
                                    z_dim=4))
    assert len(data) == 20 and len(data.validation) == 4 and len(data.test) == 6   # last sixth validates
    expected = torch.from_numpy(images["train"][:20].astype(np.float32)) * (2 / 255) - 1
    assert torch.allclose(data.train.images[:, 0], expected)
    assert torch.equal(data.test.labels, torch.arange(6))


def test_idx_loader_reports_missing_and_corrupt_files(tmp_path):
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        load_dataset(tiny_config(tmp_path, dataset="mnist", data_dir=str(tmp_path), arch="conv"))
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(DataError, match="bad magic"):
        read_idx(str(tmp_path / "bad"))


def write_cifar_batch(path, count, offset):
    data = (np.arange(count * 3072, dtype=np.int64).reshape(count, 3072) + offset) % 256
    with open(path, "wb") as handle:
        pickle.dump({b"data": data.astype(np.uint8), b"labels": [(i + offset) % 10 for i in range(count)],
                     b"batch_label": b"generated"}, handle, protocol=2)
    return data.astype(np.uint8)


def test_cifar_loader_reads_generated_python_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    first = write_cifar_batch(folder / "data_batch_1", 6, 0)
    write_cifar_batch(folder / "data_batch_2", 6, 7)
    write_cifar_batch(folder / "test_batch", 4, 3)
    data = load_dataset(tiny_config(tmp_path, dataset="cifar10", data_dir=str(tmp_path), arch="conv"))
    assert data.sample_shape == (3, 32, 32) and len(data) + len(data.validation) == 12 and len(data.test) == 4
    expected = torch.from_numpy(first[0].reshape(3, 32, 32).astype(np.float32)) * (2 / 255) - 1
    assert torch.allclose(data.train.images[0], expected)
    assert data.labels[:6].tolist() == [0, 1, 2, 3, 4, 5]


class Payload:
    def __reduce__(self):
        return (math.factorial, (5,))


def test_cifar_loader_refuses_arbitrary_pickled_objects(tmp_path):
    with open(tmp_path / "data_batch_1", "wb") as handle:
        pickle.dump({b"data": Payload(), b"labels": []}, handle)
    write_cifar_batch(tmp_path / "test_batch", 2, 0)
    with pytest.raises(DataError, match="refusing to unpickle math.factorial"):
        load_dataset(tiny_config(tmp_path, dataset="cifar10", data_dir=str(tmp_path), arch="conv"))


def test_missing_data_dir_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        tiny_config(tmp_path, dataset="mnist", data_dir=str(tmp_path / "absent"))

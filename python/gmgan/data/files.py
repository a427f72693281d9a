"""Loaders for datasets kept as files in --data-dir; nothing is downloaded.

MNIST and Fashion-MNIST: the four IDX files under their usual names (train-images-idx3-ubyte,
train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte), plain or .gz.
CIFAR-10: the python batches (data_batch_1..5, test_batch), in --data-dir or its
cifar-10-batches-py/ folder. Those batches are pickles by format: they are read with an
unpickler that only admits the numpy array reconstruction they need, never arbitrary objects.
"""
from __future__ import annotations

import gzip
import io
import os
import pickle
import struct

import numpy as np
import torch

from ..config import ConfigError


class DataError(ConfigError):
    """Missing or malformed data files."""


_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str) -> np.ndarray:
    """An IDX file (LeCun's format: magic 0x0000 dtype ndim, big-endian int32 sizes, data)."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as handle:
        content = handle.read()
    if len(content) < 4 or content[0] != 0 or content[1] != 0 or content[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number)")
    ndim = content[3]
    sizes = struct.unpack(f">{ndim}i", content[4:4 + 4 * ndim])
    dtype = np.dtype(_IDX_DTYPES[content[2]])
    expected = int(np.prod(sizes)) * dtype.itemsize
    body = content[4 + 4 * ndim:]
    if len(body) != expected:
        raise DataError(f"{path} holds {len(body)} data bytes, its header says {expected}")
    return np.frombuffer(body, dtype=dtype).reshape(sizes)


def _find(data_dir: str, name: str) -> str:
    for candidate in (name, name + ".gz", name.replace("-idx", ".idx")):
        path = os.path.join(data_dir, candidate)
        if os.path.isfile(path):
            return path
    raise DataError(f"{os.path.join(data_dir, name)}[.gz] not found (MNIST-style IDX files expected)")


def load_idx_dataset(data_dir: str):
    """((train images, train labels), (test images, test labels)) as uint8 (N, 1, 28, 28) / int64."""
    splits = []
    for prefix in ("train", "t10k"):
        images = read_idx(_find(data_dir, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(_find(data_dir, f"{prefix}-labels-idx1-ubyte"))
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise DataError(f"{prefix} images {images.shape} and labels {labels.shape} do not match")
        splits.append((torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))))
    return tuple(splits)


class _ArrayUnpickler(pickle.Unpickler):
    """Admits only what a CIFAR batch holds: dicts, lists, bytes, numbers and numpy arrays
    (``_codecs.encode`` is how protocol-2 pickles written by Python 3 spell bytes)."""

    ALLOWED = {("_codecs", "encode"), ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise DataError(f"refusing to unpickle {module}.{name} from a CIFAR batch file")


def _read_cifar_batch(path: str):
    with open(path, "rb") as handle:
        try:
            batch = _ArrayUnpickler(io.BytesIO(handle.read()), encoding="bytes").load()
        except DataError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError) as error:
            raise DataError(f"{path} is not a CIFAR-10 python batch: {error}") from None
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise DataError(f"{path} lacks 'data' or 'labels'")
    data = np.asarray(batch["data"], dtype=np.uint8)
    labels = np.asarray(batch["labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != labels.shape[0]:
        raise DataError(f"{path}: data {data.shape} and labels {labels.shape} are not CIFAR-10 rows")
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels)


def load_cifar10(data_dir: str):
    """((train images, labels), (test images, labels)) as uint8 (N, 3, 32, 32) / int64."""
    folder = os.path.join(data_dir, "cifar-10-batches-py")
    folder = folder if os.path.isdir(folder) else data_dir
    train_files = [os.path.join(folder, f"data_batch_{i}") for i in range(1, 6)]
    test_file = os.path.join(folder, "test_batch")
    present = [p for p in train_files if os.path.isfile(p)]
    if not present:
        raise DataError(f"no CIFAR-10 batches (data_batch_1..5) in {folder}")
    if not os.path.isfile(test_file):
        raise DataError(f"{test_file} not found")
    parts = [_read_cifar_batch(p) for p in present]
    train = (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
    return train, _read_cifar_batch(test_file)

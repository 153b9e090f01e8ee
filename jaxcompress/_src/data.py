"""Datasets: scikit-learn's embedded digits, MNIST from local IDX files or TFDS.

Every loader returns a :class:`Dataset` of numpy arrays: images as float32 in
``[0, 1]`` with shape ``(N, H, W, 1)`` and labels as int32.
"""

from __future__ import annotations

import gzip
import os
import pathlib
import zlib
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

__all__ = ["MNIST_ENV", "Dataset", "batches", "digits", "mnist", "mnist_idx", "mnist_tfds"]

MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}
MNIST_ENV = "JAXCOMPRESS_MNIST_DIR"  # a directory holding the four IDX files


class Dataset(NamedTuple):
    """A train/test split of images and integer labels (numpy)."""

    x_train: np.ndarray  # (N, H, W, 1) float32 in [0, 1]
    y_train: np.ndarray  # (N,) int32
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def num_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_test.max())) + 1


def digits(*, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1,797 images), split at random.

    Works offline anywhere scikit-learn is installed (``pip install
    'jaxcompress[examples]'``).
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"`test_fraction` must lie in (0, 1), got {test_fraction!r}.")
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("The digits dataset needs scikit-learn: pip install 'jaxcompress[examples]'.") from e
    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[..., None]
    y = bunch.target.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = round(len(x) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return Dataset(x[train], y[train], x[test], y[test])


def _read_idx(path: pathlib.Path, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes with ``ndim`` dimensions (gzipped if its name ends in .gz)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{path} cannot be read as {'gzip' if path.suffix == '.gz' else 'a file'}: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes (bad magic number).")
    if raw[3] != ndim:
        raise ValueError(f"{path} holds an IDX array of rank {raw[3]}, expected rank {ndim} (images 3, labels 1).")
    header = 4 + 4 * ndim
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise ValueError(f"{path} is truncated or padded: {len(raw)} bytes, expected {expected} for shape {dims}.")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def mnist_idx(directory: str | os.PathLike) -> Dataset:
    """MNIST from the four original IDX files (gzipped) in ``directory``."""
    directory = pathlib.Path(directory)
    missing = [name for name in MNIST_FILES.values() if not (directory / name).exists()]
    if missing:
        raise FileNotFoundError(f"MNIST directory {str(directory)!r} lacks {missing}.")
    arrays = {key: _read_idx(directory / name, 3 if key.startswith("x") else 1) for key, name in MNIST_FILES.items()}
    for split in ("train", "test"):
        if len(arrays[f"x_{split}"]) != len(arrays[f"y_{split}"]):
            raise ValueError(f"MNIST {split} images and labels differ in length in {directory}.")
    return Dataset(
        (arrays["x_train"].astype(np.float32) / 255.0)[..., None],
        arrays["y_train"].astype(np.int32),
        (arrays["x_test"].astype(np.float32) / 255.0)[..., None],
        arrays["y_test"].astype(np.int32),
    )


def mnist_tfds(*, data_dir: str | None = None) -> Dataset:
    """MNIST through TFDS' random-access data source (needs it prepared or mocked)."""
    import tensorflow_datasets as tfds

    def load(split: str) -> tuple[np.ndarray, np.ndarray]:
        source = tfds.data_source("mnist", split=split, data_dir=data_dir)
        records = [source[i] for i in range(len(source))]
        x = np.stack([np.asarray(r["image"]) for r in records]).astype(np.float32) / 255.0
        y = np.asarray([r["label"] for r in records], dtype=np.int32)
        return x.reshape(len(records), 28, 28, 1), y

    x_train, y_train = load("train")
    x_test, y_test = load("test")
    return Dataset(x_train, y_train, x_test, y_test)


def mnist(source: str | os.PathLike | None = None) -> Dataset:
    """MNIST from ``source``: a directory of the four IDX files, ``"tfds"``, or ``None``.

    ``None`` reads the directory named by ``$JAXCOMPRESS_MNIST_DIR`` when it is
    set, else TFDS (which needs the dataset prepared, or mocked in tests).
    """
    if source == "tfds":
        return mnist_tfds()
    if source is not None:
        return mnist_idx(source)
    directory = os.environ.get(MNIST_ENV)
    return mnist_idx(directory) if directory else mnist_tfds()


def batches(
    x: np.ndarray, y: np.ndarray, batch_size: int, *, seed: int = 0, drop_last: bool = True
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """An endless stream of shuffled ``(x, y)`` batches, reshuffled every epoch."""
    if batch_size < 1 or (drop_last and batch_size > len(x)):
        raise ValueError(f"`batch_size` must lie in [1, {len(x)}], got {batch_size}.")
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(x))
        stop = len(x) - batch_size + 1 if drop_last else len(x)
        for start in range(0, stop, batch_size):
            idx = order[start : start + batch_size]
            yield x[idx], y[idx]

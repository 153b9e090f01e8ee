import gzip
import pathlib

import numpy as np
import pytest
from helpers import local_mnist

from jaxcompress import data


def write_idx(path: pathlib.Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def fake_mnist(directory: pathlib.Path, n_train=12, n_test=5) -> dict:
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, 28, 28)),
        "y_train": rng.integers(0, 10, n_train),
        "x_test": rng.integers(0, 256, (n_test, 28, 28)),
        "y_test": rng.integers(0, 10, n_test),
    }
    for key, name in data.MNIST_FILES.items():
        write_idx(directory / name, arrays[key])
    return arrays


def test_digits():
    ds = data.digits()
    assert ds.x_train.shape[1:] == (8, 8, 1) and ds.x_train.dtype == np.float32
    assert len(ds.x_train) + len(ds.x_test) == 1797
    assert ds.x_train.min() >= 0.0 and ds.x_train.max() <= 1.0
    assert ds.num_classes == 10


def test_mnist_idx_reader(tmp_path):
    arrays = fake_mnist(tmp_path)
    ds = data.mnist(tmp_path)
    np.testing.assert_allclose(ds.x_train[..., 0], arrays["x_train"] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.y_test, arrays["y_test"])
    assert ds.x_test.shape == (5, 28, 28, 1)


def test_mnist_idx_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="lacks"):
        data.mnist_idx(tmp_path)
    fake_mnist(tmp_path)
    name = tmp_path / data.MNIST_FILES["x_test"]
    with gzip.open(name) as f:
        raw = f.read()
    with gzip.open(name, "wb") as f:
        f.write(raw[:-10])
    with pytest.raises(ValueError, match="truncated"):
        data.mnist_idx(tmp_path)


def test_mnist_idx_of_the_wrong_rank_or_a_corrupt_gzip_is_refused_naming_the_file(tmp_path):
    fake_mnist(tmp_path)
    images = tmp_path / data.MNIST_FILES["x_test"]
    write_idx(images, np.zeros((6, 1), np.uint8))  # a rank-2 array where images (rank 3) belong
    with pytest.raises(ValueError, match=r"t10k-images.*rank 2, expected rank 3"):
        data.mnist_idx(tmp_path)
    fake_mnist(tmp_path)
    labels = tmp_path / data.MNIST_FILES["y_train"]
    labels.write_bytes(b"\x1f\x8b" + bytes(40))  # a gzip header, then garbage
    with pytest.raises(ValueError, match=r"train-labels.*cannot be read as gzip"):
        data.mnist_idx(tmp_path)


def test_mnist_through_tfds_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=6):
        ds = data.mnist("tfds")
    assert ds.x_train.shape == (6, 28, 28, 1) and ds.y_train.dtype == np.int32


def test_mnist_source_from_the_environment(tmp_path, monkeypatch):
    arrays = fake_mnist(tmp_path)
    monkeypatch.setenv(data.MNIST_ENV, str(tmp_path))
    np.testing.assert_array_equal(data.mnist().y_train, arrays["y_train"])
    monkeypatch.delenv(data.MNIST_ENV)
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=3):  # no directory named: TFDS
        assert data.mnist().x_test.shape == (3, 28, 28, 1)


def test_real_mnist_when_present():
    found = local_mnist()
    if found is None:
        pytest.skip(f"no local MNIST (set {data.MNIST_ENV} or place it in ../shared/data/mnist)")
    ds = data.mnist(found)
    assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
    assert np.bincount(ds.y_test).tolist()[:3] == [980, 1135, 1032]


def test_batches_cover_an_epoch():
    x = np.arange(10)[:, None]
    y = np.arange(10)
    stream = data.batches(x, y, 5, seed=1)
    seen = np.concatenate([next(stream)[1] for _ in range(2)])
    assert sorted(seen.tolist()) == list(range(10))
    with pytest.raises(ValueError, match="`batch_size`"):
        next(data.batches(x, y, 11))

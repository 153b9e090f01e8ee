"""Datasets: scikit-learn's embedded digits, MNIST from local IDX files or TFDS."""

from jaxcompress._src.data import MNIST_ENV, MNIST_FILES, Dataset, batches, digits, mnist, mnist_idx, mnist_tfds

__all__ = ["MNIST_ENV", "MNIST_FILES", "Dataset", "batches", "digits", "mnist", "mnist_idx", "mnist_tfds"]

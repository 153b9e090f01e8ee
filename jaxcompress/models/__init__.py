"""Reference models used by the examples, benchmarks and tests."""

from jaxcompress.models.classifiers import MLP, LeNet5, lenet300_100

__all__ = ["MLP", "LeNet5", "lenet300_100"]

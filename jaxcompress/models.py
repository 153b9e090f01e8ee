"""Reference models used by the examples, benchmarks and tests."""

from jaxcompress._src.models import MLP, LeNet5, ResidualBlock, ResNet, lenet300_100

__all__ = ["MLP", "LeNet5", "ResNet", "ResidualBlock", "lenet300_100"]

"""Small image classifiers: MLPs (LeNet-300-100) and the Caffe LeNet-5."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class MLP(nn.Module):
    """A ReLU multilayer perceptron over flattened images."""

    hidden: Sequence[int] = (256, 128)
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.reshape(x, (x.shape[0], -1))
        for width in self.hidden:
            x = nn.relu(nn.Dense(width)(x))
        return nn.Dense(self.num_classes)(x)


def lenet300_100(num_classes: int = 10) -> MLP:
    """LeNet-300-100 (784-300-100-10; LeCun et al. 1998), as in Han et al. 2015."""
    return MLP(hidden=(300, 100), num_classes=num_classes)


class LeNet5(nn.Module):
    """LeNet-5 as in Caffe and Deep Compression: conv20-pool-conv50-pool-fc500-fc10 (431K weights)."""

    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Conv(20, (5, 5), padding="VALID")(x)
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = nn.Conv(50, (5, 5), padding="VALID")(x)
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = jnp.reshape(x, (x.shape[0], -1))
        x = nn.relu(nn.Dense(500)(x))
        return nn.Dense(self.num_classes)(x)


class ResidualBlock(nn.Module):
    """Two 3x3 conv -> BatchNorm stages with an identity shortcut (He et al. 2016)."""

    channels: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        y = nn.Conv(self.channels, (3, 3), use_bias=False)(x)
        y = nn.relu(nn.BatchNorm(use_running_average=not train)(y))
        y = nn.Conv(self.channels, (3, 3), use_bias=False)(y)
        y = nn.BatchNorm(use_running_average=not train)(y)
        return nn.relu(x + y)


class ResNet(nn.Module):
    """A small ResNet: conv-BN stem, ``blocks`` residual blocks, global average pool, Dense.

    References:
      He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition",
      2016. https://arxiv.org/abs/1512.03385
    """

    channels: int = 16
    blocks: int = 2
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = nn.Conv(self.channels, (3, 3), use_bias=False)(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
        for _ in range(self.blocks):
            x = ResidualBlock(self.channels)(x, train)
        x = jnp.mean(x, axis=(-3, -2))
        return nn.Dense(self.num_classes)(x)

"""Shared test helpers."""

import flax.linen as nn
import jax
import jax.numpy as jnp


class ConvDenseNet(nn.Module):
    """Conv(8, 3x3) -> ReLU -> flatten -> Dense(hidden) -> ReLU -> Dense(10): a small model to export."""

    hidden: int = 64

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(8, (3, 3))(x))
        x = jnp.reshape(x, (x.shape[0], -1))
        x = nn.relu(nn.Dense(self.hidden)(x))
        return nn.Dense(10)(x)


def make_params(seed: int = 0, dtype=jnp.float32) -> dict:
    """A small Flax-like param tree: a conv and two dense layers, with biases."""
    k = jax.random.split(jax.random.key(seed), 3)
    return {
        "Conv_0": {"kernel": jax.random.normal(k[0], (3, 3, 2, 8), dtype), "bias": jnp.zeros((8,), dtype)},
        "Dense_0": {"kernel": jax.random.normal(k[1], (72, 32), dtype), "bias": jnp.zeros((32,), dtype)},
        "Dense_1": {"kernel": jax.random.normal(k[2], (32, 10), dtype), "bias": jnp.zeros((10,), dtype)},
    }

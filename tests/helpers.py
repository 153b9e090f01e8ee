"""Shared test helpers."""

import jax
import jax.numpy as jnp


def make_params(seed: int = 0, dtype=jnp.float32) -> dict:
    """A small Flax-like param tree: a conv and two dense layers, with biases."""
    k = jax.random.split(jax.random.key(seed), 3)
    return {
        "Conv_0": {"kernel": jax.random.normal(k[0], (3, 3, 2, 8), dtype), "bias": jnp.zeros((8,), dtype)},
        "Dense_0": {"kernel": jax.random.normal(k[1], (72, 32), dtype), "bias": jnp.zeros((32,), dtype)},
        "Dense_1": {"kernel": jax.random.normal(k[2], (32, 10), dtype), "bias": jnp.zeros((10,), dtype)},
    }

"""Shared test helpers."""

import os
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

import jaxcompress as jc


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


def promotion(tx: optax.GradientTransformation, mode: str) -> optax.GradientTransformationExtraArgs:
    """``tx`` run under dtype promotion ``mode`` (``"standard"`` or ``"strict"``)."""
    if not isinstance(tx, optax.MultiSteps):  # its update takes extra args; optax's wrapper would drop them
        tx = optax.with_extra_args_support(tx)

    def init(params):
        with jax.numpy_dtype_promotion(mode):
            return tx.init(params)

    def update(updates, state, params=None, **extra_args):
        with jax.numpy_dtype_promotion(mode):
            return tx.update(updates, state, params, **extra_args)

    return optax.GradientTransformationExtraArgs(init, update)


def standard_promotion(tx: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """``tx`` run under standard dtype promotion (optax's Adam adds Python floats to int32 counts).

    The suite runs strict (conftest.py); only the third-party optimizer's own
    code is exempted, never jaxcompress's.
    """
    return promotion(tx, "standard")


def adam(*args, **kwargs):
    """``optax.adam`` under standard promotion (see :func:`standard_promotion`)."""
    return standard_promotion(optax.adam(*args, **kwargs))


def adamw(*args, **kwargs):
    """``optax.adamw`` under standard promotion (see :func:`standard_promotion`)."""
    return standard_promotion(optax.adamw(*args, **kwargs))


def local_mnist() -> pathlib.Path | None:
    """This checkout's MNIST: ``$JAXCOMPRESS_MNIST_DIR``, else ``../shared/data/mnist`` beside the repo, else None."""
    candidates = [
        os.environ.get(jc.data.MNIST_ENV),
        pathlib.Path(__file__).resolve().parents[2] / "shared/data/mnist",
    ]
    for c in candidates:
        if c and (pathlib.Path(c) / jc.data.MNIST_FILES["y_test"]).exists():
            return pathlib.Path(c)
    return None


def soft_masks(state) -> dict:
    """The masks of every ``jc.prune.ste`` inside ``state``, by path: they shape the forward pass only,
    so ``jc.masks_of`` (the enforced masks) leaves them out."""
    is_soft = lambda x: isinstance(x, jc.prune.SoftMasks)
    return {p: m for n in jax.tree.leaves(state, is_leaf=is_soft) if is_soft(n) for p, m in n.keep.items()}


def run_update(update, params, state, steps: int):
    """``steps`` jitted calls of ``update(params, state)``: ``(final state, number of traces)``."""
    traces = []

    def counted(p, s):
        traces.append(1)
        return update(p, s)

    step = jax.jit(counted)
    for _ in range(steps):
        state = step(params, state)
    return state, len(traces)


TRAIN_SHARDED = pathlib.Path(__file__).resolve().parents[1] / "tpu_scripts" / "train_sharded.py"
TINY_RUN = ["--hidden", "32,16", "--batch-size", "16", "--sparsity", "0.9"]


def train_sharded_env(devices: int) -> dict[str, str]:
    """The environment for a ``tpu_scripts/train_sharded.py`` subprocess with ``devices`` CPU devices.

    It inherits the suite's XLA flags (cheap compilation) and shares its compilation cache.
    """
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
    cache = os.environ.get("JAXCOMPRESS_TEST_COMPILATION_CACHE", "")
    return os.environ | {
        "XLA_FLAGS": " ".join([*flags, f"--xla_force_host_platform_device_count={devices}"]),
        "JAX_PLATFORMS": "cpu",
        "PYTHONUNBUFFERED": "1",
        **({"JAX_COMPILATION_CACHE_DIR": cache, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"} if cache else {}),
    }


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def collectives(compiled_text: str) -> list[tuple[str, int, str]]:
    """(kind, number of elements, dtype) of every cross-device collective in compiled HLO (each operand of a
    tuple-shaped one counted apart)."""
    return [(c.kind, c.elements, c.dtype) for c in jc.train.collectives(compiled_text)]

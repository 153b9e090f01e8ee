"""jaxcompress: joint pruning and quantization for JAX/Flax.

Pure transforms map a param pytree to a masked, fake-quantized pytree; an optax
wrapper keeps the masks and straight-through gradients correct while
fine-tuning; the result exports to a real int8 XLA program.

Subpackages load on first use, so ``jaxcompress.export.load`` needs only JAX
and numpy (no Flax or optax) in a deployment.
"""

import importlib
from typing import TYPE_CHECKING

from jaxcompress.core import Transform, chain, compress, identity

__version__ = "0.1.0"

_SUBMODULES = ("data", "demo", "export", "masks", "models", "optim", "paths", "prune", "quant", "schedules", "train")

__all__ = ["Transform", "chain", "compress", "identity", *_SUBMODULES]


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"jaxcompress.{name}")
    raise AttributeError(f"module 'jaxcompress' has no attribute {name!r}")


if TYPE_CHECKING:  # pragma: no cover
    from jaxcompress import data, demo, export, masks, models, optim, paths, prune, quant, schedules, train  # noqa: F401

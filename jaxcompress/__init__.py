"""jaxcompress: joint pruning and quantization for JAX/Flax.

Pure methods map a param pytree to a masked, fake-quantized pytree; an optax
wrapper keeps the masks and straight-through gradients correct while
fine-tuning; the result exports to a real int8 XLA program. The core (this
module) is the method protocol: :class:`Transform`, :class:`Quantizer`,
:func:`chain`, and the state nodes :class:`Masks` and :class:`Learned`.

Subpackages load on first use, so ``jaxcompress.export.load`` needs only JAX
and numpy (no Flax or optax) in a deployment.
"""

import importlib
from typing import TYPE_CHECKING

from jaxcompress._src.core import (
    ApplyFn,
    Chain,
    InitFn,
    Learned,
    Masks,
    QuantizeFn,
    Quantizer,
    Recipe,
    Transform,
    UpdateFn,
    chain,
    checking_state,
    compress,
    identity,
    integer_weights,
    learned_params,
    masks_of,
    replace_learned,
)
from jaxcompress._src.integer import IntegerWeights

__version__ = "0.2.0.dev0"

_SUBMODULES = (
    "data",
    "demo",
    "distill",
    "export",
    "joint",
    "masks",
    "models",
    "optim",
    "paths",
    "prune",
    "quant",
    "schedules",
    "train",
)

__all__ = [
    "ApplyFn",
    "Chain",
    "InitFn",
    "IntegerWeights",
    "Learned",
    "Masks",
    "QuantizeFn",
    "Quantizer",
    "Recipe",
    "Transform",
    "UpdateFn",
    "chain",
    "checking_state",
    "compress",
    "identity",
    "integer_weights",
    "learned_params",
    "masks_of",
    "replace_learned",
    *_SUBMODULES,
]


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"jaxcompress.{name}")
    raise AttributeError(f"module 'jaxcompress' has no attribute {name!r}")


if TYPE_CHECKING:  # pragma: no cover
    from jaxcompress import (  # noqa: F401
        data,
        demo,
        distill,
        export,
        joint,
        masks,
        models,
        optim,
        paths,
        prune,
        quant,
        schedules,
        train,
    )

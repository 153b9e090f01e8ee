"""jaxcompress: joint pruning and quantization for JAX/Flax.

Pure transforms map a param pytree to a masked, fake-quantized pytree; an optax
wrapper keeps the masks and straight-through gradients correct while
fine-tuning; the result exports to a real int8 XLA program.
"""

from jaxcompress import optim, paths, prune, quant, schedules
from jaxcompress.core import Transform, chain, compress, identity

__version__ = "0.1.0"

__all__ = [
    "Transform",
    "chain",
    "compress",
    "identity",
    "optim",
    "paths",
    "prune",
    "quant",
    "schedules",
]

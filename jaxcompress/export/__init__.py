"""Export: an integer XLA program, stored compressed in one artifact file.

``load`` needs only JAX and numpy (this package's ``__init__`` imports nothing
heavier); ``int8`` (the builder) imports Flax on first use.
"""

from jaxcompress.export.artifact import Artifact, load
from jaxcompress.export.storage import decode_sparse, encode_sparse, load_arrays, save_arrays

__all__ = ["Artifact", "Exported", "decode_sparse", "encode_sparse", "int8", "load", "load_arrays", "save_arrays"]


def __getattr__(name: str):
    if name in ("int8", "Exported"):
        from jaxcompress.export import builder

        return getattr(builder, name)
    raise AttributeError(f"module 'jaxcompress.export' has no attribute {name!r}")

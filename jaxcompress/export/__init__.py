"""Export: an integer XLA program, stored compressed in one artifact file.

``load`` needs only JAX and numpy (this package's ``__init__`` imports nothing
heavier); ``int8`` (the builder) imports Flax on first use.
"""

from jaxcompress.export.artifact import Artifact, load

__all__ = ["Artifact", "Exported", "int8", "load"]


def __getattr__(name: str):
    if name in ("int8", "Exported"):
        from jaxcompress.export import builder

        return getattr(builder, name)
    raise AttributeError(f"module 'jaxcompress.export' has no attribute {name!r}")

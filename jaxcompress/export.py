"""Export: an integer XLA program, stored compressed in one artifact file.

:func:`export` builds it from a Flax model and a trained recipe,
:func:`size_report` predicts the bytes it will store, and :func:`load`
reads it back and needs only JAX and numpy (this module imports nothing
heavier; :func:`export` imports Flax on first use).
"""

from typing import TYPE_CHECKING

from jaxcompress._src.export.artifact import Artifact, load

if TYPE_CHECKING:  # pragma: no cover - loaded on first use below (imports Flax)
    from jaxcompress._src.export.builder import Exported, export, size_report

__all__ = ["Artifact", "Exported", "export", "load", "size_report"]


def __getattr__(name: str):
    if name in ("export", "Exported", "size_report"):
        from jaxcompress._src.export import builder

        return getattr(builder, name)
    raise AttributeError(f"module 'jaxcompress.export' has no attribute {name!r}")

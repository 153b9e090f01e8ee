"""Pruning: transforms that zero weights, keeping bit-packed masks in their state."""

from jaxcompress.prune.magnitude import MagnitudeState, magnitude
from jaxcompress.prune.packed import PackedMask

__all__ = ["MagnitudeState", "PackedMask", "magnitude"]

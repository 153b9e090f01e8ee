"""Pruning: transforms that zero weights, keeping bit-packed masks in their state."""

from jaxcompress.masks import PackedMask
from jaxcompress.prune.magnitude import MagnitudeState, magnitude

__all__ = ["MagnitudeState", "PackedMask", "magnitude"]

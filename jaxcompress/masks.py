"""Bit-packed masks: one bit per weight, how every hard mask is stored (see :class:`PackedMask`)."""

from jaxcompress._src.masks import PackedMask, ones, pack, unpack

__all__ = ["PackedMask", "ones", "pack", "unpack"]

"""Bit-packed masks: one bit per weight, how every hard mask is stored and passed.

A mask for a leaf of shape ``(..., C)`` is stored as ``uint8`` bits packed along
the flattened leading axes, shape ``(ceil(prod(...) / 8), C)``. The last axis
(a kernel's output channels) is kept whole, so a mask shards the way its
kernel does along that axis. A float32 kernel's mask costs 1/32 of its bytes
(a ``bool`` mask would cost 1/4).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["PackedMask", "pack", "unpack"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PackedMask:
    """A boolean mask of ``shape`` stored as packed bits (``True`` = kept)."""

    bits: jax.Array  # shape=(ceil(rows / 8), cols), dtype=uint8
    shape: tuple[int, ...] = dataclasses.field(metadata=dict(static=True))

    def unpack(self) -> jax.Array:
        """The boolean mask, shape ``self.shape``."""
        return unpack(self)

    def keep(self, x: jax.Array, fill: jax.Array | None = None) -> jax.Array:
        """``x`` where the mask keeps, ``fill`` (default zero) elsewhere; in ``x``'s dtype.

        ``x`` must have the mask's shape exactly (a mask never broadcasts).
        """
        if tuple(jnp.shape(x)) != self.shape:
            raise ValueError(
                f"A mask of shape {self.shape} was applied to an array of shape {tuple(jnp.shape(x))}: the state "
                f"was built for other params (call the method's init on these params)."
            )
        fill = jnp.zeros((), jnp.result_type(x)) if fill is None else jnp.asarray(fill).astype(jnp.result_type(x))
        return jnp.where(self.unpack(), x, fill)

    def __and__(self, other: PackedMask) -> PackedMask:
        _check_same_shape(self, other)
        return PackedMask(self.bits & other.bits, self.shape)


def _check_same_shape(a: PackedMask, b: PackedMask) -> None:
    if a.shape != b.shape:
        raise ValueError(f"Cannot combine masks of shapes {a.shape} and {b.shape}.")


def rows_cols(shape: tuple[int, ...]) -> tuple[int, int]:
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], 1
    return math.prod(shape[:-1]), shape[-1]


@jax.jit  # one program per shape when called eagerly (inlined under an outer jit)
def pack(mask: jax.Array) -> PackedMask:
    """Packs a boolean mask."""
    shape = tuple(mask.shape)
    rows, cols = rows_cols(shape)
    keep = jnp.reshape(mask.astype(jnp.bool_), (rows, cols))
    # Bit i of byte r holds row 8r + i (little bit order, as jnp.packbits). Eight
    # strided slices OR-ed together fuse into one loop with the mask's producer
    # (jnp.packbits' reduction over a size-8 axis does not; benchmarks/README.md).
    # Short slices are padded each, not the mask: a padded mask is stored.
    n_bytes = -(-rows // 8)
    bits = jnp.zeros((n_bytes, cols), jnp.uint8)
    for i in range(8):
        row_bits = keep[i::8]
        row_bits = jnp.pad(row_bits, ((0, n_bytes - row_bits.shape[0]), (0, 0)))
        bits = bits | (row_bits.astype(jnp.uint8) << i)
    return PackedMask(bits, shape)


@jax.jit
def unpack(packed: PackedMask) -> jax.Array:
    """Unpacks to a boolean mask of the original shape."""
    rows, cols = rows_cols(packed.shape)
    # (bytes, 8, cols): bit i of byte r is row 8r + i. Shifting a broadcast byte
    # row keeps the columns contiguous, so the consumer's loop (a select on the
    # weights) vectorizes, which jnp.unpackbits' layout prevents.
    shifts = jnp.arange(8, dtype=jnp.uint8)[None, :, None]
    bits = (packed.bits[:, None, :] >> shifts) & jnp.uint8(1)
    return jnp.reshape(jnp.reshape(bits, (-1, cols))[:rows] != 0, packed.shape)


def ones(shape: tuple[int, ...]) -> PackedMask:
    """A mask that keeps everything (the bits :func:`pack` gives an all-True mask, built without compiling)."""
    shape = tuple(int(d) for d in shape)
    rows, cols = rows_cols(shape)
    bits = np.packbits(np.ones((rows, cols), np.bool_), axis=0, bitorder="little")
    return PackedMask(jnp.asarray(bits), shape)

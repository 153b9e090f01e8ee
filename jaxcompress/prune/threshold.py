"""Exact k-smallest selection without sorting: a bitwise threshold search.

Scores are mapped to ``uint32`` keys whose integer order is the float order.
A binary search over the 32 key bits finds the k-th smallest key with 32
counting passes (each a fused compare-and-sum, no sort, no gather). Entries
strictly below the threshold are pruned, then ties at the threshold are pruned
in index order until exactly ``k`` are gone.

For a global threshold over many leaves (or a sharded leaf) the per-pass work
is one scalar count per leaf, summed: across devices that is a scalar
all-reduce, never a gather of the params.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["keep_largest", "sortable_keys"]

_KEY_BITS = 32


def sortable_keys(scores: jax.Array) -> jax.Array:
    """``uint32`` keys with ``key(a) < key(b)`` iff ``a < b`` for floats (NaN highest)."""
    bits = lax.bitcast_convert_type(scores.astype(jnp.float32), jnp.uint32)
    negative = (bits >> 31) == 1
    return jnp.where(negative, ~bits, bits | jnp.uint32(0x80000000))


def _count_le(keys: Sequence[jax.Array], threshold: jax.Array) -> jax.Array:
    return sum(jnp.sum(k <= threshold, dtype=jnp.int32) for k in keys)


def kth_key(keys: Sequence[jax.Array], k: jax.Array) -> jax.Array:
    """Smallest key ``t`` with ``#{keys <= t} >= k`` over all arrays in ``keys``."""

    def body(i, t):
        bit = jnp.uint32(1) << (jnp.uint32(_KEY_BITS - 1) - i.astype(jnp.uint32))
        # Bits are fixed high to low: keep a bit cleared if enough keys lie at or below.
        candidate = t | (bit - jnp.uint32(1))
        enough = _count_le(keys, candidate) >= k
        return jnp.where(enough, t, t | bit)

    return lax.fori_loop(0, _KEY_BITS, body, jnp.uint32(0))


def keep_largest(scores: Sequence[jax.Array], n_prune: jax.Array) -> list[jax.Array]:
    """Keep-masks pruning exactly ``n_prune`` of the smallest scores over all arrays.

    Ties at the threshold are pruned in order: first array first, then by
    flattened index.

    Args:
      scores: score arrays (any float dtype, any shapes).
      n_prune: how many entries to prune in total, ``0 <= n_prune <= total``.

    Returns:
      One boolean keep-mask per score array, same shapes.
    """
    keys = [sortable_keys(s).ravel() for s in scores]
    n_prune = jnp.asarray(n_prune, jnp.int32)
    threshold = kth_key(keys, n_prune)
    below = [k < threshold for k in keys]
    n_below = sum(jnp.sum(b, dtype=jnp.int32) for b in below)
    ties_left = n_prune - n_below  # ties at the threshold still to prune
    masks = []
    offset = jnp.int32(0)
    for key, low, s in zip(keys, below, scores, strict=True):
        tie = key == threshold
        rank = jnp.cumsum(tie, dtype=jnp.int32) + offset  # 1-based rank among all ties so far
        prune = low | (tie & (rank <= ties_left))
        offset = offset + jnp.sum(tie, dtype=jnp.int32)
        masks.append(jnp.reshape(~prune, s.shape))
    return masks

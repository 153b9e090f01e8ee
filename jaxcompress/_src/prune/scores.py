"""Pruning scores: how much each weight matters (higher = kept longer).

A :class:`Score` maps a selected leaf ``w`` (and, for some scores, its
gradient ``g``) to a float32 array of the leaf's shape. The pruner keeps the
entries (or slices, groups, blocks) of highest score.

===========  =====================  ==============================================
name         score                  reference
===========  =====================  ==============================================
magnitude    ``|w|``                Han et al. 2015
random       ``u ~ U[0, 1)``        fixed per weight, so masks are nested
saliency     ``|w * g|``            first-order Taylor, Molchanov et al. 2017;
                                    SNIP at initialization, Lee et al. 2019
movement     ``-sum_t w_t * g_t``   accumulated every step, Sanh et al. 2020
===========  =====================  ==============================================
"""

from __future__ import annotations

from typing import ClassVar

import jax
import jax.numpy as jnp

__all__ = [
    "SCORES",
    "Magnitude",
    "Movement",
    "Random",
    "Saliency",
    "Score",
    "as_score",
    "hash_uniform",
    "leaf_salt",
    "magnitude_of",
]


def leaf_salt(seed: int, leaf: int) -> int:
    """The random-score salt of the ``leaf``-th selected leaf under ``seed`` (a uint32)."""
    return (seed * 1_000_003 + leaf) % 2**32


def hash_uniform(shape: tuple[int, ...], salt: jax.typing.ArrayLike) -> jax.Array:
    """Uniform ``[0, 1)`` float32 noise of ``shape``: a 32-bit integer hash of (flat index, salt).

    Deterministic, the same however the array is sharded (each entry hashes
    its own row-major index), and far cheaper to compile and run than a
    counter-based PRNG, which pruning scores do not need.
    """
    x = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(len(shape))):
        x = x + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride % 2**32)
        stride *= shape[axis]
    x = x * jnp.uint32(0x9E3779B9) + jnp.asarray(salt, jnp.uint32) * jnp.uint32(0x632BE5AB)
    for shift, multiplier in ((16, 0x7FEB352D), (15, 0x846CA68B)):  # "lowbias32" finalizer
        x = (x ^ (x >> shift)) * jnp.uint32(multiplier)
    x = x ^ (x >> 16)
    return (x >> 8).astype(jnp.float32) * jnp.float32(2.0**-24)


class Score:
    """How a weight's importance is measured: ``score(w, g, total, salt)``, float32, the leaf's shape.

    Subclasses set the class attributes the pruner needs and implement
    ``__call__`` (and ``accumulate`` for a score with a running sum).

    Attributes:
      name: the score's name (``"magnitude"``, ...).
      needs_grads: ``update`` must receive the gradients.
      accumulates: the score keeps a running per-weight sum in the state.
    """

    name: ClassVar[str] = "score"
    needs_grads: ClassVar[bool] = False
    accumulates: ClassVar[bool] = False

    def init(self, leaf: jax.Array) -> jax.Array:
        """The running sum of an accumulating score (in the leaf's dtype)."""
        return jnp.zeros(jnp.shape(leaf), jnp.result_type(leaf))

    def accumulate(self, total: jax.Array, w: jax.Array, g: jax.Array) -> jax.Array:
        """Adds one step's contribution to ``total`` (accumulating scores only)."""
        del w, g
        return total

    def __call__(self, w: jax.Array, g: jax.Array | None, total: jax.Array | None, salt: int) -> jax.Array:
        """The float32 score of every entry of ``w`` (``salt``: seed and leaf, for random scores)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(type(self))


class Magnitude(Score):
    """``|w|`` (Han et al. 2015)."""

    name = "magnitude"

    def __call__(self, w, g, total, salt):
        return magnitude_of(w)


def magnitude_of(w: jax.Array) -> jax.Array:
    """``|w|`` in float32: the magnitude score as an elementwise map (the threshold search computes it per pass)."""
    return jnp.abs(w.astype(jnp.float32))


class Random(Score):
    """A fixed uniform ``[0, 1)`` score per weight (from the seed and the leaf's position)."""

    name = "random"

    def __call__(self, w, g, total, salt):
        # Fixed per weight (the salt does not depend on the step): masks of
        # growing sparsity are nested, so gradual random pruning never regrows.
        return hash_uniform(tuple(jnp.shape(w)), salt)


class Saliency(Score):
    """``|w * g|``: first-order Taylor (Molchanov et al. 2017); SNIP at initialization (Lee et al. 2019)."""

    name = "saliency"
    needs_grads = True

    def __call__(self, w, g, total, salt):
        return jnp.abs(w.astype(jnp.float32) * g.astype(jnp.float32))


class Movement(Score):
    """``-sum_t w_t * g_t``, accumulated every step (Sanh et al. 2020)."""

    name = "movement"
    needs_grads = True
    accumulates = True

    def accumulate(self, total, w, g):
        step = -(w.astype(jnp.float32) * g.astype(jnp.float32))
        return (total.astype(jnp.float32) + step).astype(total.dtype)

    def __call__(self, w, g, total, salt):
        return total.astype(jnp.float32)


SCORES: dict[str, Score] = {s.name: s for s in (Magnitude(), Random(), Saliency(), Movement())}


def as_score(score: str | Score, *, argument: str = "score") -> Score:
    """A :class:`Score` from its name (or the object itself)."""
    if isinstance(score, Score):
        return score
    if isinstance(score, str) and score in SCORES:
        return SCORES[score]
    raise ValueError(f"`{argument}` must be one of {tuple(SCORES)} or a jaxcompress.prune.Score, got {score!r}.")

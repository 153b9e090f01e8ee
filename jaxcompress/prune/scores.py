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

import dataclasses

import jax
import jax.numpy as jnp

__all__ = ["SCORES", "Score", "as_score"]


@dataclasses.dataclass(frozen=True)
class Score:
    """How a weight's importance is measured.

    Attributes:
      name: the score's name (``"magnitude"``, ...).
      needs_grads: ``update`` must receive the gradients.
      accumulates: the score keeps a running per-weight sum in the state.
    """

    name: str
    needs_grads: bool = False
    accumulates: bool = False

    def init(self, leaf: jax.Array) -> jax.Array:
        """The running sum of an accumulating score (in the leaf's dtype)."""
        return jnp.zeros(jnp.shape(leaf), jnp.result_type(leaf))

    def accumulate(self, total: jax.Array, w: jax.Array, g: jax.Array) -> jax.Array:
        """Adds one step's contribution to ``total`` (accumulating scores only)."""
        del w, g
        return total

    def __call__(self, w: jax.Array, g: jax.Array | None, total: jax.Array | None, key: jax.Array) -> jax.Array:
        """The float32 score of every entry of ``w``."""
        raise NotImplementedError


class _Magnitude(Score):
    def __call__(self, w, g, total, key):
        return jnp.abs(w.astype(jnp.float32))


class _Random(Score):
    def __call__(self, w, g, total, key):
        # Fixed per weight (the key does not depend on the step): masks of
        # growing sparsity are nested, so gradual random pruning never regrows.
        return jax.random.uniform(key, jnp.shape(w), jnp.float32)


class _Saliency(Score):
    def __call__(self, w, g, total, key):
        return jnp.abs(w.astype(jnp.float32) * g.astype(jnp.float32))


class _Movement(Score):
    def accumulate(self, total, w, g):
        step = -(w.astype(jnp.float32) * g.astype(jnp.float32))
        return (total.astype(jnp.float32) + step).astype(total.dtype)

    def __call__(self, w, g, total, key):
        return total.astype(jnp.float32)


SCORES: dict[str, Score] = {
    "magnitude": _Magnitude("magnitude"),
    "random": _Random("random"),
    "saliency": _Saliency("saliency", needs_grads=True),
    "movement": _Movement("movement", needs_grads=True, accumulates=True),
}


def as_score(score: str | Score, *, argument: str = "score") -> Score:
    """A :class:`Score` from its name (or the object itself)."""
    if isinstance(score, Score):
        return score
    if isinstance(score, str) and score in SCORES:
        return SCORES[score]
    raise ValueError(f"`{argument}` must be one of {tuple(SCORES)} or a jaxcompress.prune.scores.Score, got {score!r}.")

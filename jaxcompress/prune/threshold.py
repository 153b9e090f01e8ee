"""Exact k-smallest selection without sorting: an interpolation search on counts.

Scores are mapped to ``uint32`` keys whose integer order is the float order.
The k-th smallest key ``t`` is found by a search that only ever *counts*: each
pass over the data counts the keys at or below three pivots and takes the
smallest and largest key of the current bracket ``[lo, hi]`` (one fused
variadic reduction per array, no sort, no gather, no cumulative sum). Pivots
are placed by interpolating the counts, so a pass typically shrinks the
bracket from ``m`` keys to a few ``sqrt(m)``; a pass whose guess missed falls
back to quartiles, so the search always ends (at most about 64 passes; 6 to 10
on trained weights). Entries strictly below ``t`` are pruned, then ties at
``t`` in index order until exactly ``k`` are gone.

Every pass reduces each array to a few scalars, so on a sharded model (or
over many leaves, for a global threshold) the only cross-device traffic is a
handful of scalar all-reduces per pass: no array is ever gathered, reshaped
across shards or scanned.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["keep_largest", "kth_key", "sortable_keys"]

_KEY_MAX = np.uint32(0xFFFFFFFF)
_PIVOTS = 5  # pivots per pass
_OFFSETS = np.array([-1.0, -0.25, 0.0, 0.25, 1.0], np.float32)  # around the guess, in units of the spread
_SPREAD = 4.0  # the spread is _SPREAD / sqrt(m) of the bracket (m keys in it)
_GUESS_PASSES = 12  # after this many passes, split the key range evenly (at most ~14 more passes)
_MAX_PASSES = 100  # a safety bound; the search ends long before (bracket at least halves every other pass)
_MAX_TOTAL = 2**31 - 1  # counts are int32


def sortable_keys(scores: jax.Array) -> jax.Array:
    """``uint32`` keys with ``key(a) < key(b)`` iff ``a < b`` for floats (NaN highest)."""
    bits = lax.bitcast_convert_type(scores.astype(jnp.float32), jnp.uint32)
    negative = (bits >> 31) == 1
    return jnp.where(negative, ~bits, bits | jnp.uint32(0x80000000))


def _key_value(key: jax.Array) -> jax.Array:
    """The float32 whose :func:`sortable_keys` key is ``key``."""
    bits = jnp.where(key >= jnp.uint32(0x80000000), key & jnp.uint32(0x7FFFFFFF), ~key)
    return lax.bitcast_convert_type(bits, jnp.float32)


def _sum_min_max(keys: Sequence[jax.Array], pivots: jax.Array, lo: jax.Array, hi: jax.Array):
    """One pass: ``#{key <= p}`` per pivot, ``min{key >= lo}``, ``max{key <= hi}`` over all arrays.

    Each array is reduced over all its axes by a single variadic reduction
    (one loop over the data, whatever the number of outputs). The extremes use
    wrapping ``uint32`` differences: keys outside ``[lo, hi]`` wrap above
    ``hi - lo``, so ``min(key - lo)`` and ``min(hi - key)`` need no select
    (the bracket always holds a key).
    """
    n_piv = pivots.shape[0]
    outs = []
    for k in keys:
        operands = [(k <= pivots[j]).astype(jnp.int32) for j in range(n_piv)] + [k - lo, hi - k]
        inits = [jnp.int32(0)] * n_piv + [jnp.uint32(_KEY_MAX)] * 2

        def combine(a, b):
            return (
                *(x + y for x, y in zip(a[:n_piv], b[:n_piv], strict=True)),
                jnp.minimum(a[n_piv], b[n_piv]),
                jnp.minimum(a[n_piv + 1], b[n_piv + 1]),
            )

        outs.append(lax.reduce(tuple(operands), tuple(inits), combine, tuple(range(k.ndim))))
    counts = jnp.stack([sum(o[j] for o in outs) for j in range(n_piv)]) if n_piv else jnp.zeros([0], jnp.int32)
    above_lo = jnp.min(jnp.stack([o[n_piv] for o in outs]))
    below_hi = jnp.min(jnp.stack([o[n_piv + 1] for o in outs]))
    return counts, lo + above_lo, hi - below_hi


def kth_key(keys: Sequence[jax.Array], k: jax.typing.ArrayLike) -> tuple[jax.Array, ...]:
    """The ``k``-th smallest key (1-based) over all arrays in ``keys``.

    Args:
      keys: ``uint32`` arrays of any shapes (see :func:`sortable_keys`).
      k: rank, ``1 <= k <= total size`` (clamped into that range).

    Returns:
      ``(t, n_lt, n_le, passes)``: the ``uint32`` key ``t`` with
      ``n_lt = #{key < t} < k <= #{key <= t} = n_le``, and the number of
      passes over the data the search took (all int32 but ``t``).
    """
    total = sum(math.prod(x.shape) for x in keys)
    k = jnp.clip(jnp.asarray(k, jnp.int32), 1, total)
    _, lo, hi = _sum_min_max(keys, jnp.zeros([0], jnp.uint32), jnp.uint32(0), jnp.uint32(_KEY_MAX))
    range_v = _key_value(hi) - _key_value(lo)
    # Loop state: bracket [lo, hi] holding the answer, cb = #{key < lo}, ch = #{key <= hi}.
    init = dict(
        lo=lo,
        hi=hi,
        cb=jnp.int32(0),
        ch=jnp.int32(total),
        first=jnp.bool_(True),
        missed=jnp.bool_(True),
        done=lo == hi,
        result=lo,
        n_lt=jnp.int32(0),
        n_le=jnp.int32(total),
        passes=jnp.int32(1),
    )

    def pivots_for(s):
        m = (s["ch"] - s["cb"]).astype(jnp.float32)
        guess = ((k - s["cb"]).astype(jnp.float32) - 0.5) / m
        lo_v, hi_v = _key_value(s["lo"]), _key_value(s["hi"])
        # Guess errors: sampling noise ~ 1/sqrt(m), plus curvature of the value
        # distribution across the bracket, which shrinks with its share of the range.
        share = jnp.where(range_v > 0, (hi_v - lo_v) / range_v, 1.0)
        share = jnp.where(jnp.isfinite(share), share, 1.0)
        spread = jnp.minimum(0.5, _SPREAD / jnp.sqrt(m) + 1.0 / m + share)
        even = jnp.arange(1, _PIVOTS + 1, dtype=jnp.float32) / (_PIVOTS + 1)
        # Guesses interpolate values (density is smooth in value). After a miss, or
        # once the search runs long, split the key range evenly: a sure shrink by
        # _PIVOTS + 1, so the search ends within _GUESS_PASSES + 14 passes.
        guessing = ~s["missed"] & (s["passes"] < _GUESS_PASSES)
        fractions = jnp.clip(jnp.where(guessing, guess + spread * _OFFSETS, even), 0.0, 1.0)
        by_value = guessing | s["first"]
        value_pivots = sortable_keys(lo_v + fractions * (hi_v - lo_v))
        width = s["hi"] - s["lo"]
        key_pivots = s["lo"] + jnp.floor(fractions * width.astype(jnp.float32)).astype(jnp.uint32)
        pivots = jnp.where(by_value & jnp.isfinite(hi_v - lo_v), value_pivots, key_pivots)
        return jnp.clip(pivots, s["lo"], s["hi"] - jnp.uint32(1))

    def pivot_pass(s):
        pivots = pivots_for(s)
        counts, mn, mx = _sum_min_max(keys, pivots, s["lo"], s["hi"])
        below = counts < k
        lo = jnp.maximum(jnp.max(jnp.where(below, pivots + jnp.uint32(1), s["lo"])), mn)
        cb = jnp.max(jnp.where(below, counts, s["cb"]))
        hi = jnp.minimum(jnp.min(jnp.where(below, s["hi"], pivots)), mx)
        ch = jnp.min(jnp.where(below, s["ch"], counts))
        single = mn == mx  # one distinct key left in the bracket: it is the answer
        return dict(
            lo=lo,
            hi=hi,
            cb=cb,
            ch=ch,
            first=jnp.bool_(False),
            missed=jnp.all(below) | ~jnp.any(below),
            done=single | (lo == hi),
            result=jnp.where(single, mn, lo),
            n_lt=jnp.where(single, s["cb"], cb),
            n_le=jnp.where(single, s["ch"], ch),
            passes=s["passes"] + 1,
        )

    def final_pass(s):
        # Exactly k - 1 keys lie below lo (answer: the smallest key >= lo), or
        # exactly k at or below hi (answer: the largest key <= hi).
        _, mn, mx = _sum_min_max(keys, jnp.zeros([0], jnp.uint32), s["lo"], s["hi"])
        # One more count for the ties at the answer (#{key <= mn}, #{key <= mx - 1}).
        counts, _, _ = _sum_min_max(keys, jnp.stack([mn, mx - jnp.uint32(1)]), s["lo"], s["hi"])
        low = s["cb"] == k - 1
        return dict(
            s,
            done=jnp.bool_(True),
            result=jnp.where(low, mn, mx),
            n_lt=jnp.where(low, s["cb"], counts[1]),
            n_le=jnp.where(low, counts[0], s["ch"]),
            passes=s["passes"] + 2,
        )

    def body(s):
        return lax.cond((s["cb"] == k - 1) | (s["ch"] == k), final_pass, pivot_pass, s)

    out = lax.while_loop(lambda s: ~s["done"] & (s["passes"] < _MAX_PASSES), body, init)
    return out["result"], out["n_lt"], out["n_le"], out["passes"]


def _flat_index(shape: tuple[int, ...], offset: int) -> jax.Array:
    """Row-major flat index of every entry (plus ``offset``), built from iotas (shards like its array)."""
    index = jnp.full(shape, offset, jnp.int32)
    stride = 1
    for axis in reversed(range(len(shape))):
        index = index + lax.broadcasted_iota(jnp.int32, shape, axis) * jnp.int32(stride)
        stride *= shape[axis]
    return index


def _count_ties_before(keys, indices, t, cut) -> jax.Array:
    return sum(
        lax.reduce(((k == t) & (i < cut)).astype(jnp.int32), jnp.int32(0), lax.add, tuple(range(k.ndim)))
        for k, i in zip(keys, indices, strict=True)
    )


def keep_largest(scores: Sequence[jax.Array], n_prune: jax.typing.ArrayLike) -> list[jax.Array]:
    """Keep-masks pruning exactly ``n_prune`` of the smallest scores over all arrays.

    Ties at the threshold are pruned in order: first array first, then by
    row-major index.

    Args:
      scores: score arrays (any float dtype, any shapes).
      n_prune: how many entries to prune in total, ``0 <= n_prune <= total``.

    Returns:
      One boolean keep-mask per score array, same shapes.
    """
    sizes = [math.prod(s.shape) for s in scores]
    total = sum(sizes)
    if total > _MAX_TOTAL:
        raise ValueError(
            f"`scores` hold {total} entries; one selection handles at most {_MAX_TOTAL}. "
            f"Prune layer by layer (scope='layer') or over fewer leaves at a time."
        )
    keys = [sortable_keys(s) for s in scores]
    n_prune = jnp.clip(jnp.asarray(n_prune, jnp.int32), 0, total)
    t, n_lt, n_le, _ = kth_key(keys, n_prune)
    ties_left = n_prune - n_lt  # ties at t still to prune, 0 <= ties_left <= n_le - n_lt
    offsets = np.cumsum([0, *sizes[:-1]]).tolist()
    indices = [_flat_index(tuple(s.shape), o) for s, o in zip(scores, offsets, strict=True)]

    def cutoff_search():
        # Smallest global index c with #{ties at flat index < c} == ties_left, bit by bit.
        def step(i, c):
            bit = jnp.int32(1) << (jnp.int32(30) - i)
            enough = _count_ties_before(keys, indices, t, c | bit) > ties_left
            return jnp.where(enough, c, c | bit)

        return lax.fori_loop(0, 31, step, jnp.int32(0))

    cutoff = lax.cond(
        ties_left >= n_le - n_lt,
        lambda: jnp.int32(_MAX_TOTAL),  # all ties pruned (the usual case)
        lambda: lax.cond(ties_left == 0, lambda: jnp.int32(0), cutoff_search),
    )
    return [~((k < t) | ((k == t) & (i < cutoff))) for k, i in zip(keys, indices, strict=True)]

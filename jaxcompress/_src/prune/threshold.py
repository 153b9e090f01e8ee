"""Exact k-smallest selection without sorting: an interpolation search on counts.

Scores are mapped to ``uint32`` keys whose integer order is the float order.
The k-th smallest key ``t`` is found by a search that only ever *counts*: each
pass over the data counts the keys at or below a few pivots and takes the
smallest and largest key of the current bracket ``[lo, hi]``, in one fused
variadic reduction per array (no sort, no gather, no cumulative sum). Pivots
are placed by interpolating the counts in value space, so a pass typically
shrinks a bracket of ``m`` keys to a few ``sqrt(m)``; after a miss (or once a
search runs long) they split the key range evenly, so every search ends within
``_GUESS_PASSES + 14`` passes. The first pass counts at pivots placed from a
strided sample of about a thousand scores per array (:func:`sample_pivots`),
which usually narrows the search to a few percent of the scores at once
(benchmarks/README.md has the pass counts). A bracket is snapped to the
smallest and largest key inside it, and the search ends when it holds a single
distinct key (the answer ``t``, with the counts of keys below and at it) or
when a pivot lands on exactly ``k`` keys (a cut). Entries strictly below ``t``
are pruned, then ties at ``t`` in index order until exactly ``k`` are gone.

Many selections run as one batched search (:func:`select`): each *group* of
arrays (one leaf for a layer-wise threshold, all leaves for a global one) has
its own bracket, and one loop advances all of them, so a model with hundreds
of layers compiles one loop, not hundreds.

The keys are stored once, or, for scores that are a cheap elementwise map of
the arrays (``|w|``: ``select(..., score=jnp.abs)``), computed inside every
pass from the weights themselves: a pass is bound by its compares, not by the
bytes it reads, so recomputing costs less than writing and reading stored keys.

Every pass reduces each array to a few scalars (and the sample to two sums),
so on a sharded model the only cross-device traffic is a handful of scalar
all-reduces per pass: no array is gathered, reshaped across shards or scanned.

:func:`kth_values` turns the search into float order statistics (the
``k``-th and ``(k+1)``-th smallest score, for percentiles): one more pass
reads the neighbours of the key found, so it too communicates only scalars.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = [
    "KthValues",
    "keep_largest",
    "kth_key",
    "kth_keys",
    "kth_values",
    "sample_pivots",
    "select",
    "sortable_keys",
]

_KEY_MAX = np.uint32(0xFFFFFFFF)
_PIVOTS = 6  # pivots per pass: 8 outputs per reduction (more outputs make XLA:CPU's reduction slower)
_OFFSETS = np.array([[-1.0, -0.2, -0.05, 0.05, 0.2, 1.0]], np.float32)  # around the guess, in units of the spread
_EVEN = np.arange(1, _PIVOTS + 1, dtype=np.float32)[None, :] / (_PIVOTS + 1)
_SPREAD = 4.0  # the spread is _SPREAD / sqrt(m) of the bracket (m keys in it), plus its share of the range
_GUESS_PASSES = 12  # after this many passes, split the key range evenly (a sure shrink by _PIVOTS + 1)
_LADDER = np.array([-0.4, -0.15, -0.05, 0.05, 0.15, 0.4], np.float32)  # first pivots around the guess, in std devs
_SAMPLE_SIDE = 32  # a sample takes about this many entries along each axis
_MAX_PASSES = 64  # a safety bound, never reached (see the module docstring)
_MAX_TOTAL = 2**31 - 1  # counts are int32

_FIELDS = ("lo", "hi", "cb", "ch", "missed", "done")  # a group's search state

KeysOf = Callable[[int, int, jax.Array], jax.Array]
"""``keys_of(g, i, x)``: the ``uint32`` keys of ``x``, the ``i``-th array of group ``g``."""


def _given_keys(g: int, i: int, x: jax.Array) -> jax.Array:
    del g, i
    return x


def _identity(x: jax.Array) -> jax.Array:
    return x


def _add_pairs(a: tuple[jax.Array, jax.Array], b: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
    return a[0] + b[0], a[1] + b[1]


def sortable_keys(scores: jax.Array) -> jax.Array:
    """``uint32`` keys with ``key(a) < key(b)`` iff ``a < b`` for floats (``-0.0 == 0.0``, NaN highest).

    Integer ops only (flip the magnitude bits of negatives, set the sign bit of
    positives), so a compiler that knows the scores are non-negative (``|w|``)
    folds the keys to one bitwise op per entry.
    """
    bits = lax.bitcast_convert_type(scores.astype(jnp.float32), jnp.uint32)
    negative = lax.bitcast_convert_type(lax.bitcast_convert_type(bits, jnp.int32) >> 31, jnp.uint32)  # all ones or 0
    keys = bits ^ (negative >> 1) ^ jnp.uint32(0x80000000)
    return keys + (keys == jnp.uint32(0x7FFFFFFF)).astype(jnp.uint32)  # -0.0 onto +0.0


def _key_value(key: jax.Array) -> jax.Array:
    """The float32 whose :func:`sortable_keys` key is ``key``."""
    bits = jnp.where(key >= jnp.uint32(0x80000000), key & jnp.uint32(0x7FFFFFFF), ~key)
    return lax.bitcast_convert_type(bits, jnp.float32)


def _pass(groups: Sequence[Sequence[jax.Array]], pivots: jax.Array, lo: jax.Array, hi: jax.Array, keys_of: KeysOf):
    """One pass over all arrays: per group, ``#{key <= p}`` for its pivots, ``min{key >= lo}``, ``max{key <= hi}``.

    Each array is reduced over all its axes by one variadic reduction (one
    loop over the data, whatever the number of outputs; on CPU much faster
    than separate single-output reductions). The extremes use wrapping
    ``uint32`` differences: keys outside ``[lo, hi]`` wrap above ``hi - lo``,
    so ``min(key - lo)`` and ``min(hi - key)`` need no select (a bracket
    always holds a key).
    """
    n_piv = pivots.shape[1]

    def combine(a, b):
        sums = tuple(x + y for x, y in zip(a[:n_piv], b[:n_piv], strict=True))
        return (*sums, jnp.minimum(a[n_piv], b[n_piv]), jnp.minimum(a[n_piv + 1], b[n_piv + 1]))

    counts, above, below = [], [], []
    for g, arrays in enumerate(groups):
        outs = []
        for i, x in enumerate(arrays):
            k = keys_of(g, i, x)
            operands = [(k <= pivots[g, j]).astype(jnp.int32) for j in range(n_piv)] + [k - lo[g], hi[g] - k]
            inits = [jnp.int32(0)] * n_piv + [jnp.uint32(_KEY_MAX)] * 2
            outs.append(lax.reduce(tuple(operands), tuple(inits), combine, tuple(range(k.ndim))))
        counts.append(
            jnp.stack([sum(o[j] for o in outs) for j in range(n_piv)]) if n_piv else jnp.zeros([0], jnp.int32)
        )
        above.append(jnp.min(jnp.stack([o[n_piv] for o in outs])))
        below.append(jnp.min(jnp.stack([o[n_piv + 1] for o in outs])))
    return jnp.stack(counts), lo + jnp.stack(above), hi - jnp.stack(below)


def _pivots(s: dict, k: jax.Array, by_value: bool) -> jax.Array:
    """``(G, _PIVOTS)`` pivots inside each bracket ``[lo, hi - 1]``."""
    range_v = s["range_v"]
    lo, hi = s["lo"][:, None], s["hi"][:, None]
    m = (s["ch"] - s["cb"]).astype(jnp.float32)[:, None]
    guess = ((k - s["cb"]).astype(jnp.float32)[:, None] - 0.5) / m
    lo_v, hi_v = _key_value(lo), _key_value(hi)
    # Guess errors: sampling noise ~ 1/sqrt(m), plus the curvature of the
    # value distribution across the bracket, which shrinks with its share of the range.
    share = jnp.where(range_v[:, None] > 0, (hi_v - lo_v) / range_v[:, None], 1.0)
    share = jnp.where(jnp.isfinite(share), share, 1.0)
    spread = jnp.minimum(0.5, _SPREAD / jnp.sqrt(m) + 1.0 / m + share)
    # Guesses interpolate values (densities are smooth in value); after a miss,
    # or once the search runs long, split the key range evenly.
    guessing = (~s["missed"] & (s["passes"] < _GUESS_PASSES))[:, None]
    fractions = jnp.clip(jnp.where(guessing, guess + spread * _OFFSETS, _EVEN), 0.0, 1.0)
    key_pivots = lo + jnp.floor(fractions * (hi - lo).astype(jnp.float32)).astype(jnp.uint32)
    if by_value:
        in_value = (guessing | (s["passes"] == 1)) & jnp.isfinite(hi_v - lo_v)
        key_pivots = jnp.where(in_value, sortable_keys(lo_v + fractions * (hi_v - lo_v)), key_pivots)
    return jnp.clip(key_pivots, lo, jnp.maximum(hi, jnp.uint32(1)) - 1)


def _sample(x: jax.Array) -> jax.Array:
    """A strided sample of ``x``: about ``_SAMPLE_SIDE`` rows of about ``_SAMPLE_SIDE`` entries, as a 2-D array.

    The strides are powers of two, so on a sharded array each shard
    (usually a multiple of them) samples its own entries.
    """
    x = jnp.reshape(x, (-1, x.shape[-1]) if x.ndim else (1, 1))
    strides = [1 << max(0, (n // _SAMPLE_SIDE).bit_length() - 1) for n in x.shape]
    return x[:: strides[0], :: strides[1]]


def sample_pivots(
    groups: Sequence[Sequence[jax.Array]], k: jax.Array, *, score: Callable[[jax.Array], jax.Array] | None = None
) -> jax.Array:
    """``(G, _PIVOTS)`` first pivots for :func:`kth_keys`, from a small strided sample of each group's scores.

    The ``k[g]``-th smallest of ``n`` scores is guessed as the normal
    quantile ``mean + std * ndtri((k - 1/2) / n)`` of the sample; the pivots
    sit at ``guess + std * _LADDER``. A good guess lets the first pass narrow
    the search to a few percent of the scores, in place of a pass that only
    finds the extremes. The sample is reduced to
    two sums per array, so on a sharded model it adds only per-device
    partial sums to the cross-device traffic.

    Args:
      groups: ``G`` groups of arrays (any shapes): float scores, or what
        ``score`` maps elementwise to scores (as in :func:`select`).
      k: ``(G,)`` ranks (1-based).
      score: applied to the samples only.
    """
    score = _identity if score is None else score
    pivots = []
    for g, arrays in enumerate(groups):
        size = sum(math.prod(x.shape) for x in arrays)
        total = total_sq = jnp.float32(0)
        for x in arrays:
            y = score(_sample(x)).astype(jnp.float32)
            # One variadic reduction per array (two plain float sums would each be split in two on CPU).
            s1, s2 = lax.reduce((y, y * y), (jnp.float32(0), jnp.float32(0)), _add_pairs, (0, 1))
            weight = math.prod(x.shape) / math.prod(y.shape)  # the sample stands for all the array's entries
            total, total_sq = total + weight * s1, total_sq + weight * s2
        mean = total / size
        std = jnp.sqrt(jnp.maximum(total_sq / size - mean * mean, 0.0))
        q = (jnp.clip(k[g], 1, size).astype(jnp.float32) - 0.5) / size
        guess = mean + std * jax.scipy.special.ndtri(q)
        pivots.append(sortable_keys(guess + std * _LADDER))  # ascending: the ladder ascends, std >= 0
    return jnp.minimum(jnp.stack(pivots), _KEY_MAX - 1)


def kth_keys(
    groups: Sequence[Sequence[jax.Array]],
    k: jax.Array,
    *,
    by_value: bool = True,
    keys_of: KeysOf = _given_keys,
    first_pivots: jax.Array | None = None,
) -> tuple[jax.Array, ...]:
    """The ``k[g]``-th smallest key (1-based) over the arrays of each group ``g``.

    Args:
      groups: ``G`` groups of arrays (any shapes): ``uint32`` keys (see
        :func:`sortable_keys`), or whatever ``keys_of`` maps to keys.
      k: ``(G,)`` ranks, each clamped into ``[1, group size]``.
      by_value: interpolate in the float values the keys stand for (scores);
        ``False`` interpolates the keys themselves (integers, e.g. indices).
      keys_of: ``keys_of(g, i, x)`` gives the keys of the ``i``-th array of
        group ``g``. It runs inside every pass, so keys computed from the
        arrays by a few elementwise ops are never stored (default: the arrays
        are the keys).
      first_pivots: ``(G, _PIVOTS)`` ascending keys for the first pass (see
        :func:`sample_pivots`). Without them the first pass finds each
        group's smallest and largest key, and the next one splits that range.

    Returns:
      ``(t, n_lt, n_le, passes)`` with ``(G,)`` entries: either ``t`` is the
      ``k``-th smallest key and ``n_lt = #{key < t} < k <= #{key <= t} = n_le``,
      or the search met a *cut* on the way, a ``t`` with exactly ``k`` keys below
      it, and ``n_lt = n_le = k``. Either way the ``k`` smallest keys are those
      below ``t`` plus the first ``k - n_lt`` equal to it. ``passes`` is the
      number of passes over the data the search took (int32 scalar).
    """
    sizes = np.array([sum(math.prod(x.shape) for x in arrays) for arrays in groups], np.int32)
    n_groups = len(groups)
    k = jnp.clip(jnp.asarray(k, jnp.int32), 1, sizes)

    # Per group: bracket [lo, hi] holding the answer, cb = #{key < lo}, ch = #{key <= hi}.
    def narrow(s, pivots, counts, mn, mx):
        """The state after a pass that counted keys at ``pivots`` and snapped the bracket to ``[mn, mx]``."""
        # Narrow each bracket to the pivots around k (they ascend), snapped to the keys in it.
        lo, cb, hi, ch = s["lo"], s["cb"], s["hi"], s["ch"]
        all_below, any_below = True, False
        for j in range(pivots.shape[1]):
            below = counts[:, j] < k
            lo = jnp.where(below, jnp.maximum(lo, pivots[:, j] + 1), lo)
            cb = jnp.where(below, jnp.maximum(cb, counts[:, j]), cb)
            hi = jnp.where(below, hi, jnp.minimum(hi, pivots[:, j]))
            ch = jnp.where(below, ch, jnp.minimum(ch, counts[:, j]))
            all_below, any_below = all_below & below, any_below | below
        lo, hi = jnp.maximum(lo, mn), jnp.minimum(hi, mx)
        # One distinct key left in the (old) bracket: it is the answer, and the
        # counts around it are the bracket's. Else go on with the new bracket.
        single = (mn == mx) & ~s["done"]
        active = ~s["done"] & ~single
        # A pivot that landed on exactly k keys is a cut: no need to find the k-th key itself.
        cut = active & (ch == k) & (hi < _KEY_MAX)
        lo, hi, cb = jnp.where(cut, hi + 1, lo), jnp.where(cut, hi + 1, hi), jnp.where(cut, k, cb)
        return dict(
            lo=jnp.where(single, mn, jnp.where(active, lo, s["lo"])),
            hi=jnp.where(single, mx, jnp.where(active, hi, s["hi"])),
            cb=jnp.where(active, cb, s["cb"]),
            ch=jnp.where(active, ch, s["ch"]),
            missed=all_below | ~any_below,
            done=s["done"] | single | (active & (lo == hi)),
        )

    everything = dict(
        lo=jnp.zeros(n_groups, jnp.uint32),
        hi=jnp.full(n_groups, _KEY_MAX),
        cb=jnp.zeros(n_groups, jnp.int32),
        ch=jnp.asarray(sizes),
        missed=jnp.zeros(n_groups, jnp.bool_),
        done=jnp.zeros(n_groups, jnp.bool_),
    )
    if first_pivots is None:  # a first pass finds each group's smallest and largest key
        none = jnp.zeros((n_groups, 0), jnp.uint32)
        _, lo, hi = _pass(groups, none, everything["lo"], everything["hi"], keys_of)
        # A group with exactly k keys at or below hi is cut at hi + 1 (lo = hi = hi + 1, cb = ch = k).
        cut = (k == sizes) & (hi < _KEY_MAX)
        first = dict(
            everything,
            lo=jnp.where(cut, hi + 1, lo),
            hi=jnp.where(cut, hi + 1, hi),
            cb=jnp.where(cut, k, 0),
            missed=jnp.ones(n_groups, jnp.bool_),
            done=(lo == hi) | cut,
        )
    else:  # the first pass counts at the given pivots (and finds the extremes: the bracket is every key)
        counts, lo, hi = _pass(groups, first_pivots, everything["lo"], everything["hi"], keys_of)
        first = narrow(everything, first_pivots, counts, lo, hi)
    range_v = _key_value(hi) - _key_value(lo)

    # The loop carries the fields as the columns of one (G, 6) uint32 array:
    # every separate small op costs a fixed overhead per pass on CPU.
    def pack(fields):
        return jnp.stack([fields[name].astype(jnp.uint32) for name in _FIELDS], axis=1)

    def unpack(state):
        s = {name: state[:, i] for i, name in enumerate(_FIELDS)}
        return {**s, "cb": s["cb"].astype(jnp.int32), "ch": s["ch"].astype(jnp.int32)} | {
            flag: s[flag] != 0 for flag in ("missed", "done")
        }

    def body(carry):
        state, passes, arrays = carry
        s = unpack(state)
        pivots = _pivots({**s, "range_v": range_v, "passes": passes}, k, by_value)
        counts, mn, mx = _pass(arrays, pivots, s["lo"], s["hi"], keys_of)
        # The arrays go around the loop behind a barrier. Else XLA hoists the
        # keys_of computation out of the loop as loop-invariant and stores the
        # keys: a write and a read of 4 bytes per entry, which cost more than
        # recomputing them in each pass.
        return lax.optimization_barrier((pack(narrow(s, pivots, counts, mn, mx)), passes + 1, arrays))

    def searching(carry):
        state, passes, _ = carry
        return ~jnp.all(unpack(state)["done"]) & (passes < _MAX_PASSES)

    state, passes, _ = lax.while_loop(searching, body, (pack(first), jnp.int32(1), groups))
    out = unpack(state)
    # Done: the bracket is the single key t = lo = hi (or a cut), with cb keys below it and ch at or below.
    return out["lo"], out["cb"], out["ch"], passes


def kth_key(keys: Sequence[jax.Array], k: jax.typing.ArrayLike) -> tuple[jax.Array, ...]:
    """The ``k``-th smallest key (1-based) over all arrays in ``keys``: :func:`kth_keys` for one group.

    Returns:
      ``(t, n_lt, n_le, passes)`` scalars.
    """
    t, n_lt, n_le, passes = kth_keys([keys], jnp.reshape(jnp.asarray(k, jnp.int32), (1,)))
    return t[0], n_lt[0], n_le[0], passes


class KthValues(NamedTuple):
    """Two adjacent order statistics of some scores (float32 scalars), from :func:`kth_values`."""

    kth: jax.Array  # the k-th smallest score
    next: jax.Array  # the (k+1)-th smallest (the k-th when k is the number of scores)
    any_nan: jax.Array  # bool: some score is NaN (the keys order NaNs by sign bit, below -inf or above inf)


def _max_min_any(a: tuple[jax.Array, ...], b: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
    return jnp.maximum(a[0], b[0]), jnp.minimum(a[1], b[1]), jnp.maximum(a[2], b[2])


def _neighbours(
    arrays: Sequence[jax.Array], score: Callable[[jax.Array], jax.Array], t: jax.Array, start: jax.Array
) -> tuple[jax.Array, ...]:
    """One pass: ``(max{key < t}, min{key >= start}, any score NaN)`` over all arrays (0 / ``_KEY_MAX`` if none).

    One variadic reduction per array, so a sharded array exchanges three scalars per device.
    """
    inits = (jnp.uint32(0), _KEY_MAX, jnp.int32(0))
    found = inits
    # (Behind a barrier, so XLA does not merge these keys with the search's and store them.)
    for x in lax.optimization_barrier(list(arrays)):
        scores = score(x)
        keys = sortable_keys(scores)
        operands = (
            jnp.where(keys < t, keys, jnp.uint32(0)),
            jnp.where(keys >= start, keys, _KEY_MAX),
            jnp.isnan(scores).astype(jnp.int32),
        )
        found = _max_min_any(found, lax.reduce(operands, inits, _max_min_any, tuple(range(x.ndim))))
    return found


def kth_values(
    arrays: Sequence[jax.Array], k: jax.typing.ArrayLike, *, score: Callable[[jax.Array], jax.Array] | None = None
) -> KthValues:
    """The ``k``-th and ``(k+1)``-th smallest scores (``k`` 1-based) over all entries of ``arrays``, sort-free.

    The ``k``-th key comes from :func:`kth_keys` (first pivots from
    :func:`sample_pivots`); one more pass finds the keys next to it (after a
    cut, the largest key below the cut is the ``k``-th). Order and values are
    those of :func:`sortable_keys`: ``-0.0`` comes back as ``0.0``, and NaNs
    are flagged in ``any_nan`` for the caller to propagate. On sharded arrays
    every pass exchanges a few scalars per device, nothing more.

    Args:
      arrays: float arrays (any shapes, any float dtype): the scores, or what
        ``score`` maps elementwise to them.
      k: the rank, an int32 scalar (traced or not), clamped into ``[1, n]``
        for ``n`` entries in all.
      score: a cheap elementwise map from ``arrays`` to the scores (e.g.
        ``jnp.abs``), computed in every pass instead of stored.

    Returns:
      :class:`KthValues` of float32 scalars.

    Raises:
      ValueError: ``arrays`` hold no entry, or more than a search counts.
    """
    score = _identity if score is None else score
    size = sum(math.prod(x.shape) for x in arrays)
    if size == 0:
        raise ValueError("`arrays` hold no entry: an order statistic needs at least one score.")
    if size > _MAX_TOTAL:
        raise ValueError(f"`arrays` hold {size} entries; one search handles at most {_MAX_TOTAL}.")
    k = jnp.clip(jnp.reshape(jnp.asarray(k, jnp.int32), (1,)), 1, size)
    keys_of = lambda g, i, x: sortable_keys(score(x))
    first_pivots = sample_pivots([arrays], k, score=score)
    t, n_lt, n_le, _ = kth_keys([arrays], k, keys_of=keys_of, first_pivots=first_pivots)
    t, n_lt, n_le, k = t[0], n_lt[0], n_le[0], k[0]
    cut = n_lt == k  # exactly k keys below t (t need not be a key)
    # The next key is the smallest above t, or at or above a cut. (t + 1 wraps only
    # when t is the largest key, and then n_le = n: the next is t, or k = n.)
    below, above, nan = _neighbours(arrays, score, t, jnp.where(cut, t, t + jnp.uint32(1)))
    kth = jnp.where(cut, below, t)
    nxt = jnp.where(k == size, kth, jnp.where(~cut & (n_le > k), t, above))
    return KthValues(_key_value(kth), _key_value(nxt), nan > 0)


def _flat_index(shape: tuple[int, ...], offset: int) -> jax.Array:
    """Row-major flat index of every entry (plus ``offset``), built from iotas (shards like its array)."""
    index = jnp.full(shape, offset, jnp.int32)
    stride = 1
    for axis in reversed(range(len(shape))):
        index = index + lax.broadcasted_iota(jnp.int32, shape, axis) * jnp.int32(stride)
        stride *= shape[axis]
    return index


@functools.partial(jax.jit, static_argnames="score")
def select(
    groups: Sequence[Sequence[jax.Array]],
    n_prune: Sequence[jax.typing.ArrayLike],
    *,
    score: Callable[[jax.Array], jax.Array] | None = None,
) -> list[list[jax.Array]]:
    """Keep-masks pruning exactly ``n_prune[g]`` of the smallest scores over each group's arrays.

    Ties at a group's threshold are pruned in order: its first array first,
    then by row-major index. Jitted (inside another ``jit`` it is inlined), so
    eager calls (``init``, one-shot :func:`jaxcompress.compress`) compile once
    per shape instead of dispatching op by op.

    Args:
      groups: groups of arrays (any shapes): the scores (any float dtype), or
        what ``score`` maps to scores.
      n_prune: per group, how many entries to prune, ``0 <= n <= group size``.
      score: a cheap elementwise map from the given arrays to their scores,
        e.g. ``jnp.abs`` for weights. It runs where the scores are used, in
        every pass of the search, so neither the scores nor their keys are
        stored. Without it the keys of the scores are computed once and stored. It
        is a static argument: pass the same function object every time.

    Returns:
      Per group, one boolean keep-mask per array (same shapes).
    """
    sizes = [[math.prod(s.shape) for s in arrays] for arrays in groups]
    for g, group_sizes in enumerate(sizes):
        if sum(group_sizes) > _MAX_TOTAL:
            raise ValueError(
                f"`scores` group {g} holds {sum(group_sizes)} entries; one selection handles at most "
                f"{_MAX_TOTAL}. Prune layer by layer (scope='layer') or over fewer leaves at a time."
            )
    totals = np.array([sum(g) for g in sizes], np.int32)
    n = jnp.clip(jnp.stack([jnp.asarray(x, jnp.int32) for x in n_prune]), 0, totals)
    first_pivots = sample_pivots(groups, n, score=score)
    if score is None:  # the keys, stored once (computing them in every pass from any float costs more)
        groups = [[sortable_keys(s) for s in arrays] for arrays in groups]
        keys_of = _given_keys
    else:
        keys_of = lambda g, i, x: sortable_keys(score(x))
    t, n_lt, n_le, _ = kth_keys(groups, n, keys_of=keys_of, first_pivots=first_pivots)
    ties_left = n - n_lt  # ties at t still to prune, 0 <= ties_left <= n_le - n_lt
    offsets = [np.cumsum([0, *gs[:-1]]).tolist() for gs in sizes]

    def index(g: int, i: int) -> jax.Array:
        # Built where used (from iotas, fused into the loop that reads them), never stored.
        return _flat_index(tuple(groups[g][i].shape), offsets[g][i])

    partial = (ties_left > 0) & (ties_left < n_le - n_lt)

    def cutoff_search():
        # Per group, the ties_left-th smallest flat index among the ties (the
        # same search, over index keys); prune the ties up to and including it.
        def index_keys(g, i, x):
            return jnp.where(keys_of(g, i, x) == t[g], index(g, i).astype(jnp.uint32), _KEY_MAX)

        rank = jnp.maximum(ties_left, 1)
        last, below, _, _ = kth_keys(groups, rank, by_value=False, keys_of=index_keys)
        return last.astype(jnp.int32) + jnp.where(below == rank, 0, 1)  # a cut is already one past

    # Usually every tie is pruned (cutoff past the end) or none is (cutoff 0).
    cutoff = jnp.where(ties_left > 0, jnp.int32(_MAX_TOTAL), jnp.int32(0))
    cutoff = lax.cond(jnp.any(partial), lambda: jnp.where(partial, cutoff_search(), cutoff), lambda: cutoff)

    def keep(g: int, i: int, x: jax.Array) -> jax.Array:
        k = keys_of(g, i, x)
        pruned = (k < t[g]) | ((k == t[g]) & (index(g, i) < cutoff[g]))
        return ~(pruned & (n[g] > 0))  # (the search ran for rank 1 when n = 0)

    # (Behind a barrier, so XLA does not merge these keys with the first pass's and store them.)
    return [[keep(g, i, x) for i, x in enumerate(arrays)] for g, arrays in enumerate(lax.optimization_barrier(groups))]


def keep_largest(scores: Sequence[jax.Array], n_prune: jax.typing.ArrayLike) -> list[jax.Array]:
    """Keep-masks pruning exactly ``n_prune`` of the smallest scores over all arrays (one group of :func:`select`)."""
    return select([scores], [n_prune])[0]

"""What a pruner removes: single weights, whole slices, blocks, or N of every M.

A :class:`Structure` turns a leaf's per-weight scores into per-*unit* scores
(a unit is what is kept or pruned together: a weight, an output channel, a
block), selects units with the exact, sort-free threshold search of
:mod:`jaxcompress.prune.threshold`, and expands the kept units back into a
per-weight mask. Counts are exact: a leaf with ``U`` units pruned to sparsity
``s`` loses exactly ``round(s * U)`` units.

* :class:`Unstructured`: every weight is a unit.
* :class:`Channel`: slices along ``axis`` (default the last: a Dense layer's
  neurons, a conv's output filters), scored by the L1 or L2 norm of their
  scores.
* :class:`Block`: ``block``-shaped tiles over the trailing axes, scored by the
  sum of their scores; the block shape must divide the leaf.
* :class:`NM`: in every group of ``m`` consecutive weights along ``axis``
  (default the reduction axis: a Dense kernel's input axis, a conv kernel's
  input channels), at most ``n`` survive; at the end of the schedule exactly
  ``n`` do, as sparse tensor cores need.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from jaxcompress._src.prune import threshold

__all__ = ["NM", "Block", "Channel", "Structure", "Unstructured", "n_prune"]


def n_prune(sparsity: jax.Array, units: int) -> jax.Array:
    """``round(sparsity * units)`` as int32, clamped to ``[0, units]``."""
    return jnp.clip(jnp.round(sparsity * units), 0, units).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class Structure:
    """Base class: how weights are grouped into units that are pruned together."""

    supports_global = True  # units of different leaves can share one threshold

    def check(self, path: str, shape: tuple[int, ...]) -> None:
        """Raises a ``ValueError`` naming ``path`` if the leaf cannot take this structure."""

    def num_units(self, shape: tuple[int, ...]) -> int:
        return math.prod(shape)

    def unit_scores(self, scores: jax.Array) -> jax.Array:
        """Per-unit scores from per-weight scores (float32)."""
        return scores

    def expand(self, keep: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        """The per-weight keep-mask of a per-unit keep-mask."""
        del shape
        return keep

    def count(self, sparsity: jax.Array, units: int) -> jax.Array:
        """Units to prune at ``sparsity``."""
        return n_prune(sparsity, units)

    def select(self, groups: list[list[jax.Array]], counts: list[jax.Array]) -> list[list[jax.Array]]:
        """Per group of unit-score arrays, keep-masks pruning exactly ``counts[g]`` lowest units.

        All groups are selected by one batched search (see :func:`threshold.select`).
        """
        return threshold.select(groups, counts)


@dataclasses.dataclass(frozen=True)
class Unstructured(Structure):
    """Every weight is pruned on its own."""


def _axis(axis: int, ndim: int, path: str, what: str) -> int:
    if not -ndim <= axis < ndim:
        raise ValueError(f"`axis`={axis} is out of range for {what} leaf {path!r} with {ndim} dimension(s).")
    return axis % ndim


@dataclasses.dataclass(frozen=True)
class Channel(Structure):
    """Whole slices along ``axis``, scored by the ``norm`` (``"l1"``/``"l2"``) of their scores."""

    axis: int = -1
    norm: str = "l2"

    def check(self, path, shape):
        _axis(self.axis, len(shape), path, "the")

    def num_units(self, shape):
        return shape[self.axis % len(shape)]

    def unit_scores(self, scores):
        axis = self.axis % scores.ndim
        others = tuple(a for a in range(scores.ndim) if a != axis)
        if self.norm == "l1":
            return jnp.sum(scores, axis=others)
        return jnp.sqrt(jnp.sum(jnp.square(scores), axis=others))

    def expand(self, keep, shape):
        axis = self.axis % len(shape)
        view = [1] * len(shape)
        view[axis] = shape[axis]
        return jnp.broadcast_to(jnp.reshape(keep, view), shape)


@dataclasses.dataclass(frozen=True)
class Block(Structure):
    """Tiles of shape ``block`` over the trailing ``len(block)`` axes, scored by their sum."""

    block: tuple[int, ...] = (1,)

    def check(self, path, shape):
        b = self.block
        if len(b) > len(shape):
            raise ValueError(
                f"`block`={b} has {len(b)} dimensions but leaf {path!r} has shape {shape}; "
                f"give at most {len(shape)} block dimensions (they cover the trailing axes)."
            )
        trailing = shape[len(shape) - len(b) :]
        if any(s % k for s, k in zip(trailing, b, strict=True)):
            raise ValueError(
                f"`block`={b} does not divide leaf {path!r} of shape {shape}: its trailing axes "
                f"{trailing} must be multiples of the block. Choose a block that divides them, or "
                f"exclude the leaf with `rule`."
            )

    def num_units(self, shape):
        lead = len(shape) - len(self.block)
        return math.prod(shape[:lead]) * math.prod(s // k for s, k in zip(shape[lead:], self.block, strict=True))

    def unit_scores(self, scores):
        lead = scores.ndim - len(self.block)
        split = list(scores.shape[:lead])
        for s, k in zip(scores.shape[lead:], self.block, strict=True):
            split += [s // k, k]
        tiles = jnp.reshape(scores, split)
        return jnp.sum(tiles, axis=tuple(lead + 2 * i + 1 for i in range(len(self.block))))

    def expand(self, keep, shape):
        lead = len(shape) - len(self.block)
        for i, k in enumerate(self.block):
            keep = jnp.repeat(keep, k, axis=lead + i)
        return keep


@dataclasses.dataclass(frozen=True)
class NM(Structure):
    """At most ``n`` of every ``m`` consecutive weights along ``axis`` survive.

    At sparsity ``s`` (ending at ``1 - n/m``) a leaf of ``G`` groups prunes
    ``K = round(s / (1 - n/m) * (m - n) * G)`` weights: ``K // G`` in every
    group, plus one more in the ``K % G`` groups whose next-smallest score is
    lowest (found by the same exact threshold search). So the layer's
    sparsity follows the schedule exactly, groups never differ by more than
    one, and at the end every group keeps exactly ``n``.
    """

    n: int = 2
    m: int = 4
    axis: int = -2
    supports_global = False

    def check(self, path, shape):
        if len(shape) < 2 and self.axis == -2:
            raise ValueError(
                f"N:M groups run along the reduction axis (-2), but leaf {path!r} has shape {shape}; "
                f"pass `axis` or exclude the leaf with `rule`."
            )
        axis = _axis(self.axis, len(shape), path, "the")
        if shape[axis] % self.m:
            raise ValueError(
                f"N:M groups of m={self.m} run along axis {axis} of leaf {path!r} (shape {shape}), "
                f"whose length {shape[axis]} is not a multiple of {self.m}. Exclude the leaf with "
                f"`rule` (first layers usually stay dense) or choose another `axis`."
            )

    def count(self, sparsity, units):
        final = 1.0 - self.n / self.m
        groups = units // self.m
        share = jnp.clip(sparsity / jnp.float32(final), 0.0, 1.0)
        return jnp.round(share * ((self.m - self.n) * groups)).astype(jnp.int32)

    def select(self, groups, counts):
        plans = []
        for (scores,), n in zip(groups, counts, strict=True):
            axis = self.axis % scores.ndim
            moved = jnp.moveaxis(scores, axis, -1)
            grouped = jnp.reshape(moved, (*moved.shape[:-1], moved.shape[-1] // self.m, self.m))
            n_groups = math.prod(grouped.shape[:-1])
            # Rank of each weight in its group (0 = lowest; ties by position), by pairwise comparison.
            a, b = grouped[..., :, None], grouped[..., None, :]
            before = jnp.arange(self.m)[None, :] < jnp.arange(self.m)[:, None]
            before = jnp.reshape(before, (1,) * (grouped.ndim - 1) + before.shape)
            rank = jnp.sum((b < a) | ((b == a) & before), axis=-1, dtype=jnp.int32)
            each = n // n_groups
            # The groups that prune one more are those whose next candidate scores lowest.
            candidate = jnp.sum(jnp.where(rank == jnp.minimum(each, self.m - 1), grouped, 0.0), axis=-1)
            plans.append((axis, moved.shape, rank, each, candidate, n - each * n_groups))
        spared = threshold.select([[plan[4]] for plan in plans], [plan[5] for plan in plans])
        keeps = []
        for (axis, shape, rank, each, _, _), (spare,) in zip(plans, spared, strict=True):
            prune = rank < each + jnp.where(spare, 0, 1)[..., None]
            keeps.append([jnp.moveaxis(jnp.reshape(~prune, shape), -1, axis)])
        return keeps

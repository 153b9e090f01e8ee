"""Dynamic sparse training: SET and RigL move connections at constant sparsity.

The network starts sparse (random mask, or magnitude from a dense model) and
every ``frequency`` steps each leaf drops the ``k`` kept weights of smallest
``|w|`` and grows ``k`` of the weights that were pruned before the update: at
random (SET) or where the dense gradient ``|g|`` is largest (RigL). Grown
connections are always new ones, so drop and grow are one batched selection.
Sparsity never changes. Grown weights start at exactly 0, and
:func:`jaxcompress.optim.with_compression` resets their entries in every
optimizer-state subtree shaped like the params (Adam's moments, momentum
traces; any optax optimizer, including ``chain`` and ``inject_hyperparams``).
``apply`` masks with a straight-through gradient, so the gradient reaching a
pruned weight is the dense gradient RigL needs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxcompress._src import core, validate
from jaxcompress._src import masks as packed
from jaxcompress._src import paths as paths_lib
from jaxcompress._src.core import safe_increment
from jaxcompress._src.prune import distributions, threshold
from jaxcompress._src.prune.scores import hash_uniform, leaf_salt
from jaxcompress._src.prune.ste import apply_straight_through

__all__ = ["DSTState", "rigl", "set_"]

_NEVER = 2**31 - 1
_INIT_MASKS = ("random", "magnitude")


class DSTState(NamedTuple):
    """State of :func:`set_` and :func:`rigl`."""

    count: jax.Array  # shape=(), dtype=int32: updates done so far (saturating)
    masks: core.Masks  # keep-masks of the selected leaves, by path


def _lowest_first(keep: jax.Array, scores: jax.Array) -> jax.Array:
    """Scores with every weight outside ``keep`` ranked below all others."""
    return jnp.where(keep, scores, -jnp.inf)


def _dynamic(
    name: str,
    sparsity: float,
    drop_fraction: float,
    frequency: int,
    end: int,
    decay: bool,
    distribution: str,
    overrides: Mapping[paths_lib.Rule, float] | None,
    rule: paths_lib.Rule,
    init_mask: str,
    seed: int,
) -> core.Transform:
    sparsity = validate.check_fraction(sparsity, argument="sparsity")
    drop_fraction = validate.check_fraction(drop_fraction, argument="drop_fraction", allow_one=True)
    if drop_fraction == 0.0:
        raise ValueError("`drop_fraction` must be > 0 (the fraction of kept weights moved per update).")
    frequency = validate.check_int(frequency, argument="frequency", minimum=1)
    end = validate.check_int(end, argument="end", minimum=1)
    distribution = distributions.check_distribution(distribution)
    if init_mask not in _INIT_MASKS:
        raise ValueError(f"`init_mask` must be one of {_INIT_MASKS}, got {init_mask!r}.")
    seed = validate.check_int(seed, argument="seed")
    selector = paths_lib.as_selector(rule)

    def kept_counts(paths: list[str], flat: Mapping[str, Any]) -> dict[str, int]:
        shapes = [tuple(jnp.shape(flat[p])) for p in paths]
        fixed = distributions.resolve_overrides(overrides, paths, flat)
        with jax.ensure_compile_time_eval():
            per_leaf = distributions.layer_sparsities(
                distribution, shapes, [fixed.get(p) for p in paths], jnp.float32(sparsity), sparsity
            )
            sizes = [math.prod(s) for s in shapes]
            return {p: n - round(float(sl) * n) for p, n, sl in zip(paths, sizes, per_leaf, strict=True)}

    def init(params: Any):
        flat, selected = validate.selected_weights(selector, params)
        kept = kept_counts(selected, flat)
        scores = [
            hash_uniform(tuple(jnp.shape(flat[p])), leaf_salt(seed, i))
            if init_mask == "random"
            else jnp.abs(flat[p].astype(jnp.float32))
            for i, p in enumerate(selected)
        ]
        sizes = [math.prod(jnp.shape(flat[p])) for p in selected]
        keeps = threshold.select([[s] for s in scores], [n - kept[p] for p, n in zip(selected, sizes, strict=True)])
        masks = core.Masks({p: packed.pack(k) for p, (k,) in zip(selected, keeps, strict=True)})
        return DSTState(jnp.zeros([], jnp.int32), masks)

    def drop_and_grow(weights, grads, masks, fraction, step):
        paths = list(masks)
        kept = kept_counts(paths, weights)
        sizes = [math.prod(masks[p].shape) for p in paths]
        keep = [masks[p].unpack() for p in paths]
        # k = round(fraction * kept), at most the pruned count (growth needs room).
        n_move = [
            jnp.minimum(jnp.round(fraction * kept[p]).astype(jnp.int32), min(kept[p], size - kept[p]))
            for p, size in zip(paths, sizes, strict=True)
        ]
        if grads is None:
            grow_scores = [hash_uniform(masks[p].shape, leaf_salt(seed, i) + step * 7919) for i, p in enumerate(paths)]
        else:
            grow_scores = [jnp.abs(grads[p].astype(jnp.float32)) for p in paths]
        # One batched selection. Drop: each leaf keeps the kept - k largest |w| of
        # its kept weights. Grow: the k best of the weights pruned before this update.
        drop_groups = [
            [_lowest_first(k, jnp.abs(weights[p].astype(jnp.float32)))] for p, k in zip(paths, keep, strict=True)
        ]
        grow_groups = [[_lowest_first(~k, g)] for k, g in zip(keep, grow_scores, strict=True)]
        chosen = threshold.select(
            drop_groups + grow_groups,
            [size - kept[p] + n for p, size, n in zip(paths, sizes, n_move, strict=True)]
            + [size - n for size, n in zip(sizes, n_move, strict=True)],
        )
        survive, grow = chosen[: len(paths)], chosen[len(paths) :]
        return {p: packed.pack(s | g) for p, (s,), (g,) in zip(paths, survive, grow, strict=True)}

    def update(params: Any, state: DSTState, grads: Any = None, **extra_args) -> DSTState:
        del extra_args
        keep = state.masks.keep
        if decay and grads is None:
            raise ValueError(
                f"{name} grows connections by gradient magnitude: call update(params, state, grads) "
                f"(jc.optim.with_compression passes them)."
            )
        weights = paths_lib.leaves_at(params, keep)
        validate.check_leaf_shapes(weights, {p: m.shape for p, m in keep.items()}, method=name)
        leaf_grads = paths_lib.leaves_at(grads, keep) if decay else None
        step = state.count
        if decay:  # RigL: cosine decay of the drop fraction to 0 at `end`.
            progress = jnp.minimum(step.astype(jnp.float32) / end, 1.0)
            fraction = drop_fraction / 2.0 * (1.0 + jnp.cos(jnp.pi * progress))
        else:
            fraction = jnp.float32(drop_fraction)
        moving = (step > 0) & (step % frequency == 0) & (step < end)
        new_keep = lax.cond(
            moving, lambda: drop_and_grow(weights, leaf_grads, dict(keep), fraction, step), lambda: dict(keep)
        )
        return DSTState(safe_increment(step), core.Masks(new_keep))

    def apply(params: Any, state: DSTState) -> Any:
        return apply_straight_through(params, state.masks.keep)

    return core.Transform(init, *core.checking_state(DSTState, name, update, apply))


def set_(
    sparsity: float,
    *,
    drop_fraction: float = 0.3,
    frequency: int = 100,
    end: int = _NEVER,
    distribution: str = "uniform",
    overrides: Mapping[paths_lib.Rule, float] | None = None,
    rule: paths_lib.Rule = paths_lib.KERNELS,
    init_mask: str = "random",
    seed: int = 0,
) -> core.Transform:
    """SET (Sparse Evolutionary Training): drop the smallest weights, regrow at random.

    ``init`` builds a random mask at ``sparsity`` (exact count per leaf, shared
    by ``distribution``). At every step ``t`` with ``t % frequency == 0`` and
    ``0 < t < end``, each leaf with ``K`` kept weights drops the
    ``k = round(drop_fraction * K)`` of smallest ``|w|`` and grows ``k``
    uniformly at random among the weights pruned before the update (``k`` is
    capped by their number); grown weights start at 0.

    Args:
      sparsity: the constant sparsity, in ``[0, 1)``.
      drop_fraction: fraction ``zeta`` of kept weights moved per update, in ``(0, 1]``.
      frequency: steps between updates.
      end: no updates from this step on (default: never stop).
      distribution: ``"uniform"`` or ``"erk"``.
      overrides: ``{rule: sparsity}`` for leaves that take their own sparsity.
      rule: which leaves to prune (default: every leaf with ``ndim >= 2``).
      init_mask: ``"random"`` (sparse from scratch) or ``"magnitude"`` (from a
        trained dense model).
      seed: random seed for the initial mask and the regrowth.

    Returns:
      A :class:`jaxcompress.Transform` whose state is :class:`DSTState`.

    Example:
      >>> import jax, jax.numpy as jnp, jaxcompress as jc
      >>> t = jc.prune.set_(0.75, frequency=1)
      >>> params = {"w": jnp.arange(1.0, 17.0).reshape(4, 4)}
      >>> update = jax.jit(t.update)
      >>> state = update(params, update(params, t.init(params)))
      >>> int(jc.masks_of(state)["w"].unpack().sum())
      4

    References:
      Mocanu et al., "Scalable Training of Artificial Neural Networks with
      Adaptive Sparse Connectivity inspired by Network Science", 2018.
      https://arxiv.org/abs/1707.04780
    """
    return _dynamic(
        "SET", sparsity, drop_fraction, frequency, end, False,
        distribution, overrides, rule, init_mask, seed,
    )  # fmt: skip


def rigl(
    sparsity: float,
    *,
    end: int,
    drop_fraction: float = 0.3,
    frequency: int = 100,
    distribution: str = "uniform",
    overrides: Mapping[paths_lib.Rule, float] | None = None,
    rule: paths_lib.Rule = paths_lib.KERNELS,
    init_mask: str = "random",
    seed: int = 0,
) -> core.Transform:
    """RigL: drop the smallest weights, regrow where the dense gradient is largest.

    As :func:`set_`, but at update step ``t`` the moved fraction decays as
    ``drop_fraction / 2 * (1 + cos(pi * t / end))`` and the ``k`` grown weights
    are those of largest ``|dL/dw|`` among the weights pruned before the
    update (the straight-through ``apply`` makes that gradient dense). Updates stop at ``end`` (the paper
    uses 75% of training).

    Args:
      sparsity: the constant sparsity, in ``[0, 1)``.
      end: last step of topology updates (the drop fraction decays to 0 there).
      drop_fraction: initial fraction ``alpha`` of kept weights moved, in ``(0, 1]``.
      frequency: steps between updates (``Delta T``).
      distribution: ``"uniform"`` or ``"erk"`` (the paper's best).
      overrides: ``{rule: sparsity}`` for leaves that take their own sparsity.
      rule: which leaves to prune (default: every leaf with ``ndim >= 2``).
      init_mask: ``"random"`` (the paper's) or ``"magnitude"``.
      seed: random seed of the initial mask.

    Returns:
      A :class:`jaxcompress.Transform` whose state is :class:`DSTState`; its
      ``update`` needs ``grads``.

    Example:
      >>> import jax, jax.numpy as jnp, jaxcompress as jc
      >>> t = jc.prune.rigl(0.5, end=10, frequency=1, drop_fraction=0.5, init_mask="magnitude")
      >>> params = {"w": jnp.array([[1.0, 2.0], [3.0, 4.0]])}
      >>> grads = {"w": jnp.array([[9.0, 0.0], [0.0, 8.0]])}
      >>> state, update = t.init(params), jax.jit(t.update)
      >>> for _ in range(2):
      ...     state = update(params, state, grads)
      >>> jc.masks_of(state)["w"].unpack().tolist()
      [[True, False], [False, True]]

    References:
      Evci, Gale, Menick, Castro & Elsen, "Rigging the Lottery: Making All
      Tickets Winners", 2020. https://arxiv.org/abs/1911.11134
    """
    return _dynamic(
        "RigL", sparsity, drop_fraction, frequency, end, True,
        distribution, overrides, rule, init_mask, seed,
    )  # fmt: skip

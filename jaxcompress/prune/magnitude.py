"""Magnitude pruning (layer-wise or global) on a sparsity schedule."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxcompress import _validate, core, schedules
from jaxcompress import masks as packed
from jaxcompress import paths as paths_lib
from jaxcompress.prune import threshold

__all__ = ["MagnitudeState", "magnitude"]

_SCOPES = ("layer", "global")


class MagnitudeState(NamedTuple):
    """State of :func:`magnitude`."""

    count: jax.Array  # shape=(), dtype=int32: updates done so far (saturating)
    sparsity: jax.Array  # shape=(), dtype=float32: target of the latest mask refresh
    masks: dict[str, packed.PackedMask]  # keep-masks of the selected leaves, by path


def safe_increment(count: jax.Array) -> jax.Array:
    """``count + 1``, saturating at the int32 maximum instead of wrapping."""
    return jnp.where(count < jnp.iinfo(jnp.int32).max, count + 1, count)


def n_to_prune(sparsity: jax.Array, size: int) -> jax.Array:
    """``round(sparsity * size)`` as int32, clamped to ``[0, size]``."""
    return jnp.clip(jnp.round(sparsity * size), 0, size).astype(jnp.int32)


def magnitude(
    sparsity: schedules.ScheduleLike,
    *,
    rule: paths_lib.Rule = paths_lib.KERNELS,
    scope: str = "layer",
) -> core.Transform:
    """Magnitude pruning: zero the weights of smallest ``|w|``.

    At each mask-update step of the schedule, every selected leaf (``scope=
    "layer"``) or all selected leaves together (``scope="global"``, one
    threshold) keep their largest-magnitude weights, pruning exactly
    ``round(s * n)`` of ``n`` weights for target sparsity ``s``. The threshold
    is found by a bitwise search (no sort); ties are broken by index.

    Args:
      sparsity: a number in ``[0, 1)`` (one-shot at the first update) or a
        :mod:`jaxcompress.schedules` schedule, e.g. ``polynomial(0, 0.9, ...)``.
      rule: which leaves to prune (default: every leaf with ``ndim >= 2``).
      scope: ``"layer"`` (each leaf reaches the target) or ``"global"``.

    Returns:
      A :class:`jaxcompress.Transform` whose state is :class:`MagnitudeState`.

    Example:
      >>> import jax.numpy as jnp, jaxcompress as jc
      >>> params = {"w": jnp.arange(1.0, 9.0).reshape(2, 4)}
      >>> pruned, _ = jc.compress(jc.prune.magnitude(0.5), params)
      >>> pruned["w"].tolist()
      [[0.0, 0.0, 0.0, 0.0], [5.0, 6.0, 7.0, 8.0]]

    References:
      Han, Pool, Tran & Dally, "Learning both Weights and Connections for
      Efficient Neural Networks", 2015. https://arxiv.org/abs/1506.02626
      Zhu & Gupta, "To prune, or not to prune", 2017. https://arxiv.org/abs/1710.01878
    """
    schedule = schedules.as_schedule(sparsity)
    selector = paths_lib.as_selector(rule)
    if scope not in _SCOPES:
        raise ValueError(f"`scope` must be one of {_SCOPES}, got {scope!r}.")

    def init(params: Any) -> MagnitudeState:
        flat, _ = paths_lib.flatten(params)
        selected = paths_lib.select(selector, params)
        _validate.check_float_leaves(flat, selected)
        _validate.check_finite_leaves(flat, selected)
        masks = {p: packed.ones(tuple(jnp.shape(flat[p]))) for p in selected}
        return MagnitudeState(jnp.zeros([], jnp.int32), jnp.zeros([], jnp.float32), masks)

    def refresh(params: Any, target: jax.Array, masks: dict[str, packed.PackedMask]) -> dict:
        scores = [jnp.abs(w) for w in core.leaves_at(params, list(masks)).values()]
        if scope == "global":
            total = sum(math.prod(s.shape) for s in scores)
            keeps = threshold.keep_largest(scores, n_to_prune(target, total))
        else:
            keeps = [threshold.keep_largest([s], n_to_prune(target, s.size))[0] for s in scores]
        return {p: packed.pack(keep) for p, keep in zip(masks, keeps, strict=True)}

    def update(params: Any, state: MagnitudeState, grads: Any = None, **extra_args) -> MagnitudeState:
        del grads, extra_args
        step = state.count
        target = schedule(step)
        do_refresh = schedule.is_update_step(step)
        masks = lax.cond(
            do_refresh,
            lambda: refresh(params, target, state.masks),
            lambda: state.masks,
        )
        sparsity_now = jnp.where(do_refresh, target, state.sparsity)
        return MagnitudeState(safe_increment(step), sparsity_now, masks)

    def apply(params: Any, state: MagnitudeState) -> Any:
        def mask_leaf(path: str, w: jax.Array) -> jax.Array:
            return jnp.where(state.masks[path].unpack(), w, jnp.zeros((), w.dtype))

        return core.map_selected(mask_leaf, params, list(state.masks))

    def masks(state: MagnitudeState) -> dict[str, packed.PackedMask]:
        return dict(state.masks)

    return core.Transform(init, update, apply, masks)

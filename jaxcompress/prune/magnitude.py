"""Magnitude pruning (layer-wise, global or ERK) on a sparsity schedule."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import jax

from jaxcompress import core, schedules
from jaxcompress import masks as packed
from jaxcompress import paths as paths_lib
from jaxcompress.prune.pruner import pruner

__all__ = ["MagnitudeState", "magnitude"]


class MagnitudeState(NamedTuple):
    """State of :func:`magnitude`."""

    count: jax.Array  # shape=(), dtype=int32: updates done so far (saturating)
    sparsity: jax.Array  # shape=(), dtype=float32: target of the latest mask refresh
    masks: dict[str, packed.PackedMask]  # keep-masks of the selected leaves, by path


def magnitude(
    sparsity: schedules.ScheduleLike,
    *,
    rule: paths_lib.Rule = paths_lib.KERNELS,
    scope: str = "layer",
    distribution: str = "uniform",
    overrides: Mapping[paths_lib.Rule, float] | None = None,
) -> core.Transform:
    """Magnitude pruning: zero the weights of smallest ``|w|``.

    At each mask-update step of the schedule, with target sparsity ``s``,
    every selected leaf of ``n`` weights (``scope="layer"``) prunes exactly
    ``round(s_l * n)`` of them, where ``s_l = s`` (``distribution="uniform"``)
    or its Erdos-Renyi-Kernel share (``"erk"``); with ``scope="global"`` one
    threshold over all selected leaves prunes ``round(s * sum n)``. The
    threshold is found by a sort-free counting search; ties are broken by
    index. During fine-tuning with :func:`jaxcompress.optim.with_compression`
    pruned weights are exactly zero, so they score lowest and stay pruned as
    the schedule rises.

    Args:
      sparsity: a number in ``[0, 1)`` (one-shot at the first update) or a
        :mod:`jaxcompress.schedules` schedule, e.g. ``polynomial(0, 0.9, ...)``.
      rule: which leaves to prune (default: every leaf with ``ndim >= 2``).
      scope: ``"layer"`` (each leaf reaches its target) or ``"global"``.
      distribution: ``"uniform"`` or ``"erk"`` (with ``scope="layer"``).
      overrides: ``{rule: sparsity}`` for leaves that take their own sparsity,
        e.g. ``{"Dense_0": 0.0}`` to keep the first layer dense.

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
    return pruner(
        sparsity,
        score="magnitude",
        scope=scope,
        distribution=distribution,
        overrides=overrides,
        rule=rule,
        state_type=MagnitudeState,
    )

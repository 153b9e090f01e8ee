"""Structured pruning: N:M sparsity, whole channels (filters, neurons), blocks.

Each factory is :func:`jaxcompress.prune.pruner` with a structure from
:mod:`jaxcompress.prune.structures`; scores are ``"magnitude"`` (default),
``"saliency"`` (needs gradients) or ``"random"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax

from jaxcompress import _validate, core, schedules
from jaxcompress import masks as packed
from jaxcompress import paths as paths_lib
from jaxcompress.prune import scores as scores_lib
from jaxcompress.prune import structures
from jaxcompress.prune.distributions import Overrides
from jaxcompress.prune.pruner import pruner

__all__ = ["BlockState", "ChannelState", "NMState", "block", "channel", "n_m"]


class NMState(NamedTuple):
    """State of :func:`n_m`."""

    count: jax.Array  # shape=(), dtype=int32: updates done so far (saturating)
    sparsity: jax.Array  # shape=(), dtype=float32: target of the latest mask refresh
    masks: dict[str, packed.PackedMask]  # keep-masks of the selected leaves, by path


class ChannelState(NamedTuple):
    """State of :func:`channel`."""

    count: jax.Array  # shape=(), dtype=int32: updates done so far (saturating)
    sparsity: jax.Array  # shape=(), dtype=float32: target of the latest mask refresh
    masks: dict[str, packed.PackedMask]  # keep-masks of the selected leaves, by path


class BlockState(NamedTuple):
    """State of :func:`block`."""

    count: jax.Array  # shape=(), dtype=int32: updates done so far (saturating)
    sparsity: jax.Array  # shape=(), dtype=float32: target of the latest mask refresh
    masks: dict[str, packed.PackedMask]  # keep-masks of the selected leaves, by path


def _stateless_score(score: str | scores_lib.Score) -> scores_lib.Score:
    score = scores_lib.as_score(score)
    if score.accumulates:
        raise ValueError(
            f"`score`={score.name!r} accumulates per-weight state; structured factories take "
            f"'magnitude', 'saliency' or 'random'. Use jc.prune.pruner(score=..., structure=...) for it."
        )
    return score


def n_m(
    n: int,
    m: int,
    sparsity: schedules.ScheduleLike | None = None,
    *,
    axis: int = -2,
    score: str | scores_lib.Score = "magnitude",
    rule: paths_lib.Rule = paths_lib.KERNELS,
) -> core.Transform:
    """N:M sparsity: at most ``n`` of every ``m`` consecutive weights survive (2:4, 4:8, ...).

    Groups run along ``axis``, by default the reduction (input) axis that
    sparse kernels need: ``M`` consecutive rows of a Dense kernel ``(in, out)``
    for each output column, ``M`` consecutive input channels of a conv kernel
    ``HWIO`` for each position and output channel. The schedule's sparsity
    ``s`` must end at ``1 - n/m``; along the way the leaf prunes exactly
    ``round(s / (1 - n/m) * (m - n) * G)`` weights over its ``G`` groups,
    ``K // G`` in every group plus one more in the groups whose next weight
    scores lowest, so every group ends with exactly ``n`` weights.

    Args:
      n: weights kept per group, ``1 <= n < m``.
      m: group size.
      sparsity: a schedule ending at ``1 - n/m`` (default: one-shot at the
        first update).
      axis: the axis groups run along (default ``-2``, the reduction axis).
      score: ``"magnitude"``, ``"saliency"`` or ``"random"``.
      rule: which leaves to prune; every selected leaf's ``axis`` must be a
        multiple of ``m`` (first layers with 1 or 3 input channels usually
        stay dense: exclude them here).

    Returns:
      A :class:`jaxcompress.Transform` whose state is :class:`NMState`.

    Example:
      >>> import jax.numpy as jnp, jaxcompress as jc
      >>> params = {"w": jnp.array([[1.0], [-5.0], [3.0], [2.0]])}
      >>> pruned, _ = jc.compress(jc.prune.n_m(2, 4), params)
      >>> pruned["w"].ravel().tolist()
      [0.0, -5.0, 3.0, 0.0]

    References:
      Mishra et al., "Accelerating Sparse Deep Neural Networks", 2021.
      https://arxiv.org/abs/2104.08378
      Zhou et al., "Learning N:M Fine-grained Structured Sparse Neural Networks
      From Scratch", 2021. https://arxiv.org/abs/2102.04010
    """
    n = _validate.check_int(n, argument="n", minimum=1)
    m = _validate.check_int(m, argument="m", minimum=2)
    if n >= m:
        raise ValueError(f"N:M sparsity needs `n` < `m` (n of every m weights kept), got n={n}, m={m}.")
    final = 1.0 - n / m
    schedule = schedules.one_shot(final) if sparsity is None else schedules.as_schedule(sparsity)
    if abs(schedule.final - final) > 1e-6:
        raise ValueError(
            f"The `sparsity` schedule of {n}:{m} sparsity must end at 1 - n/m = {final:.6g}, got {schedule.final!r}."
        )
    return pruner(
        schedule,
        score=_stateless_score(score),
        structure=structures.NM(n, m, _validate.check_int(axis, argument="axis")),
        rule=rule,
        state_type=NMState,
    )


def channel(
    sparsity: schedules.ScheduleLike,
    *,
    axis: int = -1,
    norm: str = "l2",
    score: str | scores_lib.Score = "magnitude",
    rule: paths_lib.Rule = paths_lib.KERNELS,
    scope: str = "layer",
    distribution: str = "uniform",
    overrides: Overrides = None,
) -> core.Transform:
    """Channel, filter or neuron pruning: zero whole slices along ``axis``.

    A slice ``c`` (an output neuron of a Dense kernel, an output filter of a
    conv kernel with the default ``axis=-1``; input slices with ``axis=-2``)
    scores ``||S_c||_1`` or ``||S_c||_2`` of its per-weight scores ``S``
    (``|w|`` for magnitude: the L1 / L2 norm of the filter). A leaf with ``C``
    slices prunes exactly ``round(s * C)`` of them.

    Args:
      sparsity: a number in ``[0, 1)`` or a :mod:`jaxcompress.schedules` schedule.
      axis: the axis whose slices are pruned (default ``-1``, outputs).
      norm: ``"l1"`` or ``"l2"``.
      score: ``"magnitude"``, ``"saliency"`` or ``"random"``.
      rule: which leaves to prune (default: every leaf with ``ndim >= 2``).
      scope: ``"layer"`` or ``"global"`` (one threshold on slice scores).
      distribution: ``"uniform"`` or ``"erk"``.
      overrides: ``{rule: sparsity}`` for leaves that take their own sparsity.

    Returns:
      A :class:`jaxcompress.Transform` whose state is :class:`ChannelState`.

    Example:
      >>> import jax.numpy as jnp, jaxcompress as jc
      >>> params = {"w": jnp.array([[1.0, 0.1, 2.0], [1.0, 0.2, -2.0]])}
      >>> pruned, _ = jc.compress(jc.prune.channel(1 / 3), params)
      >>> pruned["w"].tolist()
      [[1.0, 0.0, 2.0], [1.0, 0.0, -2.0]]

    References:
      Li, Kadav, Durdanovic, Samet & Graf, "Pruning Filters for Efficient
      ConvNets", 2017. https://arxiv.org/abs/1608.08710
    """
    if norm not in ("l1", "l2"):
        raise ValueError(f"`norm` must be 'l1' or 'l2', got {norm!r}.")
    return pruner(
        sparsity,
        score=_stateless_score(score),
        structure=structures.Channel(_validate.check_int(axis, argument="axis"), norm),
        rule=rule,
        scope=scope,
        distribution=distribution,
        overrides=overrides,
        state_type=ChannelState,
    )


def block(
    sparsity: schedules.ScheduleLike,
    shape: Sequence[int],
    *,
    score: str | scores_lib.Score = "magnitude",
    rule: paths_lib.Rule = paths_lib.KERNELS,
    scope: str = "layer",
    distribution: str = "uniform",
    overrides: Overrides = None,
) -> core.Transform:
    """Block pruning: zero whole ``shape``-sized tiles of the trailing axes.

    The leaf's trailing ``len(shape)`` axes are cut into tiles of ``shape``
    (which must divide them); a tile scores the sum of its weights' scores
    (``sum |w|`` for magnitude) and a leaf of ``B`` tiles prunes exactly
    ``round(s * B)``. Blocks of e.g. ``(1, 16)`` or ``(16, 16)`` map onto
    block-sparse kernels.

    Args:
      sparsity: a number in ``[0, 1)`` or a :mod:`jaxcompress.schedules` schedule.
      shape: the tile shape, over the trailing axes.
      score: ``"magnitude"``, ``"saliency"`` or ``"random"``.
      rule: which leaves to prune (default: every leaf with ``ndim >= 2``).
      scope: ``"layer"`` or ``"global"``.
      distribution: ``"uniform"`` or ``"erk"``.
      overrides: ``{rule: sparsity}`` for leaves that take their own sparsity.

    Returns:
      A :class:`jaxcompress.Transform` whose state is :class:`BlockState`.

    Example:
      >>> import jax.numpy as jnp, jaxcompress as jc
      >>> params = {"w": jnp.array([[1.0, 1.0, 5.0, 5.0], [1.0, 1.0, 5.0, 5.0]])}
      >>> pruned, _ = jc.compress(jc.prune.block(0.5, (2, 2)), params)
      >>> pruned["w"].tolist()
      [[0.0, 0.0, 5.0, 5.0], [0.0, 0.0, 5.0, 5.0]]

    References:
      Gray, Radford & Kingma, "GPU Kernels for Block-Sparse Weights", 2017.
      https://cdn.openai.com/blocksparse/blocksparsepaper.pdf
    """
    if isinstance(shape, int) or not isinstance(shape, Sequence) or not shape:
        raise TypeError(f"`shape` must be a non-empty sequence of block sizes, e.g. (4, 4); got {shape!r}.")
    shape = tuple(_validate.check_int(b, argument="shape", minimum=1) for b in shape)
    return pruner(
        sparsity,
        score=_stateless_score(score),
        structure=structures.Block(shape),
        rule=rule,
        scope=scope,
        distribution=distribution,
        overrides=overrides,
        state_type=BlockState,
    )

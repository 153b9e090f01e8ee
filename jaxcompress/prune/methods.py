"""Unstructured pruning by other scores: random, saliency, movement, SNIP.

Each factory is :func:`jaxcompress.prune.pruner` with its score and sensible
defaults; all of them take the pruner's ``rule``, ``scope``,
``distribution`` and ``overrides``. Scores that need gradients get them from
``update(params, state, grads)``; :func:`jaxcompress.optim.with_compression`
passes the raw gradients of each step.
"""

from __future__ import annotations

from typing import NamedTuple

import jax

from jaxcompress import core, schedules
from jaxcompress import masks as packed
from jaxcompress import paths as paths_lib
from jaxcompress.prune.distributions import Overrides
from jaxcompress.prune.pruner import pruner

__all__ = [
    "MovementState",
    "RandomState",
    "SNIPState",
    "SaliencyState",
    "movement",
    "random",
    "saliency",
    "snip",
]


class RandomState(NamedTuple):
    """State of :func:`random`."""

    count: jax.Array  # shape=(), dtype=int32: updates done so far (saturating)
    sparsity: jax.Array  # shape=(), dtype=float32: target of the latest mask refresh
    masks: dict[str, packed.PackedMask]  # keep-masks of the selected leaves, by path


class SaliencyState(NamedTuple):
    """State of :func:`saliency`."""

    count: jax.Array  # shape=(), dtype=int32: updates done so far (saturating)
    sparsity: jax.Array  # shape=(), dtype=float32: target of the latest mask refresh
    masks: dict[str, packed.PackedMask]  # keep-masks of the selected leaves, by path


class SNIPState(NamedTuple):
    """State of :func:`snip`."""

    count: jax.Array  # shape=(), dtype=int32: updates done so far (saturating)
    sparsity: jax.Array  # shape=(), dtype=float32: target of the latest mask refresh
    masks: dict[str, packed.PackedMask]  # keep-masks of the selected leaves, by path


class MovementState(NamedTuple):
    """State of :func:`movement`."""

    count: jax.Array  # shape=(), dtype=int32: updates done so far (saturating)
    sparsity: jax.Array  # shape=(), dtype=float32: target of the latest mask refresh
    masks: dict[str, packed.PackedMask]  # keep-masks of the selected leaves, by path
    scores: dict[str, jax.Array]  # accumulated -w * g, by path, in the param dtype


def random(
    sparsity: schedules.ScheduleLike,
    *,
    seed: int = 0,
    rule: paths_lib.Rule = paths_lib.KERNELS,
    scope: str = "layer",
    distribution: str = "uniform",
    overrides: Overrides = None,
) -> core.Transform:
    """Random pruning: a baseline that ignores the weights.

    Every weight gets a fixed uniform score ``u ~ U[0, 1)`` (drawn from
    ``seed`` and the leaf's position); the lowest are pruned, exactly
    ``round(s * n)`` per leaf. Masks at growing sparsity are nested, so a
    gradual schedule never brings a pruned weight back.

    Args:
      sparsity: a number in ``[0, 1)`` or a :mod:`jaxcompress.schedules` schedule.
      seed: the random seed.
      rule: which leaves to prune (default: every leaf with ``ndim >= 2``).
      scope: ``"layer"`` or ``"global"``.
      distribution: ``"uniform"`` or ``"erk"`` (random ERK is the usual
        starting mask of sparse training).
      overrides: ``{rule: sparsity}`` for leaves that take their own sparsity.

    Returns:
      A :class:`jaxcompress.Transform` whose state is :class:`RandomState`.

    Example:
      >>> import jax.numpy as jnp, jaxcompress as jc
      >>> pruned, _ = jc.compress(jc.prune.random(0.75, seed=1), {"w": jnp.ones((4, 4))})
      >>> int((pruned["w"] == 0).sum())
      12

    References:
      Liu et al., "The Unreasonable Effectiveness of Random Pruning", 2022.
      https://arxiv.org/abs/2202.02643
    """
    return pruner(
        sparsity,
        score="random",
        seed=seed,
        rule=rule,
        scope=scope,
        distribution=distribution,
        overrides=overrides,
        state_type=RandomState,
    )


def saliency(
    sparsity: schedules.ScheduleLike,
    *,
    rule: paths_lib.Rule = paths_lib.KERNELS,
    scope: str = "layer",
    distribution: str = "uniform",
    overrides: Overrides = None,
) -> core.Transform:
    """First-order Taylor (saliency) pruning: prune the smallest ``|w * g|``.

    Removing weight ``w`` changes the loss by about ``-g w`` (first-order
    Taylor expansion), so the weights with the smallest ``|w g|`` matter least.
    The gradient is that of the step on which the mask is refreshed.

    Args:
      sparsity: a number in ``[0, 1)`` or a :mod:`jaxcompress.schedules` schedule.
      rule: which leaves to prune (default: every leaf with ``ndim >= 2``).
      scope: ``"layer"`` or ``"global"``.
      distribution: ``"uniform"`` or ``"erk"``.
      overrides: ``{rule: sparsity}`` for leaves that take their own sparsity.

    Returns:
      A :class:`jaxcompress.Transform` whose state is :class:`SaliencyState`;
      its ``update`` needs ``grads``.

    Example:
      >>> import jax.numpy as jnp, jaxcompress as jc
      >>> params = {"w": jnp.array([[1.0, 2.0], [3.0, 4.0]])}
      >>> grads = {"w": jnp.array([[4.0, 0.1], [1.0, 0.1]])}
      >>> pruned, _ = jc.compress(jc.prune.saliency(0.5), params, grads)
      >>> pruned["w"].tolist()
      [[1.0, 0.0], [3.0, 0.0]]

    References:
      Molchanov, Tyree, Karras, Aila & Kautz, "Pruning Convolutional Neural
      Networks for Resource Efficient Inference", 2017. https://arxiv.org/abs/1611.06440
    """
    return pruner(
        sparsity,
        score="saliency",
        rule=rule,
        scope=scope,
        distribution=distribution,
        overrides=overrides,
        state_type=SaliencyState,
    )


def movement(
    sparsity: schedules.ScheduleLike,
    *,
    rule: paths_lib.Rule = paths_lib.KERNELS,
    scope: str = "layer",
    distribution: str = "uniform",
    overrides: Overrides = None,
) -> core.Transform:
    """Movement pruning: prune the weights moving towards zero.

    Every ``update`` accumulates ``S += -w * g`` per weight (the first-order
    change of ``|w|`` under a gradient step, up to the learning rate); on
    mask-update steps the weights of lowest ``S`` are pruned. A weight that
    grows away from zero scores high even if it is small now. The running
    ``S`` lives in the state in the param dtype: it costs as many bytes as the
    pruned params (magnitude pruning's state costs 1/32).

    Args:
      sparsity: a number in ``[0, 1)`` or a :mod:`jaxcompress.schedules` schedule
        (usually gradual: scores need steps to accumulate).
      rule: which leaves to prune (default: every leaf with ``ndim >= 2``).
      scope: ``"layer"`` or ``"global"``.
      distribution: ``"uniform"`` or ``"erk"``.
      overrides: ``{rule: sparsity}`` for leaves that take their own sparsity.

    Returns:
      A :class:`jaxcompress.Transform` whose state is :class:`MovementState`;
      its ``update`` needs ``grads``.

    Example:
      >>> import jax.numpy as jnp, jaxcompress as jc
      >>> t = jc.prune.movement(jc.schedules.one_shot(0.5, at=1))
      >>> params = {"w": jnp.array([[1.0, 2.0], [3.0, 4.0]])}
      >>> grads = {"w": jnp.array([[-1.0, 1.0], [-1.0, 1.0]])}  # columns 1 shrink
      >>> state = t.update(params, t.init(params), grads)
      >>> state = t.update(params, state, grads)
      >>> t.apply(params, state)["w"].tolist()
      [[1.0, 0.0], [3.0, 0.0]]

    References:
      Sanh, Wolf & Rush, "Movement Pruning: Adaptive Sparsity by Fine-Tuning",
      2020. https://arxiv.org/abs/2005.07683
    """
    return pruner(
        sparsity,
        score="movement",
        rule=rule,
        scope=scope,
        distribution=distribution,
        overrides=overrides,
        state_type=MovementState,
    )


def snip(
    sparsity: float,
    *,
    rule: paths_lib.Rule = paths_lib.KERNELS,
    scope: str = "global",
    overrides: Overrides = None,
) -> core.Transform:
    """SNIP: prune once at initialization by connection sensitivity ``|w * g|``.

    The first ``update`` (give it the gradients of one batch at
    initialization) keeps the connections of largest ``|w g|``, by default
    with one threshold across the network as in the paper; the mask then
    stays fixed while the sparse network trains from scratch.

    Args:
      sparsity: a number in ``[0, 1)``.
      rule: which leaves to prune (default: every leaf with ``ndim >= 2``).
      scope: ``"global"`` (the paper's) or ``"layer"``.
      overrides: ``{rule: sparsity}`` for leaves that take their own sparsity.

    Returns:
      A :class:`jaxcompress.Transform` whose state is :class:`SNIPState`; its
      first ``update`` needs ``grads``.

    Example:
      >>> import jax.numpy as jnp, jaxcompress as jc
      >>> params = {"a": jnp.array([[1.0, 1.0]]), "b": jnp.array([[1.0, 1.0]])}
      >>> grads = {"a": jnp.array([[0.1, 0.2]]), "b": jnp.array([[3.0, 0.3]])}
      >>> pruned, _ = jc.compress(jc.prune.snip(0.5), params, grads)
      >>> pruned["a"].tolist(), pruned["b"].tolist()
      ([[0.0, 0.0]], [[1.0, 1.0]])

    References:
      Lee, Ajanthan & Torr, "SNIP: Single-shot Network Pruning based on
      Connection Sensitivity", 2019. https://arxiv.org/abs/1810.02340
    """
    if isinstance(sparsity, schedules.Schedule):
        raise TypeError("`sparsity` of snip must be a number: SNIP prunes once, at initialization.")
    return pruner(
        sparsity,
        score="saliency",
        rule=rule,
        scope=scope,
        overrides=overrides,
        state_type=SNIPState,
    )

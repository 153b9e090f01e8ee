"""The named pruning methods: thin factories over :func:`~jaxcompress.prune.pruner`.

Each one is :func:`jaxcompress.prune.pruner` with its score, structure and
defaults; all return a :class:`jaxcompress.Transform` whose state is
:class:`~jaxcompress.prune.PrunerState`. Scores that need gradients get them
from ``update(params, state, grads)``; :func:`jaxcompress.optim.with_compression`
passes the raw gradients of each step.

* unstructured: :func:`magnitude`, :func:`random`, :func:`saliency`,
  :func:`movement`, :func:`snip`;
* structured: :func:`n_m` (N of every M), :func:`channel` (filters, neurons),
  :func:`block` (tiles).
"""

from __future__ import annotations

from collections.abc import Sequence

from jaxcompress._src import core, schedules, validate
from jaxcompress._src import paths as paths_lib
from jaxcompress._src.prune import scores as scores_lib
from jaxcompress._src.prune import structures
from jaxcompress._src.prune.distributions import Overrides
from jaxcompress._src.prune.pruner import pruner

__all__ = ["block", "channel", "magnitude", "movement", "n_m", "random", "saliency", "snip"]


def magnitude(
    sparsity: schedules.ScheduleLike,
    *,
    rule: paths_lib.Rule = paths_lib.KERNELS,
    scope: str = "layer",
    distribution: str = "uniform",
    overrides: Overrides = None,
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
      A :class:`jaxcompress.Transform` whose state is :class:`PrunerState`.

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
    )


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
      A :class:`jaxcompress.Transform` whose state is :class:`PrunerState`.

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
      A :class:`jaxcompress.Transform` whose state is :class:`PrunerState`;
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
      A :class:`jaxcompress.Transform` whose state is :class:`PrunerState`;
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
      A :class:`jaxcompress.Transform` whose state is :class:`PrunerState`; its
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
    )


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
      A :class:`jaxcompress.Transform` whose state is :class:`PrunerState`.

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
    n = validate.check_int(n, argument="n", minimum=1)
    m = validate.check_int(m, argument="m", minimum=2)
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
        structure=structures.NM(n, m, validate.check_int(axis, argument="axis")),
        rule=rule,
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
      A :class:`jaxcompress.Transform` whose state is :class:`PrunerState`.

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
        structure=structures.Channel(validate.check_int(axis, argument="axis"), norm),
        rule=rule,
        scope=scope,
        distribution=distribution,
        overrides=overrides,
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
      A :class:`jaxcompress.Transform` whose state is :class:`PrunerState`.

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
    shape = tuple(validate.check_int(b, argument="shape", minimum=1) for b in shape)
    return pruner(
        sparsity,
        score=_stateless_score(score),
        structure=structures.Block(shape),
        rule=rule,
        scope=scope,
        distribution=distribution,
        overrides=overrides,
    )

"""Sparsity-inducing training: L1 / group-lasso penalties and proximal steps.

A penalty added to the loss pulls weights towards zero but, under (sub)gradient
descent, rarely makes them *exactly* zero. A proximal step does: after each
optimizer update it applies the penalty's proximal operator, which sets every
weight (or group) within the threshold to exactly 0, so magnitude pruning can
cut them afterwards without changing the function.

* :func:`l1_penalty`, :func:`group_lasso_penalty`: scalars to add to the loss.
* :func:`proximal_l1`, :func:`proximal_group_lasso`: optax transformations to
  chain after the optimizer (``optax.chain(optax.sgd(lr), proximal_l1(lr * lam))``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxcompress._src import paths as paths_lib
from jaxcompress._src.core import safe_increment

__all__ = [
    "ProximalState",
    "group_lasso_penalty",
    "l1_penalty",
    "proximal_group_lasso",
    "proximal_l1",
]

Strength = float | Callable[[jax.Array], jax.Array]


def _selected(params: Any, rule: paths_lib.Rule) -> dict[str, jax.Array]:
    return paths_lib.leaves_at(params, paths_lib.select(rule, params))


def _group_norms(w: jax.Array, axis: int) -> jax.Array:
    axis = axis % w.ndim
    others = tuple(a for a in range(w.ndim) if a != axis)
    return jnp.sqrt(jnp.sum(jnp.square(w.astype(jnp.float32)), axis=others, keepdims=True))


def l1_penalty(params: Any, rule: paths_lib.Rule = paths_lib.KERNELS) -> jax.Array:
    """The L1 norm of the selected leaves: ``sum_l sum_i |w_i|`` (float32).

    Example:
      >>> import jax.numpy as jnp, jaxcompress as jc
      >>> float(jc.prune.l1_penalty({"w": jnp.array([[1.0, -2.0]]), "b": jnp.ones(2)}))
      3.0

    References:
      Tibshirani, "Regression Shrinkage and Selection via the Lasso", 1996.
      https://doi.org/10.1111/j.2517-6161.1996.tb02080.x
    """
    return sum(jnp.sum(jnp.abs(w.astype(jnp.float32))) for w in _selected(params, rule).values())


def group_lasso_penalty(params: Any, rule: paths_lib.Rule = paths_lib.KERNELS, *, axis: int = -1) -> jax.Array:
    """Group lasso over slices along ``axis``: ``sum_g ||w_g||_2`` (float32).

    With ``axis=-1`` each group is an output channel / neuron, so the penalty
    drives whole channels to zero (structured sparsity learning).

    Example:
      >>> import jax.numpy as jnp, jaxcompress as jc
      >>> float(jc.prune.group_lasso_penalty({"w": jnp.array([[3.0, 0.0], [4.0, 1.0]])}))
      6.0

    References:
      Yuan & Lin, "Model Selection and Estimation in Regression with Grouped
      Variables", 2006. https://doi.org/10.1111/j.1467-9868.2005.00532.x
      Wen, Wu, Wang, Chen & Li, "Learning Structured Sparsity in Deep Neural
      Networks", 2016. https://arxiv.org/abs/1608.03665
    """
    return sum(jnp.sum(_group_norms(w, axis)) for w in _selected(params, rule).values())


class ProximalState(NamedTuple):
    """State of :func:`proximal_l1` and :func:`proximal_group_lasso`."""

    count: jax.Array  # shape=(), dtype=int32: steps taken (for a strength schedule)


def _proximal(strength: Strength, rule: paths_lib.Rule, shrink: Callable, name: str) -> optax.GradientTransformation:
    number = isinstance(strength, (int, float)) and not isinstance(strength, bool)
    if not callable(strength) and not (number and strength >= 0):
        raise ValueError(f"`strength` must be a number >= 0 or a schedule step -> number, got {strength!r}.")
    selector = paths_lib.as_selector(rule)

    def init(params: Any) -> ProximalState:
        paths_lib.select(selector, params, what="rule")
        return ProximalState(jnp.zeros([], jnp.int32))

    def update(updates: Any, state: ProximalState, params: Any = None):
        if params is None:
            raise ValueError(f"{name} needs `params`: call update(updates, state, params).")
        t = jnp.asarray(strength(state.count) if callable(strength) else strength, jnp.float32)
        paths = paths_lib.select(selector, params, what="rule")
        flat_params = paths_lib.leaves_at(params, paths)

        def step(path: str, u: jax.Array) -> jax.Array:
            w = flat_params[path]
            target = shrink(w.astype(jnp.float32) + u.astype(jnp.float32), t).astype(w.dtype)
            return (target - w).astype(u.dtype)  # w + (target - w) == target exactly where target == 0

        return paths_lib.map_selected(step, updates, paths), ProximalState(safe_increment(state.count))

    return optax.GradientTransformation(init, update)


def proximal_l1(strength: Strength, rule: paths_lib.Rule = paths_lib.KERNELS) -> optax.GradientTransformation:
    """Proximal L1 step (soft thresholding) after the optimizer's update.

    With ``v = w + u`` the optimizer's new weight, the update becomes
    ``prox(v) - w`` where

    .. math:: \\mathrm{prox}(v) = \\mathrm{sign}(v) \\max(|v| - t, 0)

    so every weight with ``|v| <= t`` lands on exactly 0. For SGD with learning
    rate ``lr`` and penalty ``lam * ||w||_1``, use ``t = lr * lam``
    (ISTA / proximal gradient descent).

    Args:
      strength: the threshold ``t`` (a number, or a schedule ``step -> t``).
      rule: which leaves to shrink (default: every leaf with ``ndim >= 2``).

    Returns:
      An ``optax.GradientTransformation`` to chain after the optimizer; its
      ``update`` needs ``params``.

    Example:
      >>> import jax.numpy as jnp, optax, jaxcompress as jc
      >>> tx = optax.chain(optax.sgd(0.1), jc.prune.proximal_l1(0.05))
      >>> params = {"w": jnp.array([[0.03, -1.0]])}
      >>> updates, _ = tx.update({"w": jnp.zeros((1, 2))}, tx.init(params), params)
      >>> optax.apply_updates(params, updates)["w"].tolist()
      [[0.0, -0.949999988079071]]

    References:
      Beck & Teboulle, "A Fast Iterative Shrinkage-Thresholding Algorithm for
      Linear Inverse Problems", 2009. https://doi.org/10.1137/080716542
    """
    return _proximal(strength, rule, lambda v, t: jnp.sign(v) * jnp.maximum(jnp.abs(v) - t, 0.0), "proximal_l1")


def proximal_group_lasso(
    strength: Strength, rule: paths_lib.Rule = paths_lib.KERNELS, *, axis: int = -1
) -> optax.GradientTransformation:
    """Proximal group-lasso step: shrink whole slices along ``axis`` towards 0.

    For each slice ``v_g`` of the optimizer's new weights,

    .. math:: \\mathrm{prox}(v_g) = v_g \\max\\left(1 - \\frac{t}{\\|v_g\\|_2}, 0\\right)

    so a slice with ``||v_g|| <= t`` (a whole neuron or filter with the
    default ``axis=-1``) becomes exactly 0, ready for :func:`channel` pruning.

    Args:
      strength: the threshold ``t`` (a number, or a schedule ``step -> t``).
      rule: which leaves to shrink (default: every leaf with ``ndim >= 2``).
      axis: the axis whose slices are the groups (default ``-1``, outputs).

    Returns:
      An ``optax.GradientTransformation`` to chain after the optimizer.

    Example:
      >>> import jax.numpy as jnp, optax, jaxcompress as jc
      >>> tx = optax.chain(optax.sgd(0.1), jc.prune.proximal_group_lasso(1.0))
      >>> params = {"w": jnp.array([[0.3, 3.0], [0.4, 4.0]])}
      >>> updates, _ = tx.update({"w": jnp.zeros((2, 2))}, tx.init(params), params)
      >>> optax.apply_updates(params, updates)["w"].tolist()
      [[0.0, 2.4000000953674316], [0.0, 3.200000047683716]]

    References:
      Yuan & Lin, "Model Selection and Estimation in Regression with Grouped
      Variables", 2006. https://doi.org/10.1111/j.1467-9868.2005.00532.x
    """

    def shrink(v, t):
        norms = _group_norms(v, axis)
        return v * jnp.maximum(1.0 - t / jnp.maximum(norms, jnp.float32(1e-30)), 0.0)

    return _proximal(strength, rule, shrink, "proximal_group_lasso")

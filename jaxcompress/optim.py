"""Optax wrapper that keeps compression invariants during fine-tuning."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxcompress import core
from jaxcompress import paths as paths_lib

__all__ = ["WithCompressionState", "compression_state", "with_compression"]


class WithCompressionState(NamedTuple):
    """State of :func:`with_compression`."""

    inner_state: optax.OptState  # the wrapped optimizer's state
    compression_state: Any  # the recipe's state


def with_compression(
    inner: optax.GradientTransformation, recipe: core.Transform
) -> optax.GradientTransformationExtraArgs:
    """Wraps an optax optimizer so that it advances ``recipe`` and enforces its masks.

    On every ``update(grads, state, params)``:

    1. the recipe's state advances one step (``recipe.update(params, ...)``):
       schedules move on, masks are refreshed on their steps;
    2. the inner optimizer computes its updates as usual;
    3. every weight outside the recipe's hard masks gets the update ``-param``,
       so ``optax.apply_updates`` leaves it exactly ``0.0``, whatever the inner
       optimizer does (momentum, weight decay, ...).

    The recipe's state lives in the optimizer state; read it with
    :func:`compression_state` to run the compressed forward pass
    ``recipe.apply(params, cstate)``.

    Args:
      inner: any optax gradient transformation (``optax.adamw(...)``,
        ``optax.inject_hyperparams(optax.sgd)(...)``, ``optax.chain(...)``).
      recipe: a :class:`jaxcompress.Transform` (e.g. a :func:`jaxcompress.chain`).

    Returns:
      An ``optax.GradientTransformationExtraArgs``; extra keyword arguments are
      forwarded to both the recipe and the inner optimizer.

    Example:
      >>> import jax.numpy as jnp, optax, jaxcompress as jc
      >>> recipe = jc.prune.magnitude(0.5)
      >>> tx = jc.optim.with_compression(optax.sgd(0.1), recipe)
      >>> params = {"w": jnp.arange(1.0, 5.0).reshape(2, 2)}
      >>> state = tx.init(params)
      >>> updates, state = tx.update({"w": jnp.ones((2, 2))}, state, params)
      >>> optax.apply_updates(params, updates)["w"].tolist()
      [[0.0, 0.0], [2.9000000953674316, 3.9000000953674316]]
    """
    if not isinstance(recipe, core.Transform):
        raise TypeError(f"`recipe` must be a jaxcompress Transform, got {type(recipe).__name__}: {recipe!r}.")
    if not hasattr(inner, "init") or not hasattr(inner, "update"):
        raise TypeError(f"`inner` must be an optax GradientTransformation, got {type(inner).__name__}.")
    inner = optax.with_extra_args_support(inner)

    def init(params: Any) -> WithCompressionState:
        return WithCompressionState(inner.init(params), recipe.init(params))

    def update(updates: Any, state: WithCompressionState, params: Any = None, **extra_args):
        if params is None:
            raise ValueError(
                "`params` is required: call tx.update(grads, opt_state, params) so that "
                "jaxcompress can refresh masks and keep pruned weights at zero."
            )
        cstate = recipe.update(params, state.compression_state, updates, **extra_args)
        updates, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
        updates = enforce_masks(updates, params, recipe.masks(cstate))
        return updates, WithCompressionState(inner_state, cstate)

    return optax.GradientTransformationExtraArgs(init, update)


def enforce_masks(updates: Any, params: Any, masks: dict[str, jax.Array]) -> Any:
    """Replaces the update of every masked-out weight by ``-param``."""
    if not masks:
        return updates
    flat_updates, treedef = paths_lib.flatten(updates)
    flat_params, _ = paths_lib.flatten(params)
    for path, keep in masks.items():
        u, p = flat_updates[path], flat_params[path]
        flat_updates[path] = jnp.where(keep, u, -p.astype(u.dtype))
    return paths_lib.unflatten(treedef, flat_updates)


def compression_state(opt_state: Any) -> Any:
    """The recipe state inside an optimizer state built by :func:`with_compression`.

    Works when the wrapper is nested (inside ``optax.chain``, ``optax.masked``,
    ...), as long as there is exactly one.
    """
    found = [
        node.compression_state
        for node in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, WithCompressionState))
        if isinstance(node, WithCompressionState)
    ]
    if len(found) != 1:
        raise ValueError(
            f"`opt_state` must contain exactly one jaxcompress.optim.with_compression state, "
            f"found {len(found)}. Build the optimizer with jc.optim.with_compression(inner, recipe)."
        )
    return found[0]

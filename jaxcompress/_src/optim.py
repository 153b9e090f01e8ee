"""The optax wrapper that keeps compression invariants during fine-tuning."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxcompress._src import core, sharding
from jaxcompress._src import paths as paths_lib
from jaxcompress._src.masks import PackedMask

__all__ = ["WithCompressionState", "compression_state", "value_and_grad", "with_compression"]


class WithCompressionState(NamedTuple):
    """State of :func:`with_compression`."""

    inner_state: optax.OptState  # the wrapped optimizer's state, over the params
    compression_state: Any  # the recipe's state
    learned_state: optax.OptState  # the learned-parameter optimizer's state (() if none)


def with_compression(
    inner: optax.GradientTransformation,
    recipe: core.Recipe,
    *,
    learned_optimizer: optax.GradientTransformation | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Wraps an optax optimizer so that it advances ``recipe`` and enforces its masks.

    On every ``update(grads, state, params)``:

    1. the inner optimizer computes its updates from the gradients of the
       weights inside the recipe's hard masks (:func:`jaxcompress.masks_of`);
       for a weight outside them it sees a zero gradient and keeps zeros in
       every param-shaped part of its state (Adam's moments, momentum traces,
       ``MultiSteps`` accumulators; found exactly with
       ``optax.tree_utils.tree_map_params``);
    2. the recipe's state advances one step (``recipe.update(params, state,
       grads, **extra_args)``, with the gradients as given): schedules move on,
       masks are refreshed on their steps, decided by the state's own counter;
    3. every weight outside the masks gets the update ``-param``, so
       ``optax.apply_updates`` leaves it exactly ``0.0``, whatever the inner
       optimizer does (momentum, weight decay, ...). A weight that a mask
       *regrows* (dynamic sparse training) starts from exactly ``0.0`` with
       fresh optimizer state.

    If the recipe has learned parameters (see :class:`jaxcompress.Learned`),
    pass their gradients as ``learned_grads=`` (from :func:`value_and_grad`);
    ``learned_optimizer`` (default: ``inner``) trains them.

    Wrapped in ``optax.MultiSteps(tx, k)``, the recipe advances once per
    *emitted* step: its schedules count optimizer steps, not micro-batches
    (50 micro-steps with ``k=2`` reach the sparsity of step 25). It also
    zeroes the params outside a mask only at emitted steps, so a mask that
    starts sparse (SET, RigL) reaches the params at the first one; wrap
    ``MultiSteps`` inside (``with_compression(optax.MultiSteps(...), recipe)``)
    to have them zero from the first micro-step.

    On params sharded over a mesh, ``init`` places every state leaf like the
    param it belongs to (:func:`jaxcompress.train.state_shardings`); under
    ``jit`` traced params carry no sharding, so build the state with
    :func:`jaxcompress.train.init_sharded` instead.

    Args:
      inner: any optax gradient transformation (``optax.adamw(...)``,
        ``optax.inject_hyperparams(optax.sgd)(...)``, ``optax.chain(...)``).
      recipe: a jaxcompress method or :func:`jaxcompress.chain`.
      learned_optimizer: optimizer for the recipe's learned parameters.

    Returns:
      An ``optax.GradientTransformationExtraArgs``; extra keyword arguments of
      ``update`` are forwarded to both the recipe and the inner optimizer.

    Example:
      >>> import jax.numpy as jnp, optax, jaxcompress as jc
      >>> recipe = jc.prune.magnitude(0.5)
      >>> tx = jc.optim.with_compression(optax.sgd(0.5), recipe)
      >>> params = {"w": jnp.arange(1.0, 5.0).reshape(2, 2)}
      >>> state = tx.init(params)
      >>> updates, state = tx.update({"w": jnp.ones((2, 2))}, state, params)
      >>> optax.apply_updates(params, updates)["w"].tolist()
      [[0.0, 0.0], [2.5, 3.5]]
    """
    core.check_recipe(recipe)
    for name, tx in (("inner", inner), ("learned_optimizer", learned_optimizer)):
        if tx is not None and not (callable(getattr(tx, "init", None)) and callable(getattr(tx, "update", None))):
            raise TypeError(f"`{name}` must be an optax GradientTransformation, got {type(tx).__name__}: {tx!r}.")
    inner = optax.with_extra_args_support(inner)
    learned_tx = optax.with_extra_args_support(learned_optimizer) if learned_optimizer is not None else inner

    def init(params: Any) -> WithCompressionState:
        cstate = recipe.init(params)
        learned = core.learned_params(cstate)
        state = WithCompressionState(inner.init(params), cstate, learned_tx.init(learned) if learned else ())
        return sharding.place_like(state, params)  # every leaf like its param on a mesh (a no-op on one device)

    def update(updates: Any, state: WithCompressionState, params: Any = None, *, learned_grads=None, **extra_args):
        if params is None:
            raise ValueError(
                "`params` is required: call tx.update(grads, opt_state, params) so that "
                "jaxcompress can refresh masks and keep pruned weights at zero."
            )
        check_like(updates, params, argument="grads")
        old_masks = core.masks_of(state.compression_state)
        # The inner optimizer sees no gradient and keeps no state for a weight
        # outside the masks (all fused into its own elementwise update).
        inner_state = clear_pruned(inner, state.inner_state, params, old_masks)
        inner_updates, inner_state = inner.update(zero_pruned(updates, old_masks), inner_state, params, **extra_args)
        cstate = recipe.update(params, state.compression_state, updates, **extra_args)
        kept = _stable(old_masks, core.masks_of(cstate))
        updates = enforce_masks(inner_updates, params, kept)
        cstate, learned_state = _train_learned(cstate, state.learned_state, learned_grads, learned_tx, extra_args)
        return updates, WithCompressionState(inner_state, cstate, learned_state)

    return optax.GradientTransformationExtraArgs(init, update)


def check_like(tree: Any, params: Any, *, argument: str) -> None:
    """``tree`` must have the params' structure, shapes and dtypes (checked once, at trace time)."""
    flat, _ = paths_lib.flatten(tree)
    flat_params, _ = paths_lib.flatten(params)
    if list(flat) != list(flat_params):
        missing = [p for p in flat_params if p not in flat]
        extra = [p for p in flat if p not in flat_params]
        raise ValueError(
            f"`{argument}` must have the structure of `params`: missing leaves {missing}, extra leaves {extra}."
        )
    for p, x in flat.items():
        w = flat_params[p]
        if jnp.shape(x) != jnp.shape(w):
            raise ValueError(
                f"`{argument}` leaf {p!r} has shape {jnp.shape(x)}, but the param has shape {jnp.shape(w)}; "
                f"they must match exactly (no broadcasting)."
            )
        if jnp.result_type(x) != jnp.result_type(w):
            raise ValueError(
                f"`{argument}` leaf {p!r} has dtype {jnp.result_type(x)}, but the param has dtype "
                f"{jnp.result_type(w)}; they must match (cast the gradients, or the params, first)."
            )


def _stable(old: dict[str, PackedMask], new: dict[str, PackedMask]) -> dict[str, PackedMask]:
    """Weights kept before and after this step's refresh (regrown ones start at zero)."""
    return {p: new[p] & old[p] if p in old else new[p] for p in new}


def _train_learned(cstate, learned_state, learned_grads, learned_tx, extra_args):
    learned = core.learned_params(cstate)
    if not learned:
        if learned_grads not in (None, ()):
            raise ValueError("`learned_grads` was given but the recipe has no learned parameters.")
        return cstate, learned_state
    if learned_grads is None:
        raise ValueError(
            "This recipe has learned parameters: pass their gradients with "
            "tx.update(grads, opt_state, params, learned_grads=...); "
            "jc.optim.value_and_grad(loss_fn) returns them."
        )
    learned_updates, learned_state = learned_tx.update(learned_grads, learned_state, learned, **extra_args)
    return core.replace_learned(cstate, optax.apply_updates(learned, learned_updates)), learned_state


def enforce_masks(updates: Any, params: Any, masks: dict[str, PackedMask]) -> Any:
    """Replaces the update of every masked-out weight by ``-param``."""
    if not masks:
        return updates
    flat_params, _ = paths_lib.flatten(params)
    return paths_lib.map_selected(lambda p, u: masks[p].keep(u, -flat_params[p]), updates, masks)


def zero_pruned(tree: Any, masks: dict[str, PackedMask]) -> Any:
    """``tree`` (shaped like the params) with every entry outside ``masks`` set to zero."""
    return paths_lib.map_selected(lambda p, leaf: masks[p].keep(leaf), tree, masks) if masks else tree


def clear_pruned(inner: optax.GradientTransformation, inner_state: Any, params: Any, masks: dict[str, PackedMask]):
    """Zeroes the entries of weights outside ``masks`` in every copy of the params inside ``inner_state``.

    ``optax.tree_utils.tree_map_params`` finds those copies (Adam's ``mu`` and
    ``nu``, momentum traces, ``MultiSteps`` accumulators; not Adafactor's
    factored rows and columns). With the gradients of those weights zeroed too,
    the inner optimizer keeps zeros for them, so a weight that a mask regrows
    starts with fresh state.
    """
    if not masks:
        return inner_state
    flat, treedef = paths_lib.flatten(params)
    keep_tree = paths_lib.unflatten(treedef, {p: masks.get(p) for p in flat})
    # An unconditional select, not a lax.cond: it fuses into the optimizer's own update of each moment.
    clear = lambda leaf, keep: leaf if keep is None else keep.keep(leaf)
    try:
        return optax.tree_utils.tree_map_params(inner, clear, inner_state, keep_tree)
    except (TypeError, ValueError, IndexError, AttributeError, KeyError):
        # An init that reads the params' leaves (optax's line searches) cannot run on optax's placeholder:
        # match the subtrees with the params' structure and shapes instead.
        return _clear_matching(inner_state, params, keep_tree, clear)


def _clear_matching(inner_state: Any, params: Any, keep_tree: Any, clear: Callable) -> Any:
    params_def = jax.tree.structure(params)
    shapes = [jnp.shape(w) for w in jax.tree.leaves(params)]
    is_copy = lambda node: (
        jax.tree.structure(node) == params_def and [jnp.shape(x) for x in jax.tree.leaves(node)] == shapes
    )
    return jax.tree.map(
        lambda node: jax.tree.map(clear, node, keep_tree) if is_copy(node) else node, inner_state, is_leaf=is_copy
    )


def compression_state(opt_state: Any) -> Any:
    """The recipe state inside an optimizer state built by :func:`with_compression`.

    Works when the wrapper is nested (inside ``optax.chain``, ``optax.MultiSteps``,
    ...), as long as there is exactly one.
    """
    is_node = lambda x: isinstance(x, WithCompressionState)
    found = [n.compression_state for n in jax.tree.leaves(opt_state, is_leaf=is_node) if is_node(n)]
    if len(found) != 1:
        raise ValueError(
            f"`opt_state` must contain exactly one jaxcompress.optim.with_compression state, "
            f"found {len(found)}. Build the optimizer with jc.optim.with_compression(inner, recipe)."
        )
    return found[0]


def value_and_grad(loss_fn: Callable[..., jax.Array], *, has_aux: bool = False) -> Callable:
    """Gradients of ``loss_fn(params, cstate, *args)`` for the params and the learned parameters.

    Returns a function ``(params, cstate, *args) -> (value, grads,
    learned_grads)`` (``value`` is ``(loss, aux)`` with ``has_aux``). Pass
    ``learned_grads`` on as ``tx.update(grads, opt_state, params,
    learned_grads=learned_grads)``. With no learned parameters,
    ``learned_grads`` is ``()``.

    Example:
      >>> import jax.numpy as jnp, jaxcompress as jc
      >>> recipe = jc.quant.int8()
      >>> params = {"w": jnp.ones((2, 2))}
      >>> loss = lambda p, c: jnp.sum(recipe.apply(p, c)["w"])
      >>> value, grads, learned_grads = jc.optim.value_and_grad(loss)(params, recipe.init(params))
      >>> float(value), grads["w"].tolist(), learned_grads
      (4.0, [[1.0, 1.0], [1.0, 1.0]], ())
    """

    def wrapped(params: Any, cstate: Any, *args: Any):
        learned = core.learned_params(cstate)

        def split_loss(p, learned_values):
            return loss_fn(p, core.replace_learned(cstate, learned_values), *args)

        value, (grads, learned_grads) = jax.value_and_grad(split_loss, argnums=(0, 1), has_aux=has_aux)(params, learned)
        return value, grads, learned_grads

    return wrapped

"""The transform protocol every compression method follows, and `chain`.

A :class:`Transform` is a NamedTuple of pure functions in the optax mould:

* ``init(params) -> state``: the method's state (a NamedTuple pytree), built
  from the params it will compress. Validates the params (selected leaves must be
  finite floating-point arrays) and the rule (it must select something).
* ``update(params, state, grads=None, **extra_args) -> state``: advances the
  method one step (schedules, mask refreshes, statistics). Runs under ``jit``
  with a traced step counter kept in the state; it never retraces.
* ``apply(params, state) -> params``: the compressed view of ``params``
  (masked, fake-quantized), differentiable (straight-through where needed).
* ``masks(state) -> {path: bool array}``: the hard masks the optimizer wrapper
  (:func:`jaxcompress.optim.with_compression`) must keep enforced on the params
  themselves. Methods that keep dense weights (quantizers, STE pruning)
  return ``{}``.

State is keyed by leaf path (``{"Dense_0/kernel": ...}``), so it jits, shards
and checkpoints like the params, and never holds ``None`` placeholders.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxcompress import paths as paths_lib

__all__ = ["Transform", "chain", "compress", "identity", "merge_masks"]


PyTree = Any
State = Any
Masks = dict[str, jax.Array]


class Transform(NamedTuple):
    """A compression method as four pure functions (see module docstring)."""

    init: Callable[[PyTree], State]
    update: Callable[..., State]
    apply: Callable[[PyTree, State], PyTree]
    masks: Callable[[State], Masks]


class IdentityState(NamedTuple):
    """The empty state of :func:`identity`."""


def identity() -> Transform:
    """A transform that leaves params unchanged."""

    def init(params: PyTree) -> IdentityState:
        del params
        return IdentityState()

    def update(params, state, grads=None, **extra_args):
        del params, grads, extra_args
        return state

    return Transform(init, update, lambda params, state: params, lambda state: {})


def merge_masks(*mask_dicts: Masks) -> Masks:
    """Combines hard masks: a weight survives only where every mask keeps it."""
    merged: Masks = {}
    for masks in mask_dicts:
        for path, mask in masks.items():
            merged[path] = jnp.logical_and(merged[path], mask) if path in merged else mask
    return merged


def chain(*transforms: Transform) -> Transform:
    """Composes transforms: each one compresses the output of the one before.

    ``apply`` runs the stages in order, so ``chain(prune, quantize)`` quantizes
    the pruned weights; zeros stay exactly zero because every quantizer maps 0.0
    to 0.0. ``init`` and ``update`` also hand each stage the params as the
    previous stages leave them (a quantizer calibrates on the pruned weights).
    The state is a tuple of the stages' states.

    Args:
      *transforms: the stages, applied first to last.

    Returns:
      A :class:`Transform`.

    Example:
      >>> import jaxcompress as jc
      >>> recipe = jc.chain(jc.prune.magnitude(sparsity=0.5), jc.quant.int8())
    """
    for i, t in enumerate(transforms):
        if not isinstance(t, Transform):
            raise TypeError(
                f"`chain` argument {i} must be a jaxcompress Transform (e.g. "
                f"jc.prune.magnitude(...), jc.quant.int8()), got {type(t).__name__}: {t!r}."
            )

    def init(params: PyTree) -> tuple:
        states = []
        for t in transforms:
            state = t.init(params)
            states.append(state)
            params = t.apply(params, state)
        return tuple(states)

    def update(params: PyTree, state: tuple, grads: PyTree | None = None, **extra_args) -> tuple:
        _check_chain_state(state, len(transforms))
        new_states = []
        for t, s in zip(transforms, state, strict=True):
            s = t.update(params, s, grads, **extra_args)
            new_states.append(s)
            params = t.apply(params, s)
        return tuple(new_states)

    def apply(params: PyTree, state: tuple) -> PyTree:
        _check_chain_state(state, len(transforms))
        for t, s in zip(transforms, state, strict=True):
            params = t.apply(params, s)
        return params

    def masks(state: tuple) -> Masks:
        _check_chain_state(state, len(transforms))
        return merge_masks(*(t.masks(s) for t, s in zip(transforms, state, strict=True)))

    return Transform(init, update, apply, masks)


def _check_chain_state(state: Any, n: int) -> None:
    if not isinstance(state, tuple) or len(state) != n:
        raise TypeError(
            f"`state` must be the tuple of {n} stage states returned by this chain's init, got {type(state).__name__}."
        )


def compress(transform: Transform, params: PyTree, grads: PyTree | None = None) -> tuple[PyTree, State]:
    """One-shot compression: ``init``, one ``update``, ``apply``.

    Args:
      transform: the recipe.
      params: the params to compress.
      grads: gradients for score-based methods that need them (optional).

    Returns:
      ``(compressed_params, state)``.
    """
    state = transform.init(params)
    state = transform.update(params, state, grads)
    return transform.apply(params, state), state


def leaf_paths(params: PyTree, rule: paths_lib.Rule, *, what: str = "rule") -> list[str]:
    """Selected leaf paths (an error listing all paths if none)."""
    return paths_lib.select(rule, params, what=what)


def leaves_at(params: PyTree, paths: list[str]) -> dict[str, Any]:
    """``{path: leaf}`` for ``paths``; a clear error if ``params`` lack one."""
    flat, _ = paths_lib.flatten(params)
    _check_present(flat, paths)
    return {p: flat[p] for p in paths}


def _check_present(flat: dict[str, Any], paths: list[str]) -> None:
    missing = [p for p in paths if p not in flat]
    if missing:
        raise ValueError(
            f"`params` lack the leaves {missing} that this transform's state was built for; "
            f"pass params with the same structure as at init. Present: {list(flat)}."
        )


def map_selected(fn: Callable[[str, jax.Array], jax.Array], params: PyTree, paths: list[str]) -> PyTree:
    """Replaces each selected leaf ``p`` by ``fn(path, p)``; others untouched."""
    flat, treedef = paths_lib.flatten(params)
    _check_present(flat, paths)
    selected = set(paths)
    return paths_lib.unflatten(treedef, {p: fn(p, x) if p in selected else x for p, x in flat.items()})

"""The protocol every compression method follows, and :func:`chain`.

A method is one of two NamedTuples of pure functions, in the optax mould:

* :class:`Transform` ``(init, update, apply)``: pruners, activation
  quantization, anything that is not a weight quantizer.
* :class:`Quantizer` ``(init, update, quantize)``: weight quantizers.
  ``quantize`` gives each quantized leaf's integer form
  (:class:`~jaxcompress.IntegerWeights`); ``apply`` is derived from it once,
  here, so what is trained is what is exported.

:func:`chain` composes either kind into a :class:`Chain`, which has all four
functions. State is data: a pruner's hard masks are a :class:`Masks` node of its
state and a method's trainable parameters a :class:`Learned` node, both found
through any chain (:func:`masks_of`, :func:`learned_params`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp

from jaxcompress._src import paths as paths_lib
from jaxcompress._src import validate
from jaxcompress._src.integer import IntegerWeights, check_codes_fit, fake_quantize, reencode
from jaxcompress._src.masks import PackedMask

__all__ = [
    "ApplyFn",
    "Chain",
    "InitFn",
    "Learned",
    "Masks",
    "QuantizeFn",
    "Quantizer",
    "Recipe",
    "Transform",
    "UpdateFn",
    "chain",
    "check_recipe",
    "checking_state",
    "compress",
    "identity",
    "integer_weights",
    "learned_params",
    "masks_of",
    "replace_learned",
    "safe_increment",
]

Params = Any  # a pytree of arrays
State = Any  # a pytree of arrays (NamedTuples, dicts keyed by leaf path)


class InitFn(Protocol):
    def __call__(self, params: Params) -> State:
        """The method's state for ``params``: validates them and the rule (it must select a leaf)."""


class UpdateFn(Protocol):
    def __call__(self, params: Params, state: State, grads: Params | None = None, **extra_args: Any) -> State:
        """Advances the method one step (schedules, mask refreshes, statistics).

        Runs under ``jit`` with a traced step counter kept in ``state``; it
        never retraces. ``grads`` are the step's gradients (scores that need
        them raise a ``ValueError`` without them). Method-specific extras are
        keyword-only and documented by the method (e.g. ``activation_stats=``
        of :func:`jaxcompress.quant.activations`); every method accepts and
        ignores the extras it does not know, so one call serves a chain.
        """


class ApplyFn(Protocol):
    def __call__(self, params: Params, state: State) -> Params:
        """The compressed view of ``params`` (masked, fake-quantized), differentiable."""


class QuantizeFn(Protocol):
    def __call__(self, params: Params, state: State) -> dict[str, IntegerWeights]:
        """``{path: IntegerWeights}`` of every quantized leaf, differentiable (see IntegerWeights)."""


class Transform(NamedTuple):
    """A compression method as three pure functions (see the protocols above)."""

    init: InitFn
    update: UpdateFn
    apply: ApplyFn


class Quantizer(NamedTuple):
    """A weight quantizer: ``init``, ``update`` and ``quantize``; ``apply`` is derived.

    ``apply(params, state)`` replaces each quantized leaf by
    ``quantize(params, state)[path].dequantize()`` (in the leaf's dtype), so the
    fake-quantized weights a model trains with are, bitwise, the integer form
    export stores. Gradients are those of the dequantization: a quantizer makes
    them straight-through by how it builds its codes (see
    :class:`~jaxcompress.IntegerWeights`).
    """

    init: InitFn
    update: UpdateFn
    quantize: QuantizeFn

    def apply(self, params: Params, state: State) -> Params:
        return fake_quantize(params, self.quantize(params, state))


class Masks(NamedTuple):
    """Hard masks, by leaf path: :func:`jaxcompress.optim.with_compression` keeps
    every weight outside them at exactly zero. A pruner keeps one in its state."""

    keep: dict[str, PackedMask]  # True = kept


class Learned(NamedTuple):
    """Trainable parameters of a method (LSQ steps, PACT clipping levels, codebooks), inside its state."""

    values: dict[str, Any]  # by path (or name): float arrays the optimizer trains


def safe_increment(count: jax.Array) -> jax.Array:
    """``count + 1``, saturating at the int32 maximum instead of wrapping (step counters in states)."""
    return jnp.where(count < jnp.iinfo(jnp.int32).max, count + 1, count)


def checking_state(kind: type, method: str, *fns: Callable) -> tuple[Callable, ...]:
    """``fns`` (a method's ``update``/``apply``/``quantize``), each first checking that its state is a ``kind``.

    A state from another method (or a chain's tuple) then gets a ``TypeError``
    naming ``method``, not an ``AttributeError`` from inside it.
    """

    def checked(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(params, state, *args, **kwargs):
            validate.check_state(state, kind, method=method)
            return fn(params, state, *args, **kwargs)

        return wrapper

    return tuple(checked(fn) for fn in fns)


def nodes_of(state: State, kind: type) -> list:
    """Every node of type ``kind`` in ``state`` (a chain's included), in tree order."""
    is_node = lambda x: isinstance(x, kind)
    return [n for n in jax.tree.leaves(state, is_leaf=is_node) if is_node(n)]


def masks_of(state: State) -> dict[str, PackedMask]:
    """The hard masks of a (chained) state: every :class:`Masks` node AND-ed, by path (``{}`` if none)."""
    merged: dict[str, PackedMask] = {}
    for node in nodes_of(state, Masks):
        for path, mask in node.keep.items():
            merged[path] = merged[path] & mask if path in merged else mask
    return merged


def learned_params(state: State) -> tuple[Learned, ...]:
    """Every :class:`Learned` node of ``state``, in tree order (``()`` if none)."""
    return tuple(nodes_of(state, Learned))


def replace_learned(state: State, learned: tuple[Learned, ...]) -> State:
    """``state`` with its :class:`Learned` nodes replaced, in order, by ``learned``."""
    learned = tuple(learned)
    n = len(learned_params(state))
    if len(learned) != n:
        raise ValueError(f"`learned` must hold {n} Learned nodes (one per method that learns), got {len(learned)}.")
    replacements = iter(learned)
    is_node = lambda x: isinstance(x, Learned)
    return jax.tree.map(lambda x: next(replacements) if is_node(x) else x, state, is_leaf=is_node)


class Chain(NamedTuple):
    """Stages composed by :func:`chain`; a recipe with ``init``, ``update``, ``apply`` and ``quantize``."""

    stages: tuple[Recipe, ...]

    def init(self, params: Params) -> tuple:
        states = []
        for stage in self.stages:
            state = stage.init(params)
            states.append(state)
            params = stage.apply(params, state)
        return tuple(states)

    def update(self, params: Params, state: tuple, grads: Params | None = None, **extra_args: Any) -> tuple:
        self._check(state)
        new_states = []
        for stage, s in zip(self.stages, state, strict=True):
            s = stage.update(params, s, grads, **extra_args)
            new_states.append(s)
            params = stage.apply(params, s)
        return tuple(new_states)

    def apply(self, params: Params, state: tuple) -> Params:
        self._check(state)
        for stage, s in zip(self.stages, state, strict=True):
            params = stage.apply(params, s)
        return params

    def quantize(self, params: Params, state: tuple) -> dict[str, IntegerWeights]:
        """The integer form of the chain's *final* weights (``{}`` if no stage quantizes).

        A leaf quantized by a stage that later stages may change (a pruner after
        a quantizer) is re-encoded on its quantizer's grid from the chain's
        output, so its codes hold the later stages' zeros. Values the grid
        cannot represent (a zero a codebook lacks) make the integer form differ
        from ``apply``: :func:`jaxcompress.export.export` checks and refuses.
        """
        self._check(state)
        found: dict[str, tuple[int, IntegerWeights]] = {}
        for i, (stage, s) in enumerate(zip(self.stages, state, strict=True)):
            if isinstance(stage, (Quantizer, Chain)):
                integer = stage.quantize(params, s)
                check_codes_fit(integer, paths_lib.leaves_at(params, integer))
                found.update({p: (i, iw) for p, iw in integer.items()})
            params = stage.apply(params, s)
        if not found:
            return {}
        flat, _ = paths_lib.flatten(params)
        return {p: reencode(iw, flat[p]) if self._may_change_after(i) else iw for p, (i, iw) in found.items()}

    def _may_change_after(self, index: int) -> bool:
        """Whether a stage after ``index`` may change a leaf it does not quantize (a quantizer changes none)."""
        return any(not isinstance(stage, Quantizer) for stage in self.stages[index + 1 :])

    def _check(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) != len(self.stages):
            raise TypeError(
                f"`state` must be the tuple of {len(self.stages)} stage states this chain's init returned, "
                f"got {type(state).__name__}."
            )


Recipe = Transform | Quantizer | Chain
"""Anything with ``init``, ``update`` and ``apply``: a method or a chain of them."""


def check_recipe(recipe: Any, *, argument: str = "`recipe`") -> Recipe:
    """``recipe`` if it is a :data:`Recipe`, else a ``TypeError`` naming ``argument``."""
    if not isinstance(recipe, (Transform, Quantizer, Chain)):
        raise TypeError(
            f"{argument} must be a jaxcompress method or chain (e.g. jc.prune.magnitude(0.5), "
            f"jc.quant.int8(), jc.chain(...)), got {type(recipe).__name__}: {recipe!r}."
        )
    return recipe


def chain(*stages: Recipe) -> Chain:
    """Composes methods: each stage compresses the output of the one before.

    ``init``, ``update`` and ``apply`` hand each stage the params as the
    previous stages leave them (a quantizer after a pruner calibrates on, and
    quantizes, the pruned weights; zeros stay exactly zero because every grid
    holds 0.0). The state is the tuple of the stages' states. ``quantize``
    gives the integer form of the final weights, whatever the order.

    Args:
      *stages: the methods (or chains), applied first to last.

    Returns:
      A :class:`Chain`.

    Example:
      >>> import jax.numpy as jnp, jaxcompress as jc
      >>> recipe = jc.chain(jc.prune.magnitude(0.5), jc.quant.int8())
      >>> params = {"w": jnp.array([[1.0, -4.0], [3.0, 2.0]])}
      >>> compressed, state = jc.compress(recipe, params)
      >>> recipe.quantize(params, state)["w"].stored().codes.tolist()
      [[0, -127], [127, 0]]
    """
    for i, stage in enumerate(stages):
        check_recipe(stage, argument=f"`chain` argument {i}")
    return Chain(tuple(stages))


def integer_weights(recipe: Recipe, params: Params, state: State) -> dict[str, IntegerWeights]:
    """The stored integer form of every leaf ``recipe`` quantizes: ``{path: IntegerWeights}``, codes as integers.

    ``{}`` for a recipe that quantizes nothing.
    """
    check_recipe(recipe)
    if not isinstance(recipe, (Quantizer, Chain)):
        return {}
    integer = recipe.quantize(params, state)
    flat = paths_lib.flatten(params)[0]
    check_codes_fit(integer, paths_lib.leaves_at(params, integer))
    validate.check_finite_leaves(flat, list(integer))  # a NaN would quantize to a silent 0
    return {p: iw.stored() for p, iw in integer.items()}


class IdentityState(NamedTuple):
    """The empty state of :func:`identity`."""


def identity() -> Transform:
    """A transform that leaves params unchanged."""

    def init(params: Params) -> IdentityState:
        del params
        return IdentityState()

    def update(params, state, grads=None, **extra_args):
        del params, grads, extra_args
        return state

    def apply(params, state):
        del state
        return params

    return Transform(init, *checking_state(IdentityState, "jc.identity", update, apply))


def compress(recipe: Recipe, params: Params, grads: Params | None = None) -> tuple[Params, State]:
    """One-shot compression: ``init``, one ``update``, ``apply``.

    Args:
      recipe: the method or chain.
      params: the params to compress.
      grads: gradients for score-based methods that need them (optional).

    Returns:
      ``(compressed_params, state)``.
    """
    check_recipe(recipe)
    state = recipe.init(params)
    # One compiled program for the update and one for apply, not op-by-op dispatch.
    state = jax.jit(recipe.update)(params, state, grads)
    return jax.jit(recipe.apply)(params, state), state

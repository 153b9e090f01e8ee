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
* ``integer(params, state) -> {path: IntegerWeights}`` (quantizers only, else
  ``None``): the integer codes, scales and zero points whose dequantization is
  exactly what ``apply`` produced; export builds the int8 model from them.
* ``masks(state) -> {path: PackedMask}``: the hard masks the optimizer wrapper
  (:func:`jaxcompress.optim.with_compression`) must keep enforced on the params
  themselves, bit-packed (``mask.unpack()`` gives the boolean array). Methods
  that keep dense weights (quantizers, STE pruning) return ``{}``.
* ``train_apply(params, state) -> params`` (optional, else ``apply`` is used):
  ``apply`` for params that are already zero outside ``masks(state)``, as the
  optimizer wrapper keeps them; a pruner whose masks start full returns the
  params as they are (see :func:`jaxcompress.optim.train_apply`).
* ``refreshes_at(count) -> bool`` (optional, for methods that refresh on a
  schedule): on the host, whether ``update`` of a state that has done ``count``
  updates may refresh the masks. Where it is ``False``, a loop that counts its
  steps on the host may call ``update(..., steady=True)``: the same new state,
  from a program without the refresh branch (on CPU a not-taken ``lax.cond``
  costs 5-8% of a small model's training step). ``steady=True`` where
  ``refreshes_at`` is ``True`` skips that refresh. :func:`jaxcompress.train.fit`
  does this; see :func:`jaxcompress.optim.with_compression`.

State is keyed by leaf path (``{"Dense_0/kernel": ...}``), so it jits, shards
and checkpoints like the params, and never holds ``None`` placeholders.

**Learned parameters.** A method with trainable parameters of its own (LSQ step
sizes, PACT clipping levels, k-means codebooks) keeps them in its state inside
a :class:`Learned` node. :func:`learned_params` collects every ``Learned`` node
of a (chained) state and :func:`replace_learned` puts new values back, so a
loss can be differentiated with respect to them
(:func:`jaxcompress.optim.value_and_grad`) and the optimizer wrapper can train
them beside the model's params.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxcompress import paths as paths_lib
from jaxcompress.masks import PackedMask

__all__ = [
    "IntegerWeights",
    "Learned",
    "Transform",
    "chain",
    "compress",
    "identity",
    "learned_params",
    "merge_masks",
    "replace_learned",
    "safe_increment",
]

PyTree = Any
State = Any
Masks = dict[str, PackedMask]


def safe_increment(count: jax.Array) -> jax.Array:
    """``count + 1``, saturating at the int32 maximum instead of wrapping (step counters in states)."""
    return jnp.where(count < jnp.iinfo(jnp.int32).max, count + 1, count)


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["codes", "scale", "zero_point", "codebook"],
    meta_fields=["bits", "group_axis", "group_size"],
)
@dataclasses.dataclass(frozen=True)
class IntegerWeights:
    """A quantized leaf in integer form: what export stores and computes with.

    Affine leaves dequantize to ``(codes - zero_point) * scale``; ``scale`` and
    ``zero_point`` have the leaf's ndim, each axis of size 1, the leaf's size, or
    (along ``group_axis``) ``size // group_size``. Codebook leaves dequantize to
    ``codebook[codes] * scale``. A pytree whose ``bits`` and group fields are
    static, so they stay Python ints under ``jit``.
    """

    codes: jax.Array  # int8 signed codes, uint8 unsigned codes or codebook indices
    scale: jax.Array  # float32, broadcastable as described above
    zero_point: jax.Array | None  # int32 like ``scale``; None for symmetric
    bits: int  # static bit width, 2 to 8
    group_axis: int | None = None  # static: axis the groups run along
    group_size: int | None = None  # static
    codebook: jax.Array | None = None  # float32 (K,) for codebook (k-means, log2) leaves

    def dequantize(self) -> jax.Array:
        """The float32 weights these codes stand for."""
        expand = lambda a: a if self.group_size is None else jnp.repeat(a, self.group_size, axis=self.group_axis)
        if self.codebook is not None:
            return self.codebook[self.codes.astype(jnp.int32)] * expand(self.scale)
        codes = self.codes.astype(jnp.int32)
        if self.zero_point is not None:
            codes = codes - expand(self.zero_point)
        return codes.astype(jnp.float32) * expand(self.scale)


class Transform(NamedTuple):
    """A compression method as pure functions (see module docstring)."""

    init: Callable[[PyTree], State]
    update: Callable[..., State]
    apply: Callable[[PyTree, State], PyTree]
    masks: Callable[[State], Masks]
    integer: Callable[[PyTree, State], dict[str, IntegerWeights]] | None = None
    train_apply: Callable[[PyTree, State], PyTree] | None = None
    refreshes_at: Callable[[int], bool] | None = None


def is_steady(extra_args: dict[str, Any]) -> bool:
    """The ``steady`` extra argument of ``update`` (default ``False``), checked to be a static bool."""
    steady = extra_args.get("steady", False)
    if not isinstance(steady, bool):
        raise TypeError(
            f"`steady` must be a Python bool known when the step is traced (pass it as a static "
            f"argument of your jitted step), got {type(steady).__name__}: {steady!r}."
        )
    return steady


def check_count(count: Any) -> int:
    """A host-side update count for ``refreshes_at``: a non-negative int, capped at the int32 counter's maximum."""
    if isinstance(count, bool) or not isinstance(count, numbers.Integral):
        raise TypeError(f"`count` must be a non-negative Python int (updates done so far), got {count!r}.")
    if count < 0:
        raise ValueError(f"`count` must be >= 0, got {count}.")
    return min(int(count), int(jnp.iinfo(jnp.int32).max))


class Learned(NamedTuple):
    """Trainable parameters of a compression method, inside its state."""

    values: dict[str, Any]  # by path (or name): float arrays the optimizer trains


def _is_learned(x: Any) -> bool:
    return isinstance(x, Learned)


def learned_params(state: State) -> tuple[Learned, ...]:
    """Every :class:`Learned` node of ``state``, in tree order (``()`` if none)."""
    return tuple(n for n in jax.tree.leaves(state, is_leaf=_is_learned) if _is_learned(n))


def replace_learned(state: State, learned: tuple[Learned, ...]) -> State:
    """``state`` with its :class:`Learned` nodes replaced, in order, by ``learned``."""
    learned = tuple(learned)
    n = len(learned_params(state))
    if len(learned) != n:
        raise ValueError(f"`learned` must hold {n} Learned nodes (one per method that learns), got {len(learned)}.")
    replacements = iter(learned)
    return jax.tree.map(lambda x: next(replacements) if _is_learned(x) else x, state, is_leaf=_is_learned)


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
            merged[path] = merged[path] & mask if path in merged else mask
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

    def train_apply(params: PyTree, state: tuple) -> PyTree:
        _check_chain_state(state, len(transforms))
        for t, s in zip(transforms, state, strict=True):
            params = (t.train_apply or t.apply)(params, s)
        return params

    def masks(state: tuple) -> Masks:
        _check_chain_state(state, len(transforms))
        return merge_masks(*(t.masks(s) for t, s in zip(transforms, state, strict=True)))

    def integer(params: PyTree, state: tuple) -> dict[str, IntegerWeights]:
        _check_chain_state(state, len(transforms))
        found: dict[str, IntegerWeights] = {}
        for t, s in zip(transforms, state, strict=True):
            if t.integer is not None:
                found.update(t.integer(params, s))
            params = t.apply(params, s)
        return found

    scheduled = [t.refreshes_at for t in transforms if t.refreshes_at is not None]

    def refreshes_at(count: int) -> bool:
        return any(due(count) for due in scheduled)

    return Transform(init, update, apply, masks, integer, train_apply, refreshes_at if scheduled else None)


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

"""Phases of joint compression: quantization that starts mid-run, and masks carried frozen into a new run.

With the schedules and :func:`jaxcompress.chain`, these give the four usual
recipes (``examples/phases.py`` runs each):

* **simultaneous**: ``chain(prune.magnitude(polynomial(0, s, end=T)), quant.symmetric(4))``;
* **prune, then QAT** in one run: ``chain(prune.magnitude(polynomial(0, s, end=T)),
  delayed(quant.symmetric(4), start=T))``: the masks stop changing at ``T``
  (the schedule ends), quantization starts there, calibrated on the pruned weights;
* **QAT started mid-run**: the same with ``start`` inside the pruning window:
  the masks keep their state and go on moving, quantization joins;
* **prune, then QAT with the masks frozen**, as a second run (a new optimizer,
  e.g. from a checkpoint): ``chain(frozen_masks(jc.masks_of(cstate)), quant.symmetric(4))``.

References:
  Zhu & Gupta, "To prune, or not to prune", 2017 (gradual pruning, then
  fine-tuning). https://arxiv.org/abs/1710.01878
  Jacob et al., "Quantization and Training of Neural Networks for Efficient
  Integer-Arithmetic-Only Inference", 2018 (QAT started from a trained
  model, ranges frozen later). https://arxiv.org/abs/1712.05877
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxcompress._src import core, validate
from jaxcompress._src import masks as packed
from jaxcompress._src import paths as paths_lib

__all__ = ["DelayedQuantizer", "DelayedState", "FrozenMasksState", "delayed", "frozen_masks"]


class DelayedState(NamedTuple):
    """State of :func:`delayed`."""

    count: jax.Array  # shape=(), dtype=int32: updates so far (saturating)
    start: jax.Array  # shape=(), dtype=int32: the update from which the quantizer applies
    inner_state: Any  # the quantizer's state (re-initialized at ``start``)


class DelayedQuantizer(core.Quantizer):
    """A :class:`jaxcompress.Quantizer` whose ``apply`` is the identity until its state's ``start``."""

    def apply(self, params: Any, state: DelayedState) -> Any:
        validate.check_state(state, DelayedState, method="jc.joint.delayed")
        return lax.cond(state.count >= state.start, lambda p: core.Quantizer.apply(self, p, state), lambda p: p, params)


def delayed(quantizer: core.Quantizer, start: int) -> DelayedQuantizer:
    """``quantizer`` from update ``start`` on: the identity before, initialized on the weights at ``start``.

    Before ``start`` updates, ``apply`` leaves the params unchanged (and
    ``quantize`` gives the quantizer's form of them, which export refuses
    because it differs from ``apply``). At the ``start``-th update the
    quantizer's state is built by its ``init`` from the current weights
    (ranges, LSQ steps and k-means codebooks calibrate on the weights as
    they are then, e.g. pruned); from then on it updates and applies as
    usual. One compiled step serves both phases (``lax.cond`` on the count).

    Args:
      quantizer: a weight quantizer (``jc.quant.int8()``, ``jc.quant.lsq(4)``, ...).
      start: the update from which it applies (``>= 0``; 0: from the start).

    Returns:
      A :class:`DelayedQuantizer` whose state is :class:`DelayedState`.

    Example:
      >>> import jax.numpy as jnp, jaxcompress as jc
      >>> q = jc.joint.delayed(jc.quant.symmetric(2), start=1)
      >>> params = {"w": jnp.array([[0.25, -1.0], [1.0, 0.5]])}
      >>> state = q.init(params)
      >>> q.apply(params, state)["w"].tolist()  # not yet
      [[0.25, -1.0], [1.0, 0.5]]
      >>> q.apply(params, q.update(params, state))["w"].tolist()
      [[0.0, -1.0], [1.0, 0.0]]
    """
    if not isinstance(quantizer, core.Quantizer):
        raise TypeError(
            f"`quantizer` must be a jaxcompress weight quantizer (e.g. jc.quant.int8()), got "
            f"{type(quantizer).__name__}: {quantizer!r}. Pruners have schedules of their own (`begin=`)."
        )
    start = validate.check_int(start, argument="start", minimum=0)

    def init(params: Any) -> DelayedState:
        return DelayedState(jnp.zeros((), jnp.int32), jnp.asarray(start, jnp.int32), quantizer.init(params))

    def update(params: Any, state: DelayedState, grads: Any = None, **extra_args) -> DelayedState:
        count = core.safe_increment(state.count)
        phase = jnp.where(count < state.start, 0, jnp.where(count == state.start, 1, 2))
        inner_state = lax.switch(
            phase,
            [
                lambda: state.inner_state,
                lambda: quantizer.init(params),
                lambda: quantizer.update(params, state.inner_state, grads, **extra_args),
            ],
        )
        return DelayedState(count, state.start, inner_state)

    def quantize(params: Any, state: DelayedState):
        return quantizer.quantize(params, state.inner_state)

    return DelayedQuantizer(init, *core.checking_state(DelayedState, "jc.joint.delayed", update, quantize))


class FrozenMasksState(NamedTuple):
    """State of :func:`frozen_masks`."""

    masks: core.Masks  # the masks given, unchanged


def frozen_masks(masks: Mapping[str, Any]) -> core.Transform:
    """A transform holding fixed masks: weights outside them are zero, in ``apply`` and (under
    :func:`jaxcompress.optim.with_compression`) in the params.

    Use it to carry a finished pruning run's masks into a new run:
    ``jc.chain(jc.joint.frozen_masks(jc.masks_of(cstate)), jc.quant.int8())``.

    Args:
      masks: ``{path: mask}``: packed masks (``jc.masks_of(state)``) or boolean arrays, ``True`` = kept.

    Returns:
      A :class:`jaxcompress.Transform` whose state is :class:`FrozenMasksState`.

    Example:
      >>> import jax.numpy as jnp, jaxcompress as jc
      >>> t = jc.joint.frozen_masks({"w": jnp.array([[True, False]])})
      >>> t.apply({"w": jnp.array([[3.0, 4.0]])}, t.init({"w": jnp.ones((1, 2))}))["w"].tolist()
      [[3.0, 0.0]]
    """
    if not isinstance(masks, Mapping) or not masks:
        raise TypeError(f"`masks` must be a non-empty mapping {{path: mask}}, got {type(masks).__name__}: {masks!r}.")
    stored = {}
    for p, mask in masks.items():
        if isinstance(mask, packed.PackedMask):
            stored[p] = mask
            continue
        mask = jnp.asarray(mask)
        if mask.dtype != jnp.bool_:
            raise TypeError(f"`masks[{p!r}]` must be a boolean array or a PackedMask, got dtype {mask.dtype}.")
        stored[p] = packed.pack(mask)

    def init(params: Any) -> FrozenMasksState:
        leaves = paths_lib.leaves_at(params, stored)
        validate.check_leaf_shapes(leaves, {p: m.shape for p, m in stored.items()}, method="jc.joint.frozen_masks")
        return FrozenMasksState(core.Masks(dict(stored)))

    def update(params: Any, state: FrozenMasksState, grads: Any = None, **extra_args) -> FrozenMasksState:
        del params, grads, extra_args
        return state

    def apply(params: Any, state: FrozenMasksState) -> Any:
        return paths_lib.map_selected(lambda p, w: state.masks.keep[p].keep(w), params, list(state.masks.keep))

    return core.Transform(init, *core.checking_state(FrozenMasksState, "jc.joint.frozen_masks", update, apply))

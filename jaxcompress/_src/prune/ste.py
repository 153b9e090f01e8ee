"""Straight-through pruning: sparse forward pass, dense weights and gradients."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxcompress._src import core
from jaxcompress._src import masks as packed
from jaxcompress._src import paths as paths_lib

__all__ = ["STEState", "SoftMasks", "mask_ste", "ste"]


@jax.custom_vjp
def mask_ste(w: jax.Array, keep: jax.Array) -> jax.Array:
    """``where(keep, w, 0)`` forward; the gradient passes to every weight unchanged."""
    return jnp.where(keep, w, jnp.zeros((), w.dtype))


def _mask_fwd(w, keep):
    return mask_ste(w, keep), None


def _mask_bwd(_, g):
    return g, None


mask_ste.defvjp(_mask_fwd, _mask_bwd)


class SoftMasks(NamedTuple):
    """Masks of a pruner wrapped by :func:`ste`: they shape the forward pass only, nothing enforces them."""

    keep: dict[str, packed.PackedMask]


class STEState(NamedTuple):
    """State of :func:`ste`."""

    inner_state: Any  # the wrapped pruner's state, its Masks nodes held as SoftMasks


def _convert(state: Any, source: type, target: type) -> Any:
    is_node = lambda x: isinstance(x, source)
    return jax.tree.map(lambda x: target(x.keep) if is_node(x) else x, state, is_leaf=is_node)


def ste(inner: core.Recipe) -> core.Transform:
    """Straight-through pruning: the forward pass is sparse, the weights stay dense.

    ``apply`` computes ``w * m`` with the wrapped pruner's masks ``m``, but its
    gradient is the straight-through ``dL/dw = dL/d(w * m)`` for *every*
    weight, so pruned weights keep training and can win their place back at
    the next mask refresh (e.g. with a gradual schedule, or SR-STE style N:M
    training). The masks are kept as :class:`SoftMasks`, which
    :func:`jaxcompress.masks_of` does not see: the optimizer wrapper leaves the
    weights dense. Only the final ``apply`` makes them sparse.

    .. math:: y = (w \\odot m) \\quad \\frac{\\partial L}{\\partial w} := \\frac{\\partial L}{\\partial y}

    Args:
      inner: a pruning transform (``magnitude``, ``n_m``, ``movement``, ...).

    Returns:
      A :class:`jaxcompress.Transform` whose state is :class:`STEState`.

    Example:
      >>> import jax, jax.numpy as jnp, jaxcompress as jc
      >>> t = jc.prune.ste(jc.prune.magnitude(0.5))
      >>> params = {"w": jnp.array([[1.0, 2.0], [3.0, 4.0]])}
      >>> state = t.update(params, t.init(params))
      >>> t.apply(params, state)["w"].tolist(), jc.masks_of(state)
      ([[0.0, 0.0], [3.0, 4.0]], {})
      >>> jax.grad(lambda p: t.apply(p, state)["w"].sum())(params)["w"].tolist()
      [[1.0, 1.0], [1.0, 1.0]]

    References:
      Bengio, Leonard & Courville, "Estimating or Propagating Gradients Through
      Stochastic Neurons", 2013. https://arxiv.org/abs/1308.3432
      Zhou et al., "Learning N:M Fine-grained Structured Sparse Neural Networks
      From Scratch", 2021. https://arxiv.org/abs/2102.04010
    """
    core.check_recipe(inner, argument="`inner`")

    def init(params: Any) -> STEState:
        state = inner.init(params)
        if not core.masks_of(state):
            raise ValueError("`inner` of ste must be a pruner with hard masks (its state holds no jc.Masks).")
        return STEState(_convert(state, core.Masks, SoftMasks))

    def update(params: Any, state: STEState, grads: Any = None, **extra_args) -> STEState:
        inner_state = inner.update(params, _convert(state.inner_state, SoftMasks, core.Masks), grads, **extra_args)
        return STEState(_convert(inner_state, core.Masks, SoftMasks))

    def apply(params: Any, state: STEState) -> Any:
        return apply_straight_through(params, core.masks_of(_convert(state.inner_state, SoftMasks, core.Masks)))

    return core.Transform(init, *core.checking_state(STEState, "jc.prune.ste", update, apply))


def apply_straight_through(params: Any, masks: dict[str, packed.PackedMask]) -> Any:
    """``params`` masked by ``masks`` with straight-through gradients."""
    return paths_lib.map_selected(lambda path, w: mask_ste(w, masks[path].unpack()), params, masks)

"""Uniform (affine) fake quantization of weights."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxcompress import _validate, core
from jaxcompress import paths as paths_lib
from jaxcompress.quant.ste import clip_ste, round_ste

__all__ = [
    "SymmetricState",
    "int8",
    "symmetric",
    "symmetric_codes",
    "symmetric_fake_quant",
    "symmetric_scale",
]

MIN_BITS, MAX_BITS = 2, 8


class SymmetricState(NamedTuple):
    """State of :func:`symmetric`."""

    bits: dict[str, jax.Array]  # per selected leaf: shape=(), dtype=int32


def check_bits(bits: Any, *, argument: str = "bits") -> int:
    """An integer bit width in ``[2, 8]``."""
    bits = _validate.check_int(bits, argument=argument)
    if not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"`{argument}` must be an integer in [{MIN_BITS}, {MAX_BITS}], got {bits}.")
    return bits


def _reduce_axes(ndim: int, channel_axis: int | None) -> tuple[int, ...]:
    if channel_axis is None or ndim == 0:
        return tuple(range(ndim))
    axis = channel_axis % ndim
    return tuple(a for a in range(ndim) if a != axis)


def symmetric_scale(w: jax.Array, bits: jax.typing.ArrayLike, channel_axis: int | None = -1) -> jax.Array:
    """Scale ``max|w| / (2^(bits-1) - 1)`` per channel (or per tensor), float32.

    An all-zero channel (e.g. fully pruned) gets scale 1.0, so the scale is
    always finite and positive. Returned with ``keepdims`` so it broadcasts
    against ``w``; no gradient flows through it.
    """
    qmax = (2 ** (jnp.asarray(bits, jnp.int32) - 1) - 1).astype(jnp.float32)
    amax = jnp.max(jnp.abs(w.astype(jnp.float32)), axis=_reduce_axes(w.ndim, channel_axis), keepdims=True)
    return lax.stop_gradient(jnp.where(amax > 0, amax / qmax, 1.0))


def symmetric_fake_quant(w: jax.Array, bits: jax.typing.ArrayLike, channel_axis: int | None = -1) -> jax.Array:
    """Quantize-dequantize onto the symmetric grid ``scale * {-q, ..., q}``, ``q = 2^(bits-1) - 1``.

    Gradient: straight through inside ``[-q * scale, q * scale]`` (everything,
    for max-calibrated scales). Computed in float32, returned in ``w.dtype``.
    """
    qmax = (2 ** (jnp.asarray(bits, jnp.int32) - 1) - 1).astype(jnp.float32)
    scale = symmetric_scale(w, bits, channel_axis)
    q = clip_ste(round_ste(w.astype(jnp.float32) / scale), -qmax, qmax)
    return (q * scale).astype(w.dtype)


def symmetric_codes(
    w: jax.Array, bits: jax.typing.ArrayLike, channel_axis: int | None = -1
) -> tuple[jax.Array, jax.Array]:
    """Integer codes (int8) and float32 scale with ``codes * scale == symmetric_fake_quant(w)``."""
    qmax = (2 ** (jnp.asarray(bits, jnp.int32) - 1) - 1).astype(jnp.float32)
    scale = symmetric_scale(w, bits, channel_axis)
    codes = jnp.clip(jnp.round(w.astype(jnp.float32) / scale), -qmax, qmax)
    return codes.astype(jnp.int8), scale


def symmetric(
    bits: int = 8,
    *,
    per_channel: bool = True,
    channel_axis: int = -1,
    rule: paths_lib.Rule = paths_lib.KERNELS,
) -> core.Transform:
    """Symmetric uniform fake quantization of weights with a straight-through estimator.

    Each selected weight ``w`` becomes ``s * clip(round(w / s), -q, q)`` with
    ``q = 2^(bits-1) - 1`` and ``s = max|w| / q`` taken per output channel
    (``channel_axis``, the last axis of Flax Dense and Conv kernels) or per
    tensor. Zero maps to zero, so pruned weights stay pruned.

    Args:
      bits: bit width, 2 to 8.
      per_channel: one scale per slice along ``channel_axis`` (else one per tensor).
      channel_axis: the output-channel axis.
      rule: which leaves to quantize (default: ``ndim >= 2``).

    Returns:
      A :class:`jaxcompress.Transform` whose state is :class:`SymmetricState`.

    Example:
      >>> import jax.numpy as jnp, jaxcompress as jc
      >>> q, _ = jc.compress(jc.quant.symmetric(bits=2), {"w": jnp.array([[0.25, -1.0], [1.0, 0.5]])})
      >>> q["w"].tolist()
      [[0.0, -1.0], [1.0, 0.0]]

    References:
      Jacob et al., "Quantization and Training of Neural Networks for Efficient
      Integer-Arithmetic-Only Inference", 2018. https://arxiv.org/abs/1712.05877
    """
    bits = check_bits(bits)
    if not isinstance(per_channel, bool):
        raise TypeError(f"`per_channel` must be a bool, got {type(per_channel).__name__}.")
    _validate.check_int(channel_axis, argument="channel_axis")
    selector = paths_lib.as_selector(rule)
    axis = channel_axis if per_channel else None

    def init(params: Any) -> SymmetricState:
        flat, _ = paths_lib.flatten(params)
        selected = paths_lib.select(selector, params)
        _validate.check_float_leaves(flat, selected)
        _validate.check_finite_leaves(flat, selected)
        return SymmetricState({p: jnp.asarray(bits, jnp.int32) for p in selected})

    def update(params: Any, state: SymmetricState, grads: Any = None, **extra_args) -> SymmetricState:
        del params, grads, extra_args
        return state

    def apply(params: Any, state: SymmetricState) -> Any:
        return core.map_selected(lambda p, w: symmetric_fake_quant(w, state.bits[p], axis), params, list(state.bits))

    def integer(params: Any, state: SymmetricState) -> dict[str, core.IntegerWeights]:
        leaves = core.leaves_at(params, list(state.bits))
        out = {}
        for p, w in leaves.items():
            codes, scale = symmetric_codes(w, state.bits[p], axis)
            out[p] = core.IntegerWeights(codes, scale, None, bits)
        return out

    return core.Transform(init, update, apply, lambda state: {}, integer)


def int8(*, per_channel: bool = True, rule: paths_lib.Rule = paths_lib.KERNELS) -> core.Transform:
    """Symmetric int8 weight fake quantization: :func:`symmetric` with ``bits=8``."""
    return symmetric(8, per_channel=per_channel, rule=rule)

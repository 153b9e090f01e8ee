"""Uniform (affine) weight quantization: per tensor, channel or group; nearest or stochastic rounding.

The grid is :mod:`~jaxcompress.quant` 's one affine convention (see
``grid.py``): ``q = clip(round(w / s) + z, q_min, q_max)``, ``w_hat = (q - z) s``,
with ``s`` and ``z`` from the min and max of each slice of the granularity,
recomputed from the current weights at every step. Signed weight grids are
narrow (symmetric about zero). Zero maps to zero, so pruned weights stay pruned.

Gradients are straight-through: since the range is the slice's own min/max,
no weight is clipped and the gradient is the identity (up to one rounding,
``g * s * (1 / s)``), except that an unsigned symmetric grid clips negative
weights (gradient 0 there). Scales computed from the weights carry no gradient.
Stochastic rounding (``floor(w/s + u)``, unbiased) takes its key from the state,
advanced by every ``update``; ``apply`` and ``quantize`` of one state agree.

References:
  Jacob et al., "Quantization and Training of Neural Networks for Efficient
  Integer-Arithmetic-Only Inference", 2018. https://arxiv.org/abs/1712.05877
  Gupta et al., "Deep Learning with Limited Numerical Precision", 2015.
  https://arxiv.org/abs/1502.02551
"""

from __future__ import annotations

import functools
import zlib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxcompress._src import core, validate
from jaxcompress._src import paths as paths_lib
from jaxcompress._src.integer import IntegerWeights
from jaxcompress._src.quant import granularity as gran_lib
from jaxcompress._src.quant.grid import affine_params, check_bits, check_bool, codes_ste, reciprocal, traced_range
from jaxcompress._src.quant.ste import straight_through

__all__ = ["UniformState", "fake_quant", "int8", "quantize", "symmetric", "uniform"]

ROUNDINGS = ("nearest", "stochastic")


class UniformState(NamedTuple):
    """State of :func:`uniform` (and :func:`symmetric`, :func:`int8`)."""

    bits: dict[str, jax.Array]  # per selected leaf: shape=(), dtype=int32
    key: jax.Array  # shape=(2,), dtype=uint32: raw PRNG key for stochastic rounding, advanced by update


def quantize_leaf(
    x: jax.Array,
    bits: int,
    *,
    symmetric: bool,
    signed: bool,
    narrow: bool,
    granularity: gran_lib.Granularity,
    key: jax.Array | None = None,
    grid_bits: jax.typing.ArrayLike | None = None,
) -> IntegerWeights:
    """The differentiable integer form of ``x``, scales from its min/max (``grid_bits``: a traced width)."""
    x32 = x.astype(jnp.float32)
    grid_bits = bits if grid_bits is None else grid_bits
    lo = lax.stop_gradient(gran_lib.reduce(jnp.min, x32, granularity))
    hi = lax.stop_gradient(gran_lib.reduce(jnp.max, x32, granularity))
    scale, zero_point = affine_params(lo, hi, grid_bits, symmetric=symmetric, signed=signed, narrow=narrow)
    qmin, qmax = traced_range(grid_bits, signed=signed, narrow=narrow)
    xv, (s, z), unview = gran_lib.grouped_view(x32, (scale, zero_point), granularity)
    if symmetric and not signed:  # negative entries are clipped to 0: clipped straight-through gradient
        codes = codes_ste(xv, s, z, qmin, qmax, key)
    else:  # the range covers the whole slice: the gradient passes straight through
        codes = straight_through(xv * reciprocal(s), codes_ste(lax.stop_gradient(xv), s, z, qmin, qmax, key))
    _, group_axis = granularity.axes(x.ndim)
    return IntegerWeights(
        unview(codes),
        scale,
        zero_point,
        bits,
        signed,
        group_axis=group_axis,
        group_size=granularity.group_size if group_axis is not None else None,
    )


def _checked_arguments(x, bits, symmetric, signed, granularity, narrow) -> tuple[jax.Array, dict]:
    granularity = gran_lib.as_granularity(granularity)
    granularity.check(jnp.shape(x), where="`x`")
    bits = check_bits(bits)
    check_bool(symmetric, argument="symmetric")
    check_bool(signed, argument="signed")
    narrow = symmetric and signed if narrow is None else check_bool(narrow, argument="narrow")
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"`x` must be a floating-point array, got dtype {x.dtype}.")
    return x, dict(bits=bits, symmetric=symmetric, signed=signed, narrow=narrow, granularity=granularity)


_STATIC = ("bits", "symmetric", "signed", "narrow", "granularity")


@functools.partial(jax.jit, static_argnames=_STATIC)  # one program, not op-by-op dispatch, when called eagerly
def _fake_quant(x, key, **static):
    return quantize_leaf(x, key=key, **static).dequantize().astype(x.dtype)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _quantize(x, key, **static):
    return quantize_leaf(x, key=key, **static).stored()


def fake_quant(
    x: jax.Array,
    bits: int = 8,
    *,
    symmetric: bool = True,
    signed: bool = True,
    granularity: gran_lib.Granularity | str = "channel",
    narrow: bool | None = None,
    key: jax.Array | None = None,
) -> jax.Array:
    """Quantize-dequantize ``x`` onto its affine grid (see the module docstring).

    Args:
      x: a float array.
      bits: bit width, 2 to 8.
      symmetric: symmetric (zero point 0) or asymmetric grid.
      signed: signed or unsigned codes.
      granularity: :func:`per_tensor`, :func:`per_channel` (default, last
        axis), :func:`per_group`, or ``"tensor"`` / ``"channel"``.
      narrow: narrow signed range (default: ``symmetric and signed``).
      key: a PRNG key for stochastic rounding (``None``: round to nearest).

    Returns:
      ``x`` on the grid, same shape and dtype; straight-through gradient.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxcompress import quant
      >>> x = jnp.array([[-0.5, 0.0, 0.8, 1.0]])
      >>> quant.fake_quant(x, 2, symmetric=False, granularity="tensor").tolist()
      [[-0.5, 0.0, 1.0, 1.0]]
    """
    x, static = _checked_arguments(x, bits, symmetric, signed, granularity, narrow)
    return _fake_quant(x, key, **static)


def quantize(
    x: jax.Array,
    bits: int = 8,
    *,
    symmetric: bool = True,
    signed: bool = True,
    granularity: gran_lib.Granularity | str = "channel",
    narrow: bool | None = None,
    key: jax.Array | None = None,
) -> IntegerWeights:
    """Integer codes, scale and zero point of ``x``: :func:`fake_quant` in stored integer form.

    ``quantize(x, ...).dequantize()`` equals ``fake_quant(x, ...)`` bitwise
    (for float32 ``x``). Arguments as in :func:`fake_quant`.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxcompress import quant
      >>> iw = quant.quantize(jnp.array([[-1.0, 0.0, 2.0]]), 2, symmetric=False, signed=False, granularity="tensor")
      >>> iw.codes.tolist(), int(iw.zero_point[0, 0]), iw.dequantize().tolist()
      ([[0, 1, 3]], 1, [[-1.0, 0.0, 2.0]])
    """
    x, static = _checked_arguments(x, bits, symmetric, signed, granularity, narrow)
    return _quantize(x, key, **static)


def leaf_key(key: jax.Array, path: str) -> jax.Array:
    """The PRNG key of one leaf: the state's raw key folded with a hash of its path."""
    return jax.random.fold_in(jax.random.wrap_key_data(key), zlib.crc32(path.encode()) & 0x7FFFFFFF)


def advance_key(key: jax.Array) -> jax.Array:
    """The next raw key (shape=(2,), uint32)."""
    return jax.random.key_data(jax.random.split(jax.random.wrap_key_data(key))[1])


def uniform(
    bits: int = 8,
    *,
    symmetric: bool = True,
    signed: bool = True,
    granularity: gran_lib.Granularity | str = "channel",
    rounding: str = "nearest",
    seed: int = 0,
    rule: paths_lib.Rule = paths_lib.KERNELS,
) -> core.Quantizer:
    """Uniform affine fake quantization of weights, straight-through gradients.

    Each selected weight becomes ``(clip(round(w / s) + z, q_min, q_max) - z) * s``
    with ``s``, ``z`` from the min/max of each slice of the
    granularity (see the module docstring), recomputed from the current weights at every ``apply``.
    Zero maps to zero, so pruned weights stay pruned.

    Args:
      bits: bit width, 2 to 8.
      symmetric: symmetric (``z = 0``, narrow signed grid) or asymmetric grid.
      signed: signed (``int8`` codes) or unsigned (``uint8``) codes.
      granularity: :func:`per_channel` (default, the last axis),
        :func:`per_tensor`, :func:`per_group` (size must divide the axis), or
        ``"channel"`` / ``"tensor"``.
      rounding: ``"nearest"`` or ``"stochastic"`` (``floor(w/s + u)``; the key
        lives in the state, seeded by ``seed``, advanced by every ``update``).
      seed: seed of the stochastic-rounding key.
      rule: which leaves to quantize (default: ``ndim >= 2``).

    Returns:
      A :class:`jaxcompress.Quantizer` whose state is :class:`UniformState`.

    Example:
      >>> import jax.numpy as jnp, jaxcompress as jc
      >>> w = {"w": jnp.array([[-1.0, 0.4], [1.2, 2.0]])}
      >>> q, _ = jc.compress(jc.quant.uniform(2, symmetric=False, granularity="tensor"), w)
      >>> q["w"].tolist()
      [[-1.0, 0.0], [1.0, 2.0]]

    References:
      Jacob et al. 2018, https://arxiv.org/abs/1712.05877; Gupta et al.,
      "Deep Learning with Limited Numerical Precision", 2015,
      https://arxiv.org/abs/1502.02551 (stochastic rounding).
    """
    bits = check_bits(bits)
    check_bool(symmetric, argument="symmetric")
    check_bool(signed, argument="signed")
    granularity = gran_lib.as_granularity(granularity)
    if rounding not in ROUNDINGS:
        raise ValueError(f"`rounding` must be one of {ROUNDINGS}, got {rounding!r}.")
    seed = validate.check_int(seed, argument="seed")
    selector = paths_lib.as_selector(rule)
    narrow = symmetric and signed
    stochastic = rounding == "stochastic"

    def init(params: Any) -> UniformState:
        flat, selected = validate.selected_weights(selector, params)
        granularity.check_leaves(flat, selected)
        key = jax.random.key_data(jax.random.key(seed))
        return UniformState({p: jnp.asarray(bits, jnp.int32) for p in selected}, key)

    def update(params: Any, state: UniformState, grads: Any = None, **extra_args) -> UniformState:
        del params, grads, extra_args
        return UniformState(state.bits, advance_key(state.key)) if stochastic else state

    def quantize(params: Any, state: UniformState) -> dict[str, IntegerWeights]:
        return {
            p: quantize_leaf(
                w,
                bits,
                symmetric=symmetric,
                signed=signed,
                narrow=narrow,
                granularity=granularity,
                key=leaf_key(state.key, p) if stochastic else None,
                grid_bits=state.bits[p],
            )
            for p, w in paths_lib.leaves_at(params, state.bits).items()
        }

    return core.Quantizer(init, *core.checking_state(UniformState, "jc.quant.uniform", update, quantize))


def symmetric(
    bits: int = 8,
    *,
    per_channel: bool = True,
    channel_axis: int = -1,
    rule: paths_lib.Rule = paths_lib.KERNELS,
) -> core.Quantizer:
    """Symmetric uniform fake quantization of weights with a straight-through estimator.

    Each selected weight ``w`` becomes ``s * clip(round(w / s), -q, q)`` with
    ``q = 2^(bits-1) - 1`` and ``s = max|w| / q`` taken per output channel
    (``channel_axis``, the last axis of Flax Dense and Conv kernels) or per
    tensor. Zero maps to zero, so pruned weights stay pruned. This is
    :func:`uniform` with ``symmetric=True, signed=True``.

    Args:
      bits: bit width, 2 to 8.
      per_channel: one scale per slice along ``channel_axis`` (else one per tensor).
      channel_axis: the output-channel axis.
      rule: which leaves to quantize (default: ``ndim >= 2``).

    Returns:
      A :class:`jaxcompress.Quantizer` whose state is :class:`UniformState`.

    Example:
      >>> import jax.numpy as jnp, jaxcompress as jc
      >>> q, _ = jc.compress(jc.quant.symmetric(bits=2), {"w": jnp.array([[0.25, -1.0], [1.0, 0.5]])})
      >>> q["w"].tolist()
      [[0.0, -1.0], [1.0, 0.0]]

    References:
      Jacob et al., "Quantization and Training of Neural Networks for Efficient
      Integer-Arithmetic-Only Inference", 2018. https://arxiv.org/abs/1712.05877
    """
    check_bool(per_channel, argument="per_channel")
    channel_axis = validate.check_int(channel_axis, argument="channel_axis")
    granularity = gran_lib.per_channel(channel_axis) if per_channel else gran_lib.per_tensor()
    return uniform(bits, symmetric=True, signed=True, granularity=granularity, rule=rule)


def int8(*, per_channel: bool = True, rule: paths_lib.Rule = paths_lib.KERNELS) -> core.Quantizer:
    """Symmetric int8 weight fake quantization: :func:`symmetric` with ``bits=8``."""
    return symmetric(8, per_channel=per_channel, rule=rule)

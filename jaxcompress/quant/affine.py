"""Uniform (affine) quantization: the one quantizer core every linear method shares.

A tensor ``x`` is mapped to integer codes and back as

.. math::

    q = \\mathrm{clip}(\\mathrm{round}(x / s) + z,\\ q_{min},\\ q_{max}), \\qquad
    \\hat x = (q - z)\\, s

with scale ``s > 0`` and integer zero point ``z`` shared by the entries of a
:mod:`~jaxcompress.quant.granularity` (per tensor, per channel, per group).
``x / s`` is computed as ``x * (1 / s)`` in float32 (see :func:`reciprocal`),
the same bits eagerly and under ``jit``.

* **Symmetric** (``z = 0``): ``s = max|x| / (2^(b-1) - 1)`` for signed codes,
  ``s = max(x, 0) / (2^b - 1)`` for unsigned ones. Signed weight grids are
  *narrow* (``[-(2^(b-1) - 1), 2^(b-1) - 1]``, symmetric about zero);
  activation grids use the full range ``[-2^(b-1), 2^(b-1) - 1]``.
* **Asymmetric**: the range ``[min(x, 0), max(x, 0)]`` is spread over all
  ``2^b`` codes, ``s = (hi - lo) / (q_max - q_min)`` and
  ``z = clip(round(q_min - lo / s), q_min, q_max)``, so ``0.0`` is exactly
  representable (it maps to the code ``z`` and back to ``0.0``).
* **Rounding**: to nearest (half to even), or stochastic (``floor(x/s + u)``,
  unbiased) with a PRNG key that the transform's state carries and every
  ``update`` advances; ``apply`` and ``integer`` of one state use the same key,
  so they agree.

Signed codes are ``int8``; unsigned ones ``uint8`` (``[0, 2^b)``). A constant
or all-zero slice gets a finite positive scale (1.0 when all zero). Gradients
are straight-through (:mod:`~jaxcompress.quant.ste`), zero outside the grid:
since the range is the tensor's own min/max, nothing is outside it and the
gradient is exactly the identity (a ``custom_vjp`` with no backward work),
except that an unsigned symmetric grid clips negative entries (gradient 0
there). Scales computed from the weights carry no gradient.

References:
  Jacob et al., "Quantization and Training of Neural Networks for Efficient
  Integer-Arithmetic-Only Inference", 2018. https://arxiv.org/abs/1712.05877
  Krishnamoorthi, "Quantizing deep convolutional networks for efficient
  inference: A whitepaper", 2018. https://arxiv.org/abs/1806.08342
"""

from __future__ import annotations

import zlib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxcompress import _validate, core
from jaxcompress import paths as paths_lib
from jaxcompress.quant import granularity as gran_lib
from jaxcompress.quant.ste import clip_ste, round_ste, stochastic_round_ste, straight_through

__all__ = [
    "SymmetricState",
    "UniformState",
    "affine_params",
    "fake_quant",
    "int8",
    "int_range",
    "quantize",
    "symmetric",
    "symmetric_codes",
    "symmetric_fake_quant",
    "symmetric_scale",
    "uniform",
]

MIN_BITS, MAX_BITS = 2, 8
ROUNDINGS = ("nearest", "stochastic")


class UniformState(NamedTuple):
    """State of :func:`uniform` (and :func:`symmetric`, :func:`int8`)."""

    bits: dict[str, jax.Array]  # per selected leaf: shape=(), dtype=int32
    key: jax.Array  # shape=(2,), dtype=uint32: raw PRNG key for stochastic rounding, advanced by update


SymmetricState = UniformState  # the name this state had when only symmetric quantization existed


def check_bits(bits: Any, *, argument: str = "bits") -> int:
    """An integer bit width in ``[2, 8]``."""
    bits = _validate.check_int(bits, argument=argument)
    if not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"`{argument}` must be an integer in [{MIN_BITS}, {MAX_BITS}], got {bits}.")
    return bits


def check_bool(value: Any, *, argument: str) -> bool:
    """A Python ``bool``."""
    if not isinstance(value, bool):
        raise TypeError(f"`{argument}` must be a bool, got {type(value).__name__}: {value!r}.")
    return value


def int_range(bits: int, *, signed: bool, narrow: bool = False) -> tuple[int, int]:
    """``(q_min, q_max)`` of ``bits``-bit codes (``narrow``: signed range without ``-2^(b-1)``).

    Example:
      >>> from jaxcompress import quant
      >>> quant.int_range(8, signed=True), quant.int_range(8, signed=False)
      ((-128, 127), (0, 255))
      >>> quant.int_range(4, signed=True, narrow=True)
      (-7, 7)
    """
    if signed:
        return -(2 ** (bits - 1)) + int(narrow), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def _range(bits: jax.typing.ArrayLike, *, signed: bool, narrow: bool) -> tuple[jax.Array, jax.Array]:
    """Traced :func:`int_range` as float32 scalars."""
    b = jnp.asarray(bits, jnp.int32)
    if signed:
        half = jnp.left_shift(jnp.int32(1), b - 1)
        qmin, qmax = -half + int(narrow), half - 1
    else:
        qmin, qmax = jnp.zeros_like(b), jnp.left_shift(jnp.int32(1), b) - 1
    return qmin.astype(jnp.float32), qmax.astype(jnp.float32)


def reciprocal(x: jax.typing.ArrayLike) -> jax.Array:
    """``1 / x`` in float32: every quantizer divides as ``a * reciprocal(b)``.

    XLA compiles ``a / b`` with a broadcast or constant ``b`` into
    ``a * (1 / b)`` under ``jit`` but not eagerly, which differs by an ulp;
    multiplying by the reciprocal explicitly gives the same bits eagerly and
    under ``jit``, so ``apply``, ``integer`` and export agree.
    """
    return jnp.float32(1.0) / jnp.asarray(x, jnp.float32)


def _positive(scale: jax.Array, valid: jax.Array) -> jax.Array:
    """``scale`` where valid and not underflowed, else 1.0: always finite and positive."""
    tiny = jnp.finfo(jnp.float32).tiny
    return jnp.where(valid, jnp.maximum(scale, tiny), 1.0)


def affine_params(
    lo: jax.typing.ArrayLike,
    hi: jax.typing.ArrayLike,
    bits: jax.typing.ArrayLike,
    *,
    symmetric: bool = True,
    signed: bool = True,
    narrow: bool = False,
) -> tuple[jax.Array, jax.Array | None]:
    """Scale (float32) and zero point (int32, ``None`` if symmetric) for the range ``[lo, hi]``.

    Args:
      lo: the range's lower end (any shape; broadcasts with ``hi``).
      hi: its upper end.
      bits: bit width (may be traced).
      symmetric: zero point 0 and ``s = max(|lo|, |hi|) / (2^(b-1) - 1)``
        (signed) or ``max(hi, 0) / (2^b - 1)`` (unsigned).
      signed: signed codes ``[-2^(b-1), 2^(b-1))`` or unsigned ``[0, 2^b)``.
      narrow: signed codes without ``-2^(b-1)`` (only changes the asymmetric grid).

    Returns:
      ``(scale, zero_point)``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxcompress import quant
      >>> s, z = quant.affine_params(jnp.float32(-1.0), jnp.float32(3.0), 8, symmetric=False, signed=False)
      >>> round(float(s) * 255, 6), int(z)
      (4.0, 64)
    """
    lo = jnp.asarray(lo, jnp.float32)
    hi = jnp.asarray(hi, jnp.float32)
    qmin, qmax = _range(bits, signed=signed, narrow=narrow)
    if symmetric:
        amax = jnp.maximum(jnp.abs(lo), jnp.abs(hi)) if signed else jnp.maximum(hi, 0.0)
        return _positive(amax * reciprocal(qmax), amax > 0), None
    lo, hi = jnp.minimum(lo, 0.0), jnp.maximum(hi, 0.0)
    span = hi - lo
    scale = _positive(span * reciprocal(qmax - qmin), span > 0)
    zero_point = jnp.clip(jnp.round(qmin - lo / scale), qmin, qmax).astype(jnp.int32)
    return scale, zero_point


def codes_ste(x32, scale, zero_point, qmin, qmax, key):
    """Float-valued integer codes of ``x32`` (straight-through, clipped)."""
    v = x32 * reciprocal(scale)
    r = round_ste(v) if key is None else stochastic_round_ste(v, key)
    if zero_point is not None:
        r = r + zero_point.astype(jnp.float32)
    return clip_ste(r, qmin, qmax)


def dequantize_codes(codes, scale, zero_point):
    if zero_point is not None:
        codes = codes - zero_point.astype(jnp.float32)
    return codes * scale


def quantize_leaf(
    x: jax.Array,
    bits: jax.typing.ArrayLike,
    *,
    symmetric: bool,
    signed: bool,
    narrow: bool,
    granularity: gran_lib.Granularity,
    key: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array | None]:
    """``(dequantized in x.dtype, float codes, scale, zero_point)`` of ``x``, scales from its min/max."""
    x32 = x.astype(jnp.float32)
    lo = lax.stop_gradient(gran_lib.reduce(jnp.min, x32, granularity))
    hi = lax.stop_gradient(gran_lib.reduce(jnp.max, x32, granularity))
    scale, zero_point = affine_params(lo, hi, bits, symmetric=symmetric, signed=signed, narrow=narrow)
    qmin, qmax = _range(bits, signed=signed, narrow=narrow)
    xv, (s, z), unview = gran_lib.grouped_view(x32, (scale, zero_point), granularity)
    if symmetric and not signed:  # negative entries are clipped to 0: clipped straight-through gradient
        codes = codes_ste(xv, s, z, qmin, qmax, key)
        deq = dequantize_codes(codes, s, z)
    else:  # the range covers the whole tensor: identity gradient, no backward work at all
        codes = codes_ste(lax.stop_gradient(xv), s, z, qmin, qmax, key)
        deq = straight_through(xv, dequantize_codes(codes, s, z))
    return unview(deq).astype(x.dtype), unview(codes), scale, zero_point


def _code_dtype(signed: bool):
    return jnp.int8 if signed else jnp.uint8


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
    (deq, _, _, _), _, _ = _quantize_argument(x, bits, symmetric, signed, granularity, narrow, key)
    return deq


def quantize(
    x: jax.Array,
    bits: int = 8,
    *,
    symmetric: bool = True,
    signed: bool = True,
    granularity: gran_lib.Granularity | str = "channel",
    narrow: bool | None = None,
    key: jax.Array | None = None,
) -> core.IntegerWeights:
    """Integer codes, scale and zero point of ``x``: :func:`fake_quant` in integer form.

    ``quantize(x, ...).dequantize()`` equals ``fake_quant(x, ...)`` bitwise
    (for float32 ``x``). Arguments as in :func:`fake_quant`.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxcompress import quant
      >>> iw = quant.quantize(jnp.array([[-1.0, 0.0, 2.0]]), 2, symmetric=False, signed=False, granularity="tensor")
      >>> iw.codes.tolist(), int(iw.zero_point[0, 0]), iw.dequantize().tolist()
      ([[0, 1, 3]], 1, [[-1.0, 0.0, 2.0]])
    """
    (_, codes, scale, zp), bits, granularity = _quantize_argument(x, bits, symmetric, signed, granularity, narrow, key)
    return integer_weights(codes, scale, zp, bits, signed, granularity, x.ndim)


def _quantize_argument(x, bits, symmetric, signed, granularity, narrow, key):
    """:func:`quantize_leaf` of a user's array after checking the arguments of :func:`fake_quant` / :func:`quantize`.

    Returns ``(quantize_leaf's outputs, bits, granularity)``.
    """
    granularity = gran_lib.as_granularity(granularity)
    granularity.check(jnp.shape(x), where="`x`")
    bits = check_bits(bits)
    narrow = symmetric and signed if narrow is None else narrow
    leaf = quantize_leaf(x, bits, symmetric=symmetric, signed=signed, narrow=narrow, granularity=granularity, key=key)
    return leaf, bits, granularity


def integer_weights(codes, scale, zp, bits, signed, granularity, ndim, codebook=None) -> core.IntegerWeights:
    """The :class:`jaxcompress.core.IntegerWeights` of a quantized leaf of rank ``ndim``."""
    _, group_axis = granularity.axes(ndim)
    return core.IntegerWeights(
        codes.astype(_code_dtype(signed)),
        scale,
        zp,
        bits,
        group_axis=group_axis,
        group_size=granularity.group_size if group_axis is not None else None,
        codebook=codebook,
    )


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
) -> core.Transform:
    """Uniform affine fake quantization of weights, straight-through gradients.

    Each selected weight becomes ``(clip(round(w / s) + z, q_min, q_max) - z) * s``
    with ``s``, ``z`` from the min/max of each slice of the
    :mod:`~jaxcompress.quant.granularity` (see the module docstring for the
    formulas), recomputed from the current weights at every ``apply``.
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
      A :class:`jaxcompress.Transform` whose state is :class:`UniformState`;
      its ``integer`` gives codes, scales and zero points whose dequantization
      equals ``apply`` bitwise.

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
    seed = _validate.check_int(seed, argument="seed")
    selector = paths_lib.as_selector(rule)
    narrow = symmetric and signed
    stochastic = rounding == "stochastic"

    def init(params: Any) -> UniformState:
        flat, selected = _validate.selected_weights(selector, params)
        granularity.check_leaves(flat, selected)
        key = jax.random.key_data(jax.random.key(seed))
        return UniformState({p: jnp.asarray(bits, jnp.int32) for p in selected}, key)

    def update(params: Any, state: UniformState, grads: Any = None, **extra_args) -> UniformState:
        del params, grads, extra_args
        return UniformState(state.bits, advance_key(state.key)) if stochastic else state

    def leaf(path: str, w: jax.Array, state: UniformState):
        key = leaf_key(state.key, path) if stochastic else None
        return quantize_leaf(
            w, state.bits[path], symmetric=symmetric, signed=signed, narrow=narrow, granularity=granularity, key=key
        )

    def apply(params: Any, state: UniformState) -> Any:
        return core.map_selected(lambda p, w: leaf(p, w, state)[0], params, list(state.bits))

    def integer(params: Any, state: UniformState) -> dict[str, core.IntegerWeights]:
        out = {}
        for p, w in core.leaves_at(params, list(state.bits)).items():
            _, codes, scale, zp = leaf(p, w, state)
            out[p] = integer_weights(codes, scale, zp, bits, signed, granularity, w.ndim)
        return out

    return core.Transform(init, update, apply, lambda state: {}, integer)


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
    tensor. Zero maps to zero, so pruned weights stay pruned. This is
    :func:`uniform` with ``symmetric=True, signed=True``.

    Args:
      bits: bit width, 2 to 8.
      per_channel: one scale per slice along ``channel_axis`` (else one per tensor).
      channel_axis: the output-channel axis.
      rule: which leaves to quantize (default: ``ndim >= 2``).

    Returns:
      A :class:`jaxcompress.Transform` whose state is :class:`UniformState`.

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
    channel_axis = _validate.check_int(channel_axis, argument="channel_axis")
    granularity = gran_lib.per_channel(channel_axis) if per_channel else gran_lib.per_tensor()
    return uniform(bits, symmetric=True, signed=True, granularity=granularity, rule=rule)


def int8(*, per_channel: bool = True, rule: paths_lib.Rule = paths_lib.KERNELS) -> core.Transform:
    """Symmetric int8 weight fake quantization: :func:`symmetric` with ``bits=8``."""
    return symmetric(8, per_channel=per_channel, rule=rule)


def _channel(channel_axis: int | None) -> gran_lib.Granularity:
    return gran_lib.per_tensor() if channel_axis is None else gran_lib.per_channel(channel_axis)


def symmetric_scale(w: jax.Array, bits: jax.typing.ArrayLike, channel_axis: int | None = -1) -> jax.Array:
    """Scale ``max|w| / (2^(bits-1) - 1)`` per channel (or per tensor), float32.

    An all-zero channel (e.g. fully pruned) gets scale 1.0, so the scale is
    always finite and positive. Returned with ``keepdims`` so it broadcasts
    against ``w``; no gradient flows through it.
    """
    return quantize_leaf(w, bits, symmetric=True, signed=True, narrow=True, granularity=_channel(channel_axis))[2]


def symmetric_fake_quant(w: jax.Array, bits: jax.typing.ArrayLike, channel_axis: int | None = -1) -> jax.Array:
    """Quantize-dequantize onto the symmetric grid ``scale * {-q, ..., q}``, ``q = 2^(bits-1) - 1``.

    Gradient: straight through inside ``[-q * scale, q * scale]`` (everything,
    for max-calibrated scales). Computed in float32, returned in ``w.dtype``.
    """
    return quantize_leaf(w, bits, symmetric=True, signed=True, narrow=True, granularity=_channel(channel_axis))[0]


def symmetric_codes(
    w: jax.Array, bits: jax.typing.ArrayLike, channel_axis: int | None = -1
) -> tuple[jax.Array, jax.Array]:
    """Integer codes (int8) and float32 scale with ``codes * scale == symmetric_fake_quant(w)``."""
    _, codes, scale, _ = quantize_leaf(
        w, bits, symmetric=True, signed=True, narrow=True, granularity=_channel(channel_axis)
    )
    return codes.astype(jnp.int8), scale

"""The affine quantization grid: the one convention weights, activations and export share.

A tensor ``x`` maps to integer codes and back as

.. math::

    q = \\mathrm{clip}(\\mathrm{round}(x / s) + z,\\ q_{min},\\ q_{max}), \\qquad
    \\hat x = (q - z)\\, s

with scale ``s > 0`` and integer zero point ``z``. ``round`` is half to even
and ``x / s`` is computed as ``x * (1 / s)`` in float32 (:func:`reciprocal`),
the same bits eagerly and under ``jit``, so training, integer form and export
agree bitwise.

* **Symmetric** (``z = 0``): ``s = max|x| / (2^(b-1) - 1)`` for signed codes,
  ``s = max(x, 0) / (2^b - 1)`` for unsigned ones.
* **Asymmetric**: the range ``[min(x, 0), max(x, 0)]`` is spread over all
  ``2^b`` codes, ``s = (hi - lo) / (q_max - q_min)`` and
  ``z = clip(round(q_min - lo / s), q_min, q_max)``, so ``0.0`` is exactly
  representable.
* Codes are signed ``[-2^(b-1), 2^(b-1) - 1]`` (weights use the *narrow*
  ``[-(2^(b-1) - 1), 2^(b-1) - 1]``) or unsigned ``[0, 2^b - 1]``. A constant or
  all-zero range gets a finite positive scale (1.0 when all zero).

**Layer inputs** (:class:`InputQuant`, the contract between activation
quantization and export): per tensor, static (a stored scale and zero point)
or dynamic (the range of each batch: ``max|x|`` when symmetric and signed,
else ``[min x, max x]``); :func:`quantize_input` computes the codes exactly as
the fake quantization does.

References:
  Jacob et al., "Quantization and Training of Neural Networks for Efficient
  Integer-Arithmetic-Only Inference", 2018. https://arxiv.org/abs/1712.05877
  Krishnamoorthi, "Quantizing deep convolutional networks for efficient
  inference: A whitepaper", 2018. https://arxiv.org/abs/1806.08342
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxcompress._src import validate
from jaxcompress._src.quant.ste import clip_ste, round_ste, stochastic_round_ste

__all__ = [
    "InputQuant",
    "Range",
    "affine_params",
    "batch_range",
    "check_bits",
    "int_range",
    "quantize_input",
    "reciprocal",
]

MIN_BITS, MAX_BITS = 2, 8


def check_bits(bits: Any, *, argument: str = "bits") -> int:
    """An integer bit width in ``[2, 8]``."""
    bits = validate.check_int(bits, argument=argument)
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


def traced_range(bits: jax.typing.ArrayLike, *, signed: bool, narrow: bool) -> tuple[jax.Array, jax.Array]:
    """:func:`int_range` of a (possibly traced) bit width, as float32 scalars."""
    b = jnp.asarray(bits, jnp.int32)
    if signed:
        half = jnp.left_shift(jnp.int32(1), b - 1)
        qmin, qmax = -half + int(narrow), half - 1
    else:
        qmin, qmax = jnp.zeros_like(b), jnp.left_shift(jnp.int32(1), b) - 1
    return qmin.astype(jnp.float32), qmax.astype(jnp.float32)


def headroom(amax: jax.typing.ArrayLike) -> jax.Array:
    """A power of two to multiply values of magnitude up to ``amax`` by before summing or inverting them.

    ``2^-64`` past ``2^100`` (else 1): exact, and enough that sums of the scaled
    values cannot overflow and the reciprocal of their maximum is not a
    denormal (which XLA:CPU flushes to zero). Ordinary weights are untouched.
    """
    return jnp.where(jnp.asarray(amax, jnp.float32) > jnp.float32(2.0**100), jnp.float32(2.0**-64), jnp.float32(1.0))


def reciprocal(x: jax.typing.ArrayLike) -> jax.Array:
    """``1 / x`` in float32: every quantizer divides as ``a * reciprocal(b)``.

    XLA compiles ``a / b`` with a broadcast or constant ``b`` into
    ``a * (1 / b)`` under ``jit`` but not eagerly, which differs by an ulp;
    multiplying by the reciprocal explicitly gives the same bits both ways.
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
    qmin, qmax = traced_range(bits, signed=signed, narrow=narrow)
    if symmetric:
        amax = jnp.maximum(jnp.abs(lo), jnp.abs(hi)) if signed else jnp.maximum(hi, 0.0)
        return _positive(amax * reciprocal(qmax), amax > 0), None
    lo, hi = jnp.minimum(lo, 0.0), jnp.maximum(hi, 0.0)
    span = hi - lo
    per_code = reciprocal(qmax - qmin)
    # Near the float32 maximum hi - lo overflows; (hi / 2 - lo / 2) * 2 / n does not (halving is exact,
    # so a fused multiply-add under jit rounds it as eager code does).
    halves = hi * jnp.float32(0.5) - lo * jnp.float32(0.5)
    scale = jnp.where(jnp.isfinite(span), span * per_code, halves * (jnp.float32(2.0) * per_code))
    scale = _positive(scale, span > 0)
    zero_point = jnp.clip(jnp.round(qmin - lo / scale), qmin, qmax).astype(jnp.int32)
    return scale, zero_point


def codes_ste(x32, scale, zero_point, qmin, qmax, key=None):
    """Float-valued integer codes of ``x32`` on the grid: ``clip(round(x / s) + z)``, straight-through.

    The gradient with respect to ``x32`` is ``1 / s`` where the rounded code
    lies in ``[q_min, q_max]``, else 0 (``key``: stochastic rounding).
    """
    v = x32 * reciprocal(scale)
    r = round_ste(v) if key is None else stochastic_round_ste(v, key)
    if zero_point is not None:
        r = r + zero_point.astype(jnp.float32)
    return clip_ste(r, qmin, qmax)


def dequantize_codes(codes, scale, zero_point):
    """``(codes - zero_point) * scale`` in float32."""
    if zero_point is not None:
        codes = codes - zero_point.astype(jnp.float32)
    return codes * scale


class Range(NamedTuple):
    """A per-tensor range."""

    lo: jax.Array  # shape=(), dtype=float32
    hi: jax.Array  # shape=(), dtype=float32


def range_union(a: Range, b: Range) -> Range:
    """The smallest range spanning both ``a`` and ``b``: ``[min(a.lo, b.lo), max(a.hi, b.hi)]``."""
    return Range(jnp.minimum(a.lo, b.lo), jnp.maximum(a.hi, b.hi))


def batch_range(x32: jax.Array, *, signed: bool, symmetric: bool) -> Range:
    """The range a dynamic grid takes from ``x32``: ``[-max|x|, max|x|]`` (symmetric signed) or ``[min, max]``."""
    if symmetric and signed:
        amax = jnp.max(jnp.abs(x32))
        return Range(lax.stop_gradient(-amax), lax.stop_gradient(amax))
    return Range(lax.stop_gradient(jnp.min(x32)), lax.stop_gradient(jnp.max(x32)))


class InputQuant(NamedTuple):
    """How one layer input (or output) is quantized: the convention QAT trains and export computes."""

    bits: int
    signed: bool
    dynamic: bool  # True: scale (and zero point) computed per batch from its range
    scale: jax.Array | None  # float32 scalar for static ranges; None if dynamic
    zero_point: jax.Array | None  # int32 scalar for asymmetric static ranges; None if symmetric
    symmetric: bool = True  # how a dynamic range becomes a scale (max|x| vs [min, max])

    def grid(self, r: Range) -> tuple[jax.Array, jax.Array | None]:
        """``(scale, zero point or None)`` of this grid over range ``r``."""
        return affine_params(r.lo, r.hi, self.bits, symmetric=self.symmetric, signed=self.signed)

    def params(self, x: jax.Array, floor: tuple[float, float] | None = None) -> tuple[jax.Array, jax.Array | None]:
        """``(scale, zero point or None)`` with which ``x`` is quantized.

        ``floor=(lo, hi)``, with ``lo <= 0 <= hi``, widens a dynamic range to span
        it (the constant inputs that export removes from a layer).
        """
        if not self.dynamic:
            zp = None if self.zero_point is None else jnp.asarray(self.zero_point, jnp.int32)
            return jnp.asarray(self.scale, jnp.float32), zp
        r = batch_range(x.astype(jnp.float32), signed=self.signed, symmetric=self.symmetric)
        if floor is not None:
            r = range_union(r, Range(jnp.float32(floor[0]), jnp.float32(floor[1])))
        return self.grid(r)

    def codes(self, x: jax.Array, scale: jax.Array, zp: jax.Array | None) -> jax.Array:
        """Float-valued codes of ``x`` at ``scale`` / ``zp`` on this grid (straight-through)."""
        qmin, qmax = int_range(self.bits, signed=self.signed)
        return codes_ste(x.astype(jnp.float32), scale, zp, jnp.float32(qmin), jnp.float32(qmax))


def quantize_input(x: jax.Array, quant: InputQuant) -> tuple[jax.Array, jax.Array, jax.Array | None]:
    """``(codes, scale, zero_point)`` of ``x`` under ``quant``, as the fake quantization computes them.

    Codes are ``int8`` (signed) or ``uint8`` (unsigned); ``(codes - zero_point) * scale``
    equals the fake-quantized input bitwise. Dynamic ranges are computed from
    ``x`` itself.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxcompress import quant
      >>> iq = quant.InputQuant(8, True, True, None, None)
      >>> codes, scale, _ = quant.quantize_input(jnp.array([0.5, -1.0, 0.25]), iq)
      >>> codes.tolist(), round(float(scale) * 127, 6)
      ([64, -127, 32], 1.0)
    """
    scale, zp = quant.params(x)
    codes = quant.codes(x, scale, zp)
    return codes.astype(jnp.int8 if quant.signed else jnp.uint8), scale, zp

"""Integer weights: what a quantizer computes, what export stores, and how they dequantize.

A quantized leaf is affine, ``w = (codes - zero_point) * scale``, or a codebook
leaf, ``w = codebook[codes] * scale``. ``scale`` and ``zero_point`` keep the
leaf's ndim: each axis of size 1, of the leaf's size (a channel axis), or,
along ``group_axis``, ``size // group_size``.

A quantizer's ``quantize`` returns them *differentiable*: ``codes`` are then
float32 arrays holding integers, carrying the method's straight-through
gradient, so ``dequantize`` has the gradient the method wants. An affine
leaf's codes are in code units (gradient ``1 / scale`` with respect to a weight
on the grid, 0 where it was clipped); a codebook leaf's codes pass their
value's gradient straight through (``codes = straight_through(w, indices)``),
and each codebook entry gets the sum of its members' gradients. :meth:`IntegerWeights.stored` casts the
codes to ``int8``/``uint8``; both forms dequantize to the same bits.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax

from jaxcompress._src import paths as paths_lib
from jaxcompress._src.quant.grid import headroom
from jaxcompress._src.quant.ste import straight_through

__all__ = ["IntegerWeights", "fake_quantize", "reencode"]


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["codes", "scale", "zero_point", "codebook"],
    meta_fields=["bits", "signed", "group_axis", "group_size"],
)
@dataclasses.dataclass(frozen=True)
class IntegerWeights:
    """A quantized leaf in integer form (see the module docstring).

    A pytree whose ``bits``, ``signed`` and group fields are static, so they
    stay Python values under ``jit``.
    """

    codes: jax.Array  # integers: float32 (differentiable, from quantize) or int8/uint8 (stored)
    scale: jax.Array  # float32, broadcastable as described above
    zero_point: jax.Array | None  # int32 (or float32 holding integers) like ``scale``; None for symmetric
    bits: int  # static: code width, 2 to 8
    signed: bool = True  # static: codes in [-2^(b-1), 2^(b-1)) stored as int8, else [0, 2^b) as uint8
    group_axis: int | None = None  # static: axis the groups run along
    group_size: int | None = None  # static
    codebook: jax.Array | None = None  # float32 (K,) for codebook leaves (k-means, log2)

    def _broadcast(self, stat: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(x, stat)`` reshaped so they broadcast elementwise (per-group stats split ``x``'s group axis)."""
        if self.group_size is None:
            return x, stat
        a, g = self.group_axis, self.group_size
        return jnp.reshape(x, (*x.shape[:a], x.shape[a] // g, g, *x.shape[a + 1 :])), jnp.expand_dims(stat, a + 1)

    def dequantize(self) -> jax.Array:
        """The float32 weights these codes stand for (differentiable in the float form)."""
        if self.codebook is not None:
            index = lax.stop_gradient(self.codes).astype(jnp.int32)  # in range by construction: no bounds select
            entries = jnp.take(self.codebook, index, mode="clip")
            entries, scale = self._broadcast(self.scale, entries)
            values = jnp.reshape(entries * scale, self.codes.shape)
            if jnp.issubdtype(self.codes.dtype, jnp.floating):  # a code passes its value's gradient through
                values = straight_through(self.codes, values)
            return values
        values = self.codes.astype(jnp.float32)
        if self.zero_point is not None:
            values, zp = self._broadcast(self.zero_point.astype(jnp.float32), values)
            values = jnp.reshape(values - zp, self.codes.shape)
        values, scale = self._broadcast(self.scale, values)
        return jnp.reshape(values * scale, self.codes.shape)

    def stored(self) -> IntegerWeights:
        """The storage form: ``int8`` (signed) or ``uint8`` codes, ``int32`` zero points, no gradients."""
        codes = lax.stop_gradient(self.codes)
        if not jnp.issubdtype(codes.dtype, jnp.integer) or codes.dtype != self.code_dtype:
            codes = codes.astype(self.code_dtype)
        zero_point = None if self.zero_point is None else lax.stop_gradient(self.zero_point).astype(jnp.int32)
        codebook = None if self.codebook is None else lax.stop_gradient(self.codebook).astype(jnp.float32)
        scale = lax.stop_gradient(self.scale).astype(jnp.float32)
        return dataclasses.replace(self, codes=codes, scale=scale, zero_point=zero_point, codebook=codebook)

    @property
    def code_dtype(self):
        """``int8`` for signed codes, ``uint8`` for unsigned ones."""
        return jnp.int8 if self.signed else jnp.uint8

    @property
    def code_range(self) -> tuple[int, int]:
        """``(q_min, q_max)`` of the codes."""
        if self.codebook is not None:
            return 0, int(self.codebook.shape[0]) - 1
        if self.signed:
            return -(2 ** (self.bits - 1)), 2 ** (self.bits - 1) - 1
        return 0, 2**self.bits - 1


def fake_quantize(params, integer: dict[str, IntegerWeights]):
    """``params`` with each leaf in ``integer`` replaced by its dequantization, in the leaf's dtype."""
    check_codes_fit(integer, paths_lib.leaves_at(params, integer))
    dequantized = lambda p, w: integer[p].dequantize().astype(jnp.result_type(w))
    return paths_lib.map_selected(dequantized, params, list(integer))


def check_codes_fit(integer: dict[str, IntegerWeights], leaves: dict) -> None:
    """Each leaf's codes must have its shape, and its scale one its axes allow (a state built for another
    shape would otherwise broadcast into a different model)."""
    for p, iw in integer.items():
        shape = tuple(jnp.shape(leaves[p]))
        allowed = [
            {1, n} | ({n // iw.group_size} if iw.group_size and a == iw.group_axis % len(shape) else set())
            for a, n in enumerate(shape)
        ]
        scale_shape = tuple(jnp.shape(iw.scale))
        if (
            tuple(iw.codes.shape) != shape
            or len(scale_shape) != len(shape)
            or any(s not in ok for s, ok in zip(scale_shape, allowed, strict=False))
        ):
            raise ValueError(
                f"`params` leaf {p!r} has shape {shape}, but the quantizer's state gives codes of shape "
                f"{tuple(iw.codes.shape)} and scales of shape {scale_shape}: the state was built for other "
                f"params. Pass params shaped as at init (re-run init after changing the model)."
            )


def reencode(iw: IntegerWeights, values: jax.Array) -> IntegerWeights:
    """``iw`` with codes re-derived from ``values`` on its grid (scale, zero point, codebook kept).

    Exact for values on the grid; others get the nearest code (clipped), so
    ``dequantize`` then differs from ``values`` there. Straight-through
    gradients, as a quantizer's.
    """
    v = values.astype(jnp.float32)
    qmin, qmax = iw.code_range
    if iw.codebook is None:
        vb, scale = iw._broadcast(iw.scale, v)
        f = headroom(scale)  # 1 / a scale near the float32 maximum would be a denormal
        u = (vb * f) * (jnp.float32(1.0) / (scale * f))
        if iw.zero_point is not None:
            u = u + iw._broadcast(iw.zero_point.astype(jnp.float32), v)[1]
        codes = jnp.reshape(jnp.clip(jnp.round(lax.stop_gradient(u)), qmin, qmax), v.shape)
        return dataclasses.replace(iw, codes=straight_through(jnp.reshape(u, v.shape), codes))
    vb, scale = iw._broadcast(iw.scale, v)
    target = lax.stop_gradient(vb)

    def visit(j, carry):
        best, index = carry
        d = jnp.abs(target - iw.codebook[j] * scale)
        closer = d < best
        return jnp.where(closer, d, best), jnp.where(closer, j, index)

    start = (jnp.full(target.shape, jnp.inf, jnp.float32), jnp.zeros(target.shape, jnp.int32))
    _, nearest = lax.fori_loop(0, iw.codebook.shape[0], visit, start)
    codes = jnp.reshape(nearest.astype(jnp.float32), v.shape)
    return dataclasses.replace(iw, codes=straight_through(v, codes))

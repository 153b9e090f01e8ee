"""The exported program's layers: typed plans (what a call computes) and weight layouts (what it reads).

A quantized Dense or Conv layer on the integer path runs as

1. quantize its input ``x`` to int8 codes ``qx`` with scale ``sx`` and zero
   point ``zx`` (the :class:`~jaxcompress.quant.InputQuant` convention the
   recipe trained with; dynamic symmetric int8 by default);
2. ``acc = lax.dot_general`` / ``lax.conv_general_dilated`` of ``qx`` and the
   int8 weight codes ``qw`` with ``preferred_element_type=int32``;
3. zero points corrected *in the int32 accumulator*:
   ``sum (qx - zx)(qw - zw) = sum qx qw - zw sum qx - zx sum qw + K zx zw``,
   where ``sum qw`` is a per-output-channel constant computed at export time;
4. ``y = acc * (sx * sw) + bias`` in float32 (a following BatchNorm folded
   into ``sw`` and ``bias``).

Conv padding with an asymmetric input pads with the *code* of 0.0 (``zx``),
explicitly, so the correction term is the same at every output position.
Every layer also has a float form (dequantized weights, input fake-quantized
the same way) for layers where float is faster or no integer form exists.

Plans (:class:`Dense`, :class:`Conv`, :class:`FoldedBatchNorm`,
:class:`ModelCode`) are static and hashable; weights are frozen dataclasses
(:class:`FloatKernel`, :class:`IntDense`, :class:`GroupedIntDense`,
:class:`IntConv`) whose fields are the layout. Every change (channel
removal, BatchNorm folding) returns a new object. The program takes weights as
plain dicts of arrays (:meth:`arguments`), so a saved artifact needs no class
of this module to load.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxcompress._src.quant.grid import InputQuant

__all__ = [
    "DYNAMIC_INT8",
    "Conv",
    "ConvConfig",
    "Dense",
    "FloatKernel",
    "FoldedBatchNorm",
    "GroupedIntDense",
    "InputSpec",
    "IntConv",
    "IntDense",
    "KernelLayer",
    "ModelCode",
    "column_sums",
]

DYNAMIC_INT8 = InputQuant(8, True, True, None, None, True)
"""The default input quantization of an integer layer: per-call symmetric int8 from ``max|x|``."""


class InputSpec(NamedTuple):
    """How the program quantizes a layer input: the recipe's ``InputQuant``, plus a range floor.

    ``floor`` is ``(lo, hi)`` of the constant inputs removed from this layer by
    channel removal; a dynamic range stretches over it, so the quantization
    grid stays that of the unreduced layer.
    """

    quant: InputQuant = DYNAMIC_INT8
    floor: tuple[float, float] | None = None

    def params(self, x: jax.Array) -> tuple[jax.Array, jax.Array | None]:
        """Scale (float32) and zero point (int32 or None) of ``x``, as the fake quantization computes them."""
        return self.quant.params(x, self.floor)

    def int8_codes(self, x: jax.Array, scale: jax.Array, zp: jax.Array | None) -> tuple[jax.Array, jax.Array | None]:
        """int8 codes of ``x`` at ``scale`` / ``zp`` and the (int8-shifted) zero point.

        Unsigned 8-bit codes ``[0, 255]`` are shifted by -128 into int8 (the zero
        point shifts with them), so every matmul runs int8 x int8.
        """
        q = self.quant.codes(x, scale, zp)
        if not self.quant.signed and self.quant.bits == 8:
            q = q - 128.0
            zp = (zp if zp is not None else jnp.int32(0)) - 128
        return q.astype(jnp.int8), zp

    def fake_quantize(self, x: jax.Array, scale: jax.Array, zp: jax.Array | None) -> jax.Array:
        """``(q - zp) * scale`` in float32: what the fake-quantized model computes with."""
        q, zp8 = self.int8_codes(x, scale, zp)
        q = q.astype(jnp.int32)
        if zp8 is not None:
            q = q - zp8
        return q.astype(jnp.float32) * scale


def fake_quantize(x: jax.Array, spec: InputSpec | None) -> jax.Array:
    """``x`` fake-quantized by ``spec`` (unchanged if None), in float32."""
    if spec is None:
        return x.astype(jnp.float32)
    return spec.fake_quantize(x, *spec.params(x))


def column_sums(codes: np.ndarray) -> np.ndarray:
    """Per-output-channel int32 sums of ``(..., N)`` codes: the ``colsum`` the zero-point correction needs."""
    return codes.astype(np.int32).reshape(-1, codes.shape[-1]).sum(axis=0, dtype=np.int32)


def _per_channel(v: jax.Array, ndim: int) -> jax.Array:
    """A per-output-channel vector shaped to broadcast against a rank-``ndim`` channels-last array."""
    return jnp.reshape(v, (1,) * (ndim - 1) + (-1,))


def _add(y: jax.Array, v: jax.Array | None) -> jax.Array:
    return y if v is None else y + _per_channel(v, y.ndim)


# ----------------------------------------------------------------------------- weight layouts


@dataclasses.dataclass(frozen=True)
class _Weights:
    """Base of the weight layouts: optional fields default to None; ``arguments`` drops them."""

    def arguments(self) -> dict[str, Any]:
        """The program's arguments for this layer: every array field that is set."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}

    @classmethod
    def from_arguments(cls, arrays: dict[str, Any]):
        return cls(**arrays)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class FloatKernel(_Weights):
    """The float form of a Dense or Conv: the dequantized kernel (kernel layout) and bias.

    ``const_values`` / ``const_sums``: the distinct values of the constant
    inputs removed from the layer and, per value, the kernel summed over the
    inputs holding it, ``(U, N)``; they add ``q(value) @ sums`` back.
    """

    kernel: Any  # (K, N) Dense or (*window, I, O) Conv, float32
    bias: Any = None  # (N,) float32
    const_values: Any = None  # (U,) float32
    const_sums: Any = None  # (U, N) float32


@dataclasses.dataclass(frozen=True)
class IntDense(_Weights):
    """Integer form of a Dense: transposed codes (both operands contract their last axis)."""

    codes_t: Any  # (N, K) int8
    scale: Any  # (N,) float32
    colsum: Any  # (N,) int32: sum_k codes
    zero_point: Any = None  # (N,) int32
    bias: Any = None  # (N,) float32
    const_values: Any = None  # (U,) float32
    const_sums: Any = None  # (U, N) int32: sum of (codes - zero_point) over the removed inputs holding each value


@dataclasses.dataclass(frozen=True)
class GroupedIntDense(_Weights):
    """Integer form of a Dense with per-group scales along its K axis: one int32 accumulator per group."""

    codes_t: Any  # (N, K) int8, K = G * group size
    group_scale: Any  # (G, N) float32
    group_zero_point: Any = None  # (G, N) int32
    bias: Any = None  # (N,) float32


@dataclasses.dataclass(frozen=True)
class IntConv(_Weights):
    """Integer form of a Conv: codes in kernel layout (symmetric weights only)."""

    codes: Any  # (*window, I, O) int8
    scale: Any  # (O,) float32
    colsum: Any  # (O,) int32: sum of codes over the window and input channels
    bias: Any = None  # (O,) float32
    const_values: Any = None  # (U,) float32
    const_sums: Any = None  # (U, O) int32


# ----------------------------------------------------------------------------- plans


@dataclasses.dataclass(frozen=True)
class KernelLayer:
    """A Dense or Conv call replaced by the program; ``form`` is the weight layout it computes with."""

    spec: InputSpec | None = None  # input quantization (None: float input)
    out_spec: InputSpec | None = None  # output fake quantization
    form: type = FloatKernel

    @property
    def integer(self) -> bool:
        return self.form is not FloatKernel

    def with_form(self, form: type) -> KernelLayer:
        return dataclasses.replace(self, form=form)

    def __call__(self, x: jax.Array, arrays: dict[str, Any]) -> jax.Array:
        w = self.form.from_arguments(arrays)
        if isinstance(w, FloatKernel):
            xf, c = x.astype(jnp.float32), w.const_values
            if self.spec is not None:  # the removed constants share the input's grid
                sx, zx = self.spec.params(x)
                xf = self.spec.fake_quantize(x, sx, zx)
                c = None if c is None else self.spec.fake_quantize(c, sx, zx)
            y = _add(_add(self.float_op(xf, w.kernel, x), None if c is None else c @ w.const_sums), w.bias)
        else:
            spec = self.spec or InputSpec()
            sx, zx0 = spec.params(x)
            qx, zx = spec.int8_codes(x, sx, zx0)
            y = self.integer_op(x, qx, zx, sx, zx0, spec, w)
        return y if self.out_spec is None else fake_quantize(y, self.out_spec).astype(y.dtype)

    @staticmethod
    def _constants(w, spec: InputSpec, sx, zx0) -> jax.Array | None:
        """Exact int32 contribution of removed constant inputs: ``(q(c) - zx) @ sum (qw - zw)``."""
        if w.const_values is None:
            return None
        q, zp8 = spec.int8_codes(w.const_values, sx, zx0)
        q = q.astype(jnp.int32)
        if zp8 is not None:
            q = q - zp8
        return q @ w.const_sums


@dataclasses.dataclass(frozen=True)
class Dense(KernelLayer):
    """A ``flax.linen.Dense`` call: contracts the last axis of ``x`` with a ``(K, N)`` kernel."""

    kind: ClassVar[str] = "dense"

    @staticmethod
    def in_axis(ndim: int) -> int:
        """The kernel axis of the layer's inputs."""
        del ndim
        return 0

    def float_op(self, xf, kernel, x):
        return lax.dot_general(xf, kernel, (((x.ndim - 1,), (0,)), ((), ())))

    def integer_op(self, x, qx, zx, sx, zx0, spec, w):
        if isinstance(w, GroupedIntDense):
            return _add(_grouped_dense(qx, zx, sx, w), w.bias)
        acc = lax.dot_general(qx, w.codes_t, (((x.ndim - 1,), (1,)), ((), ())), preferred_element_type=jnp.int32)
        if zx is not None:
            acc = acc - _per_channel(zx * w.colsum, acc.ndim)
        if w.zero_point is not None:
            rowsum = jnp.sum(qx.astype(jnp.int32), axis=x.ndim - 1, keepdims=True)
            acc = acc - rowsum * _per_channel(w.zero_point, acc.ndim)
            if zx is not None:
                acc = acc + _per_channel(x.shape[-1] * zx * w.zero_point, acc.ndim)
        acc = _add(acc, self._constants(w, spec, sx, zx0))
        return _add(acc.astype(jnp.float32) * _per_channel(sx * w.scale, acc.ndim), w.bias)

    def integer_weights(self, codes, scale, zero_point, bias, *, group_axis=None) -> IntDense | GroupedIntDense | None:
        """The integer form from ``(K, N)`` int8 codes and per-channel (or per-group, ``(G, N)``) statistics."""
        codes = np.asarray(codes, np.int8)
        codes_t = np.ascontiguousarray(codes.T)
        bias = None if bias is None else np.asarray(bias, np.float32)
        if group_axis is not None:
            if group_axis != 0:
                return None  # groups along the outputs: no per-group accumulator layout
            zp = None if zero_point is None else np.asarray(zero_point, np.int32)
            return GroupedIntDense(codes_t, np.asarray(scale, np.float32), zp, bias)
        n = codes.shape[-1]
        scale = np.broadcast_to(np.asarray(scale, np.float32).reshape(-1), (n,)).copy()
        zp = None if zero_point is None else np.broadcast_to(np.asarray(zero_point, np.int32).reshape(-1), (n,)).copy()
        return IntDense(codes_t, scale, column_sums(codes), zp, bias)


def _grouped_dense(qx: jax.Array, zx, sx, w: GroupedIntDense) -> jax.Array:
    """Per-group scales along the reduction axis: one int32 accumulator per group, rescaled and summed."""
    n_groups, n_out = w.group_scale.shape
    lead, k = qx.shape[:-1], qx.shape[-1]
    size = k // n_groups
    xg = jnp.reshape(qx, (-1, n_groups, size))
    wg = jnp.reshape(w.codes_t, (n_out, n_groups, size))
    acc = lax.dot_general(xg, wg, (((2,), (2,)), ((1,), (1,))), preferred_element_type=jnp.int32)  # (G, M, N)
    zw = w.group_zero_point
    if zx is not None:
        colsum = jnp.sum(wg.astype(jnp.int32), axis=2).T  # (G, N)
        acc = acc - zx * colsum[:, None, :]
    if zw is not None:
        rowsum = jnp.sum(xg.astype(jnp.int32), axis=2).T  # (G, M)
        acc = acc - rowsum[:, :, None] * zw[:, None, :]
        if zx is not None:
            acc = acc + (size * zx * zw)[:, None, :]
    y = jnp.sum(acc.astype(jnp.float32) * w.group_scale[:, None, :], axis=0) * sx
    return jnp.reshape(y, (*lead, n_out))


class ConvConfig(NamedTuple):
    """The static geometry of a Flax ``nn.Conv`` call."""

    kernel_size: tuple[int, ...]
    strides: tuple[int, ...]
    padding: Any  # 'SAME' / 'VALID' / sequence of (lo, hi) pairs, after canonicalization
    input_dilation: tuple[int, ...]
    kernel_dilation: tuple[int, ...]
    feature_group_count: int

    def explicit_padding(self, x_shape: tuple[int, ...]) -> list[tuple[int, int]]:
        """``(lo, hi)`` padding per spatial axis for an input of ``x_shape`` (channels last)."""
        if not isinstance(self.padding, str):
            return [tuple(p) for p in self.padding]
        spatial = x_shape[1:-1]
        dilated_in = [(n - 1) * d + 1 for n, d in zip(spatial, self.input_dilation, strict=True)]
        dilated_k = [(k - 1) * d + 1 for k, d in zip(self.kernel_size, self.kernel_dilation, strict=True)]
        return lax.padtype_to_pads(dilated_in, dilated_k, self.strides, self.padding)


def conv_config(module: Any) -> ConvConfig | None:
    """The geometry of a linen ``nn.Conv``; None when unsupported (unshared weights, masks, padding modes)."""
    from flax.linen import linear

    if not getattr(module, "shared_weights", True) or getattr(module, "mask", None) is not None:
        return None
    ks = (module.kernel_size,) if isinstance(module.kernel_size, int) else tuple(module.kernel_size)

    def bcast(v: int | Sequence[int] | None) -> tuple[int, ...]:
        v = 1 if v is None else v
        return (v,) * len(ks) if isinstance(v, int) else tuple(v)

    padding = linear.canonicalize_padding(module.padding, len(ks))
    if padding in ("CIRCULAR", "REFLECT", "CAUSAL"):
        return None
    return ConvConfig(
        ks,
        bcast(module.strides),
        padding,
        bcast(module.input_dilation),
        bcast(module.kernel_dilation),
        module.feature_group_count,
    )


@dataclasses.dataclass(frozen=True)
class Conv(KernelLayer):
    """A ``flax.linen.Conv`` call, channels last, any number of leading batch dims."""

    kind: ClassVar[str] = "conv"
    config: ConvConfig | None = None

    @staticmethod
    def in_axis(ndim: int) -> int:
        """The kernel axis of the layer's input channels."""
        return ndim - 2

    def _run(self, lhs, rhs, padding, **kw):
        n = lhs.ndim
        lhs_spec = (0, n - 1, *range(1, n - 1))
        dn = lax.ConvDimensionNumbers(lhs_spec, (n - 1, n - 2, *range(0, n - 2)), lhs_spec)
        cfg = self.config
        return lax.conv_general_dilated(
            lhs,
            rhs,
            cfg.strides,
            padding,
            lhs_dilation=cfg.input_dilation,
            rhs_dilation=cfg.kernel_dilation,
            dimension_numbers=dn,
            feature_group_count=cfg.feature_group_count,
            **kw,
        )

    def __call__(self, x: jax.Array, arrays: dict[str, Any]) -> jax.Array:
        n_spatial = len(self.config.kernel_size)
        batch_shape = x.shape[: x.ndim - n_spatial - 1]
        flat = jnp.reshape(x, (-1, *x.shape[len(batch_shape) :])) if len(batch_shape) != 1 else x
        y = super().__call__(flat, arrays)
        return jnp.reshape(y, (*batch_shape, *y.shape[1:])) if len(batch_shape) != 1 else y

    def float_op(self, xf, kernel, x):
        return self._run(xf, kernel, self.config.explicit_padding(x.shape))

    def integer_op(self, x, qx, zx, sx, zx0, spec, w: IntConv):
        pads = self.config.explicit_padding(x.shape)
        if zx is not None and any(p != (0, 0) for p in pads):
            qx = jnp.pad(qx, [(0, 0), *pads, (0, 0)], constant_values=zx.astype(jnp.int8))
            pads = [(0, 0)] * len(self.config.kernel_size)
        acc = self._run(qx, w.codes, pads, preferred_element_type=jnp.int32)
        if zx is not None:
            acc = acc - _per_channel(zx * w.colsum, acc.ndim)
        acc = _add(acc, self._constants(w, spec, sx, zx0))
        return _add(acc.astype(jnp.float32) * _per_channel(sx * w.scale, acc.ndim), w.bias)

    def integer_weights(self, codes, scale, zero_point, bias, *, group_axis=None) -> IntConv | None:
        """The integer form from ``(*window, I, O)`` int8 codes; None for forms it has no integer op for."""
        if zero_point is not None or group_axis is not None:
            return None  # asymmetric or per-group conv weights run on the float path
        codes = np.asarray(codes, np.int8)
        n = codes.shape[-1]
        scale = np.broadcast_to(np.asarray(scale, np.float32).reshape(-1), (n,)).copy()
        return IntConv(codes, scale, column_sums(codes), None if bias is None else np.asarray(bias, np.float32))


@dataclasses.dataclass(frozen=True)
class FoldedBatchNorm:
    """An inference BatchNorm folded into the layer before it: the program returns its input."""

    kind: ClassVar[str] = "identity"


@dataclasses.dataclass(frozen=True)
class ModelCode:
    """A module run by the model's own code, its input (and output) fake-quantized as trained."""

    kind: ClassVar[str] = "module"
    spec: InputSpec | None = None
    out_spec: InputSpec | None = None


Plan = Dense | Conv | FoldedBatchNorm | ModelCode

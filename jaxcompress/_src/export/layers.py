"""Integer layers of the exported program: int8 x int8 -> int32, then rescale.

A quantized Dense or Conv layer runs as

1. quantize its input ``x`` to int8 codes ``qx`` with scale ``sx`` and zero
   point ``zx`` (static, from calibration, or dynamic, from ``max|x|``);
2. ``acc = lax.dot_general`` / ``lax.conv_general_dilated`` of ``qx`` and the
   int8 weight codes ``qw`` with ``preferred_element_type=int32``;
3. zero points corrected *in the int32 accumulator*:
   ``sum (qx - zx)(qw - zw) = sum qx qw - zw sum qx - zx sum qw + K zx zw``,
   where ``sum qw`` is a per-output-channel constant computed at export time;
4. ``y = acc * (sx * sw) + bias`` in float32 (BatchNorm, when it follows, folded
   into ``sw`` and ``bias``).

Conv padding with an asymmetric input pads with the *code* of 0.0 (``zx``),
explicitly, so the correction term is the same at every output position.
Every layer also has a float implementation (dequantized weights, input
fake-quantized the same way) for layers where float is faster.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxcompress._src.quant.grid import InputQuant

__all__ = ["DYNAMIC_INT8", "ConvConfig", "InputSpec", "conv", "dense", "fake_quantize_input"]


DYNAMIC_INT8 = InputQuant(8, True, True, None, None, True)
"""The default input quantization: per-call symmetric int8 from ``max|x|``."""


class InputSpec(NamedTuple):
    """How the program quantizes a layer input: the recipe's ``InputQuant``, plus a range floor.

    ``floor`` is ``(lo, hi)`` of the constant inputs removed from this layer by
    structured export; a dynamic range stretches over it, so the quantization
    grid stays that of the unreduced layer.
    """

    quant: InputQuant = DYNAMIC_INT8
    floor: tuple[float, float] | None = None


def input_scale(x: jax.Array, spec: InputSpec) -> tuple[jax.Array, jax.Array | None]:
    """Scale (float32) and zero point (int32 or None) of ``x``, as ``jc.quant.quantize_input`` computes them."""
    return spec.quant.params(x, spec.floor)


def quantize_with(x: jax.Array, spec: InputSpec, scale: jax.Array, zp: jax.Array | None):
    """int8 codes of ``x`` at a given scale / zero point, and the (int8-shifted) zero point.

    The codes are those of ``jc.quant.quantize_input``; unsigned 8-bit codes
    ``[0, 255]`` are shifted by -128 into int8 (the zero point shifts with
    them), so every matmul runs int8 x int8.
    """
    q_spec = spec.quant
    q = q_spec.codes(x, scale, zp)
    if not q_spec.signed and q_spec.bits == 8:
        q = q - 128.0
        zp = (zp if zp is not None else jnp.int32(0)) - 128
    return q.astype(jnp.int8), zp


def _dequantize(q: jax.Array, scale: jax.Array, zp: jax.Array | None) -> jax.Array:
    q = q.astype(jnp.int32)
    if zp is not None:
        q = q - zp
    return q.astype(jnp.float32) * scale


def fake_quantize_input(x: jax.Array, spec: InputSpec | None) -> jax.Array:
    """``(q - zp) * scale`` in float32: what the fake-quantized model computes with."""
    return _float_input(x, {}, spec)[0]


def _float_input(x: jax.Array, w: dict, spec: InputSpec | None) -> tuple[jax.Array, jax.Array | None]:
    """The float path's input, fake-quantized, and the contribution of the constant inputs
    removed from this layer (see structured export; None if none), on the same grid."""
    c = w.get("const_values")
    if spec is not None:
        scale, zp = input_scale(x, spec)  # once: the removed constants share the input's grid

        def fake(v):
            q, zp8 = quantize_with(v, spec, scale, zp)
            return _dequantize(q, scale, zp8)

        x, c = fake(x), (None if c is None else fake(c))
    return x.astype(jnp.float32), (None if c is None else c @ w["const_kernelsum"])


def _constants_int(x: jax.Array, w: dict, spec: InputSpec, scale, zp) -> jax.Array | None:
    """Exact int32 contribution of removed constant inputs: ``(q(c) - zx) @ sum_f (qw_f - zw)``."""
    if "const_values" not in w:
        return None
    q, zp8 = quantize_with(w["const_values"], spec, scale, zp)
    q = q.astype(jnp.int32)
    if zp8 is not None:
        q = q - zp8
    return q @ w["const_codesum"]


def _per_channel(v: jax.Array, ndim: int) -> jax.Array:
    """A per-output-channel vector shaped to broadcast against a rank-``ndim`` channels-last array."""
    return jnp.reshape(v, (1,) * (ndim - 1) + (-1,))


def _add(y: jax.Array, v: jax.Array | None) -> jax.Array:
    return y if v is None else y + _per_channel(v, y.ndim)


def _epilogue(acc: jax.Array, sx: jax.Array, w_scale: jax.Array, bias: jax.Array | None) -> jax.Array:
    return _add(acc.astype(jnp.float32) * _per_channel(sx * w_scale, acc.ndim), bias)


def dense(
    x: jax.Array,
    w: dict[str, jax.Array],
    spec: InputSpec | None,
    *,
    integer: bool,
) -> jax.Array:
    """A Dense layer over the last axis of ``x``.

    ``w`` holds, for the integer path: ``codes_t`` (N, K) int8 (transposed:
    both operands contract their last axis, XLA's fastest int8 layout),
    ``scale`` (N,) float32, optional ``zero_point`` (N,) int32, ``colsum`` (N,)
    int32 (``sum_k codes``), optional ``bias`` (N,). For the float path:
    ``kernel`` (K, N) float32 and optional ``bias``.
    """
    bias = w.get("bias")
    if not integer:
        xf, removed = _float_input(x, w, spec)
        y = lax.dot_general(xf, w["kernel"], (((x.ndim - 1,), (0,)), ((), ())))
        return _add(_add(y, removed), bias)
    spec = spec or InputSpec()
    sx, zx0 = input_scale(x, spec)
    qx, zx = quantize_with(x, spec, sx, zx0)
    if "group_scale" in w:
        return _add(_grouped_dense(qx, zx, sx, w), bias)
    dims = (((x.ndim - 1,), (1,)), ((), ()))
    acc = lax.dot_general(qx, w["codes_t"], dims, preferred_element_type=jnp.int32)
    acc = _correct(acc, qx, zx, w, k=x.shape[-1], reduce_axes=(x.ndim - 1,))
    return _epilogue(_add(acc, _constants_int(x, w, spec, sx, zx0)), sx, w["scale"], bias)


def _grouped_dense(qx: jax.Array, zx, sx, w: dict) -> jax.Array:
    """Per-group scales along the reduction axis: one int32 accumulator per group, rescaled and summed.

    ``w["group_scale"]`` is (G, N); ``w["codes_t"]`` is (N, K) with K = G * group_size;
    optional ``w["group_zero_point"]`` (G, N) int32.
    """
    n_groups, n_out = w["group_scale"].shape
    lead, k = qx.shape[:-1], qx.shape[-1]
    size = k // n_groups
    xg = jnp.reshape(qx, (-1, n_groups, size))
    wg = jnp.reshape(w["codes_t"], (n_out, n_groups, size))
    acc = lax.dot_general(xg, wg, (((2,), (2,)), ((1,), (1,))), preferred_element_type=jnp.int32)  # (G, M, N)
    zw = w.get("group_zero_point")
    if zx is not None:
        colsum = jnp.sum(wg.astype(jnp.int32), axis=2).T  # (G, N)
        acc = acc - zx * colsum[:, None, :]
    if zw is not None:
        rowsum = jnp.sum(xg.astype(jnp.int32), axis=2).T  # (G, M)
        acc = acc - rowsum[:, :, None] * zw[:, None, :]
        if zx is not None:
            acc = acc + (size * zx * zw)[:, None, :]
    y = jnp.sum(acc.astype(jnp.float32) * w["group_scale"][:, None, :], axis=0) * sx
    return jnp.reshape(y, (*lead, n_out))


def _correct(acc, qx, zx, w, *, k: int, reduce_axes: tuple[int, ...]):
    """Zero-point corrections in int32 (see module docstring)."""
    zw = w.get("zero_point")
    if zx is not None:
        acc = acc - _per_channel(zx * w["colsum"], acc.ndim)
    if zw is not None:
        rowsum = jnp.sum(qx.astype(jnp.int32), axis=reduce_axes, keepdims=True)
        acc = acc - rowsum * _per_channel(zw, acc.ndim)
        if zx is not None:
            acc = acc + _per_channel(k * zx * zw, acc.ndim)
    return acc


class ConvConfig(NamedTuple):
    """The static geometry of a Flax ``nn.Conv`` call."""

    kernel_size: tuple[int, ...]
    strides: tuple[int, ...]
    padding: Any  # 'SAME' / 'VALID' / sequence of (lo, hi) pairs, after canonicalization
    input_dilation: tuple[int, ...]
    kernel_dilation: tuple[int, ...]
    feature_group_count: int


def conv_config(module: Any) -> ConvConfig | None:
    """The geometry of a linen ``nn.Conv``; None when unsupported (unshared weights, masks)."""
    from flax.linen import linear

    if not getattr(module, "shared_weights", True) or getattr(module, "mask", None) is not None:
        return None
    ks = (module.kernel_size,) if isinstance(module.kernel_size, int) else tuple(module.kernel_size)

    def bcast(v: int | Sequence[int] | None) -> tuple[int, ...]:
        v = 1 if v is None else v
        return (v,) * len(ks) if isinstance(v, int) else tuple(v)

    padding = linear.canonicalize_padding(module.padding, len(ks))
    kd = bcast(module.kernel_dilation)
    if padding in ("CIRCULAR", "REFLECT", "CAUSAL"):
        return None
    return ConvConfig(ks, bcast(module.strides), padding, bcast(module.input_dilation), kd, module.feature_group_count)


def _explicit_padding(x_shape, cfg: ConvConfig) -> list[tuple[int, int]]:
    if not isinstance(cfg.padding, str):
        return [tuple(p) for p in cfg.padding]
    spatial = x_shape[1:-1]
    dilated_in = [(n - 1) * d + 1 for n, d in zip(spatial, cfg.input_dilation, strict=True)]
    dilated_k = [(k - 1) * d + 1 for k, d in zip(cfg.kernel_size, cfg.kernel_dilation, strict=True)]
    return lax.padtype_to_pads(dilated_in, dilated_k, cfg.strides, cfg.padding)


def conv(x: jax.Array, w: dict[str, jax.Array], spec: InputSpec | None, cfg: ConvConfig, *, integer: bool):
    """A channels-last convolution (any number of leading batch dims, as Flax).

    ``w`` for the integer path: ``codes`` (*kernel, I, O) int8, ``scale`` (O,),
    optional ``zero_point`` (O,) int32, ``colsum`` (O,) int32 (sum of codes
    over the window and input channels), optional ``bias`` (O,). Float path:
    ``kernel`` (*kernel, I, O) float32 and optional ``bias``.
    """
    n_spatial = len(cfg.kernel_size)
    batch_shape = x.shape[: x.ndim - n_spatial - 1]
    x = jnp.reshape(x, (-1, *x.shape[len(batch_shape) :])) if len(batch_shape) != 1 else x
    ndim = x.ndim
    lhs = (0, ndim - 1, *range(1, ndim - 1))
    rhs = (ndim - 1, ndim - 2, *range(0, ndim - 2))
    dn = lax.ConvDimensionNumbers(lhs, rhs, lhs)
    pads = _explicit_padding(x.shape, cfg)

    def run(lhs_arr, rhs_arr, padding, **kw):
        return lax.conv_general_dilated(
            lhs_arr,
            rhs_arr,
            cfg.strides,
            padding,
            lhs_dilation=cfg.input_dilation,
            rhs_dilation=cfg.kernel_dilation,
            dimension_numbers=dn,
            feature_group_count=cfg.feature_group_count,
            **kw,
        )

    bias = w.get("bias")
    if not integer:
        xf, removed = _float_input(x, w, spec)
        y = _add(_add(run(xf, w["kernel"], pads), removed), bias)
    else:
        spec = spec or InputSpec()
        sx, zx0 = input_scale(x, spec)
        qx, zx = quantize_with(x, spec, sx, zx0)
        if zx is not None and any(p != (0, 0) for p in pads):
            qx = jnp.pad(qx, [(0, 0), *pads, (0, 0)], constant_values=zx.astype(jnp.int8))
            pads = [(0, 0)] * n_spatial
        acc = run(qx, w["codes"], pads, preferred_element_type=jnp.int32)
        if w.get("zero_point") is not None:
            raise NotImplementedError("asymmetric conv weights are exported on the float path")
        if zx is not None:
            acc = acc - _per_channel(zx * w["colsum"], acc.ndim)
        y = _epilogue(_add(acc, _constants_int(x, w, spec, sx, zx0)), sx, w["scale"], bias)
    if len(batch_shape) != 1:
        y = jnp.reshape(y, (*batch_shape, *y.shape[1:]))
    return y


def grouped_dense_weights(codes: np.ndarray, group_scale: np.ndarray, group_zero_point, bias) -> dict:
    """Integer-path arrays of a Dense layer with per-group scales (G, N) along its K axis."""
    out = {
        "codes_t": np.ascontiguousarray(np.asarray(codes, np.int8).T),
        "group_scale": np.asarray(group_scale, np.float32),
    }
    if group_zero_point is not None:
        out["group_zero_point"] = np.asarray(group_zero_point, np.int32)
    if bias is not None:
        out["bias"] = np.asarray(bias, np.float32)
    return out


def column_sums(codes: np.ndarray) -> np.ndarray:
    """Per-output-channel int32 sums of ``(..., N)`` codes: the ``colsum`` the zero-point correction needs."""
    return codes.astype(np.int32).reshape(-1, codes.shape[-1]).sum(axis=0, dtype=np.int32)


def dense_weights(codes: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, bias) -> dict:
    """Integer-path arrays of a Dense layer from (K, N) codes and per-channel scale."""
    codes = np.asarray(codes, np.int8)
    out = {
        "codes_t": np.ascontiguousarray(codes.T),
        "scale": np.asarray(scale, np.float32).reshape(-1),
        "colsum": column_sums(codes),
    }
    if zero_point is not None:
        out["zero_point"] = np.asarray(zero_point, np.int32).reshape(-1)
    if bias is not None:
        out["bias"] = np.asarray(bias, np.float32)
    return out


def conv_weights(codes: np.ndarray, scale: np.ndarray, bias) -> dict:
    """Integer-path arrays of a Conv layer from (*kernel, I, O) codes and per-channel scale."""
    codes = np.asarray(codes, np.int8)
    out = {
        "codes": codes,
        "scale": np.asarray(scale, np.float32).reshape(-1),
        "colsum": column_sums(codes),
    }
    if bias is not None:
        out["bias"] = np.asarray(bias, np.float32)
    return out

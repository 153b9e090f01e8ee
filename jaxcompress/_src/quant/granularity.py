"""Granularity: which entries of a tensor share one scale (and zero point).

* :func:`per_tensor`: one scale for the whole tensor.
* :func:`per_channel`: one scale per slice along ``axis`` (the output channels,
  the last axis of Flax ``Dense`` and ``Conv`` kernels).
* :func:`per_group`: one scale per output channel *and* per group of
  ``size`` consecutive entries along the reduction axis ``axis`` (the inputs,
  axis -2 of Dense and Conv kernels), as in GPTQ/AWQ-style 4-bit weights.
  ``size`` must divide that axis.

Statistics (scales, zero points) are kept with the tensor's ndim: each axis of
size 1 (reduced), of the tensor's size (the channel axis), or, along the group
axis, of size ``n // size``. This is the layout of
:class:`jaxcompress.IntegerWeights`; :func:`expand` repeats a statistic
back to the tensor's shape.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxcompress._src import validate

__all__ = ["Granularity", "expand", "per_channel", "per_group", "per_tensor", "reduce", "stat_shape"]


@dataclasses.dataclass(frozen=True)
class Granularity:
    """Which entries share a scale: see the module docstring.

    Attributes:
      channel_axis: axis with one scale per entry (``None``: none).
      group_axis: axis split into groups of ``group_size`` (``None``: none).
      group_size: entries per group along ``group_axis``.
    """

    channel_axis: int | None = None
    group_axis: int | None = None
    group_size: int | None = None

    def __repr__(self) -> str:
        if self.group_axis is not None:
            return f"per_group({self.group_size}, axis={self.group_axis}, channel_axis={self.channel_axis})"
        if self.channel_axis is not None:
            return f"per_channel(axis={self.channel_axis})"
        return "per_tensor()"

    def axes(self, ndim: int, *, argument: str = "granularity") -> tuple[int | None, int | None]:
        """``(channel_axis, group_axis)`` made non-negative for a tensor of ``ndim`` dims."""
        out = []
        for name, axis in (("channel_axis", self.channel_axis), ("group_axis", self.group_axis)):
            if axis is None or ndim == 0:
                out.append(None)
                continue
            if not -ndim <= axis < ndim:
                raise ValueError(f"`{argument}` {self!r}: {name}={axis} is out of range for a tensor of ndim {ndim}.")
            out.append(axis % ndim)
        if out[0] is not None and out[0] == out[1]:
            raise ValueError(f"`{argument}` {self!r}: the channel and group axes must differ.")
        return out[0], out[1]

    def stat_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of a statistic (scale, zero point) of a tensor of ``shape``."""
        return stat_shape(self, shape)

    def check_leaves(self, flat: dict[str, Any], paths: list[str]) -> None:
        """:meth:`check` for each leaf ``flat[p]`` of ``paths`` (named by its path in errors)."""
        for p in paths:
            self.check(tuple(jnp.shape(flat[p])), where=f"leaf {p!r}")

    def check(self, shape: tuple[int, ...], *, where: str = "tensor", argument: str = "granularity") -> None:
        """Raises a ``ValueError`` if this granularity cannot apply to ``shape``."""
        _, group_axis = self.axes(len(shape), argument=argument)
        if self.group_axis is not None and group_axis is None:
            raise ValueError(f"`{argument}` {self!r} needs a tensor with at least one axis; {where} is a scalar.")
        if group_axis is not None and shape[group_axis] % self.group_size:
            raise ValueError(
                f"`{argument}` group size {self.group_size} does not divide axis {self.group_axis} of {where} "
                f"(shape {tuple(shape)}, size {shape[group_axis]}); pick a group size that divides "
                f"{shape[group_axis]}."
            )


def per_tensor() -> Granularity:
    """One scale for the whole tensor."""
    return Granularity()


def per_channel(axis: int = -1) -> Granularity:
    """One scale per slice along ``axis`` (default: the last, output-channel axis)."""
    return Granularity(channel_axis=validate.check_int(axis, argument="axis"))


def per_group(size: int, *, axis: int = -2, channel_axis: int | None = -1) -> Granularity:
    """One scale per output channel and per group of ``size`` entries along ``axis``.

    Args:
      size: entries per group (typically 32, 64 or 128); must divide the axis.
      axis: the reduction axis the groups run along (default -2: the input
        features of a Dense kernel, the input channels of a Conv kernel).
      channel_axis: the output-channel axis (``None``: groups span all channels).

    Returns:
      A :class:`Granularity`.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxcompress import quant
      >>> quant.per_group(32).stat_shape((128, 10))
      (4, 10)
    """
    size = validate.check_int(size, argument="size", minimum=1)
    axis = validate.check_int(axis, argument="axis")
    if channel_axis is not None:
        channel_axis = validate.check_int(channel_axis, argument="channel_axis")
    return Granularity(channel_axis=channel_axis, group_axis=axis, group_size=size)


def as_granularity(value: Granularity | str, *, argument: str = "granularity") -> Granularity:
    """A :class:`Granularity` from itself or ``"tensor"`` / ``"channel"``."""
    if isinstance(value, Granularity):
        return value
    if value == "tensor":
        return per_tensor()
    if value == "channel":
        return per_channel()
    raise TypeError(
        f"`{argument}` must be quant.per_tensor(), quant.per_channel(axis), quant.per_group(size, axis=...) "
        f"or one of 'tensor', 'channel'; got {value!r}."
    )


def stat_shape(granularity: Granularity, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of a statistic (scale, zero point) of a tensor of ``shape``."""
    channel_axis, group_axis = granularity.axes(len(shape))
    out = []
    for a, n in enumerate(shape):
        if a == channel_axis:
            out.append(n)
        elif a == group_axis:
            out.append(n // granularity.group_size)
        else:
            out.append(1)
    return tuple(out)


def _grouped_shape(granularity: Granularity, shape: tuple[int, ...]) -> tuple[tuple[int, ...], int | None]:
    _, group_axis = granularity.axes(len(shape))
    if group_axis is None:
        return tuple(shape), None
    g = granularity.group_size
    return (*shape[:group_axis], shape[group_axis] // g, g, *shape[group_axis + 1 :]), group_axis


def reduce(fn: Callable[..., jax.Array], x: jax.Array, granularity: Granularity) -> jax.Array:
    """``fn(x, axis=..., keepdims=True)`` over each set of entries sharing a scale.

    Returns the statistic in :func:`stat_shape` layout.
    """
    channel_axis, _ = granularity.axes(x.ndim)
    grouped, group_axis = _grouped_shape(granularity, x.shape)
    if group_axis is None:
        axes = tuple(a for a in range(x.ndim) if a != channel_axis)
        return fn(x, axis=axes, keepdims=True)
    xg = jnp.reshape(x, grouped)
    keep = {group_axis, channel_axis + (channel_axis > group_axis) if channel_axis is not None else None}
    axes = tuple(a for a in range(xg.ndim) if a not in keep)
    out = fn(xg, axis=axes, keepdims=True)
    return jnp.reshape(out, stat_shape(granularity, x.shape))


def grouped_view(x: jax.Array, stats: tuple[jax.Array | None, ...], granularity: Granularity):
    """``x`` and ``stats`` reshaped to broadcast elementwise, and the inverse reshape for the result.

    Per-tensor and per-channel statistics already broadcast; per-group ones
    broadcast against ``x`` with its group axis split into ``(groups, size)``.
    Elementwise results are identical (bitwise) to those against
    :func:`expand`-ed statistics, without materializing the repeat.
    """
    grouped, group_axis = _grouped_shape(granularity, x.shape)
    if group_axis is None:
        return x, stats, lambda y: y
    shape = x.shape
    split = tuple(None if s is None else jnp.expand_dims(s, group_axis + 1) for s in stats)
    return jnp.reshape(x, grouped), split, lambda y: jnp.reshape(y, shape)


def expand(stat: jax.Array, granularity: Granularity, shape: tuple[int, ...]) -> jax.Array:
    """A statistic repeated to ``shape`` along the group axis (other axes broadcast)."""
    _, group_axis = granularity.axes(len(shape))
    if group_axis is None:
        return stat
    return jnp.repeat(stat, granularity.group_size, axis=group_axis)

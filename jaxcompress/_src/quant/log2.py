"""Power-of-two (logarithmic) weight quantization.

With ``L = 2^(b-1) - 1`` magnitudes, every weight becomes ``0`` or
``± alpha * 2^(-k)``, ``k in {0, ..., L-1}``, where ``alpha = max|w|`` per
slice of the :mod:`~jaxcompress.quant.granularity`: a sign bit and ``b - 1``
bits of exponent, so multiplications become shifts. Each ``|w| / alpha`` goes
to the nearest level (linear distance; exactly halfway goes up), and to zero
when it is nearer zero than the smallest level. Zero stays zero.

In integer form the leaf is a codebook leaf: ``codes`` (``uint8``) index the
codebook ``[0, 2^0, 2^-1, ..., 2^-(L-1), -2^0, ..., -2^-(L-1)]`` (``2^b - 1``
entries) and ``scale`` holds ``alpha``. Gradients are straight through.

References:
  Miyashita, Lee & Murmann, "Convolutional Neural Networks using Logarithmic
  Data Representation", 2016. https://arxiv.org/abs/1603.01025
  Zhou et al., "Incremental Network Quantization", 2017.
  https://arxiv.org/abs/1702.03044
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxcompress._src import core, validate
from jaxcompress._src import paths as paths_lib
from jaxcompress._src.integer import IntegerWeights
from jaxcompress._src.quant import granularity as gran_lib
from jaxcompress._src.quant.grid import check_bits, headroom, reciprocal
from jaxcompress._src.quant.ste import straight_through

__all__ = ["Log2State", "log2", "log2_codebook", "log2_quantize"]


class Log2State(NamedTuple):
    """State of :func:`log2`."""

    bits: dict[str, jax.Array]  # per selected leaf: shape=(), dtype=int32 (the width in use is static)


def log2_codebook(bits: int) -> jax.Array:
    """The float32 codebook ``[0, 1, 1/2, ..., 2^-(L-1), -1, ..., -2^-(L-1)]``, ``L = 2^(b-1) - 1``."""
    levels = 2.0 ** -jnp.arange(2 ** (bits - 1) - 1, dtype=jnp.float32)
    return jnp.concatenate([jnp.zeros((1,), jnp.float32), levels, -levels])


def log2_quantize(w: jax.Array, bits: int, granularity: gran_lib.Granularity | str = "channel") -> IntegerWeights:
    """The differentiable integer form of ``w`` (a codebook leaf, see the module docstring).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxcompress import quant
      >>> w = jnp.array([1.0, 0.6, -0.3, 0.1, 0.0])
      >>> quant.log2_quantize(w, 3, "tensor").dequantize().tolist()  # levels 0, 1, 1/2, 1/4
      [1.0, 0.5, -0.25, 0.0, 0.0]
    """
    granularity = gran_lib.as_granularity(granularity)
    n_levels = 2 ** (bits - 1) - 1
    w32 = w.astype(jnp.float32)
    amax = lax.stop_gradient(gran_lib.reduce(jnp.max, jnp.abs(w32), granularity))
    alpha = jnp.where(amax > 0, jnp.maximum(amax, jnp.finfo(jnp.float32).tiny), 1.0)
    wv, (av,), unview = gran_lib.grouped_view(w32, (alpha,), granularity)
    f = headroom(av)  # 1 / alpha would be a denormal near the float32 maximum
    v = lax.stop_gradient((jnp.abs(wv) * f) * reciprocal(av * f))  # in [0, 1]
    _, exponent = jnp.frexp(v)  # v = mantissa * 2^exponent, mantissa in [0.5, 1)
    upper = jnp.ldexp(jnp.ones_like(v), exponent)  # v in [upper / 2, upper)
    k = jnp.where(v >= 0.75 * upper, -exponent, 1 - exponent)  # nearest level 2^-k
    smallest = jnp.float32(2.0 ** -(n_levels - 1))
    k_clamped = jnp.minimum(k, n_levels - 1)
    is_zero = (v == 0) | ((k > n_levels - 1) & (v < 0.5 * smallest))
    index = jnp.where(wv < 0, 1 + n_levels + k_clamped, 1 + k_clamped)
    codes = jnp.where(is_zero, 0, index).astype(jnp.float32)
    _, group_axis = granularity.axes(w.ndim)
    return IntegerWeights(
        unview(straight_through(wv, codes)),  # a codebook code passes its value's gradient through
        alpha,
        None,
        bits,
        False,
        group_axis=group_axis,
        group_size=granularity.group_size if group_axis is not None else None,
        codebook=log2_codebook(bits),
    )


def log2(
    bits: int = 4,
    *,
    granularity: gran_lib.Granularity | str = "channel",
    rule: paths_lib.Rule = paths_lib.KERNELS,
) -> core.Quantizer:
    """Power-of-two weight quantization: ``w -> 0`` or ``± alpha 2^-k``.

    Args:
      bits: bit width, 2 to 8 (one sign bit; ``2^(b-1) - 1`` magnitudes).
      granularity: how ``alpha = max|w|`` is shared: :func:`per_channel`
        (default), :func:`per_tensor` or :func:`per_group`.
      rule: which leaves to quantize (default: ``ndim >= 2``).

    Returns:
      A :class:`jaxcompress.Quantizer` whose state is :class:`Log2State`; its
      leaves are codebook leaves (``uint8`` indices into :func:`log2_codebook`,
      ``alpha`` as scale).

    Example:
      >>> import jax.numpy as jnp, jaxcompress as jc
      >>> q, _ = jc.compress(jc.quant.log2(3, granularity="tensor"), {"w": jnp.array([[2.0, -1.2], [0.6, 0.1]])})
      >>> q["w"].tolist()  # alpha = 2: levels 0, 2, 1, 0.5
      [[2.0, -1.0], [0.5, 0.0]]

    References:
      Miyashita et al. 2016, https://arxiv.org/abs/1603.01025
    """
    bits = check_bits(bits)
    granularity = gran_lib.as_granularity(granularity)
    selector = paths_lib.as_selector(rule)

    def init(params: Any) -> Log2State:
        flat, selected = validate.selected_weights(selector, params)
        granularity.check_leaves(flat, selected)
        return Log2State({p: jnp.asarray(bits, jnp.int32) for p in selected})

    def update(params: Any, state: Log2State, grads: Any = None, **extra_args) -> Log2State:
        del params, grads, extra_args
        return state

    def quantize(params: Any, state: Log2State) -> dict[str, IntegerWeights]:
        return {p: log2_quantize(w, bits, granularity) for p, w in paths_lib.leaves_at(params, state.bits).items()}

    return core.Quantizer(init, *core.checking_state(Log2State, "jc.quant.log2", update, quantize))

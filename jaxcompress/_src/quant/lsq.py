"""LSQ: learned step size quantization (Esser et al. 2020).

The step size ``s`` is a trainable parameter; with ``Q_N``, ``Q_P`` the
magnitudes of the lowest and highest codes (signed: ``2^(b-1)``,
``2^(b-1) - 1``; unsigned: ``0``, ``2^b - 1``)

.. math::

    \\bar v = \\mathrm{round}(\\mathrm{clip}(v / s, -Q_N, Q_P)), \\qquad \\hat v = \\bar v\\, s

and, through the straight-through estimator, the paper's gradient (eq. 3)

.. math::

    \\frac{\\partial \\hat v}{\\partial s} =
    \\begin{cases} -v/s + \\mathrm{round}(v/s) & -Q_N < v/s < Q_P \\\\
                   -Q_N & v/s \\le -Q_N \\\\ Q_P & v/s \\ge Q_P \\end{cases}

scaled by ``g = 1 / sqrt(N Q_P)`` (``N``: weights per step size, or features
per example for activations) with :func:`~jaxcompress.quant.scale_grad`,
which leaves the forward pass bitwise unchanged. The weights' gradient is
straight through inside the range and zero outside. A step size is floored at
``1e-12`` in use, so an optimizer step that drives it to zero or below cannot
produce NaNs.

Step sizes live in a :class:`jaxcompress.Learned` node: get their
gradients with :func:`jaxcompress.optim.value_and_grad` and pass them as
``learned_grads=`` to :func:`jaxcompress.optim.with_compression`.

References:
  Esser, McKinstry, Bablani, Appuswamy & Modha, "Learned Step Size
  Quantization", ICLR 2020. https://arxiv.org/abs/1902.08153
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxcompress._src import core, validate
from jaxcompress._src import paths as paths_lib
from jaxcompress._src.integer import IntegerWeights
from jaxcompress._src.quant import granularity as gran_lib
from jaxcompress._src.quant.grid import check_bits, check_bool, headroom, int_range, reciprocal
from jaxcompress._src.quant.ste import clip_ste, round_ste, scale_grad

__all__ = ["LSQState", "lsq", "lsq_fake_quant", "lsq_init_step", "lsq_quantize"]

MIN_STEP = 1e-12


def clamp_step(step: jax.typing.ArrayLike) -> jax.Array:
    """``step`` as float32, at least :data:`MIN_STEP` (the step LSQ quantizes and exports with)."""
    return jnp.maximum(jnp.asarray(step, jnp.float32), MIN_STEP)


class LSQState(NamedTuple):
    """State of :func:`lsq`."""

    learned: core.Learned  # step sizes by path, float32, shaped like IntegerWeights.scale


def code_bounds(bits: int, signed: bool) -> tuple[int, int]:
    """``(Q_N, Q_P)``: the codes run over ``[-Q_N, Q_P]``."""
    qmin, qmax = int_range(bits, signed=signed)
    return -qmin, qmax


def lsq_init_step(x: jax.Array, bits: int, *, signed: bool = True, granularity=None) -> jax.Array:
    """The paper's initial step ``2 mean|x| / sqrt(Q_P)`` per slice (1.0 for an all-zero slice)."""
    granularity = gran_lib.per_tensor() if granularity is None else gran_lib.as_granularity(granularity)
    qn, qp = code_bounds(bits, signed)
    magnitude = jnp.abs(x.astype(jnp.float32))
    f = headroom(jnp.max(magnitude, initial=0.0))  # the sum inside the mean must not overflow
    mean_abs = gran_lib.reduce(jnp.mean, magnitude * f, granularity) / f
    twice = 2.0 * mean_abs
    step = jnp.where(jnp.isfinite(twice), twice / math.sqrt(qp), mean_abs * (2.0 / math.sqrt(qp)))  # no overflow
    # The grid's ends, qp * step and -qn * step, must stay finite float32 values.
    step = jnp.minimum(step, jnp.float32(float(jnp.finfo(jnp.float32).max) / max(qp, qn)))
    return jnp.where(mean_abs > 0, step, 1.0).astype(jnp.float32)


def lsq_fake_quant(
    x: jax.Array,
    step: jax.Array,
    bits: int,
    *,
    signed: bool = True,
    granularity: gran_lib.Granularity | str | None = None,
    n: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """LSQ quantize-dequantize of ``x`` with step ``step`` (see the module docstring).

    Args:
      x: a float array.
      step: the step size(s), shaped by ``granularity`` (a scalar or keepdims
        array for per-tensor).
      bits: bit width, 2 to 8.
      signed: signed codes ``[-2^(b-1), 2^(b-1))`` or unsigned ``[0, 2^b)``.
      granularity: how ``step`` is shared (default per tensor).
      n: ``N`` of the gradient scale ``1 / sqrt(N Q_P)`` (default: entries of
        ``x`` per step size).

    Returns:
      ``(x_hat in x.dtype, float codes)``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxcompress import quant
      >>> x, s = jnp.array([0.3, 1.1, -5.0]), jnp.float32(0.5)
      >>> quant.lsq_fake_quant(x, s, 3, n=1)[0].tolist()  # codes in [-4, 3]
      [0.5, 1.0, -2.0]
    """
    granularity = gran_lib.per_tensor() if granularity is None else gran_lib.as_granularity(granularity)
    iw = lsq_quantize(x, step, bits, signed=signed, granularity=granularity, n=n)
    return iw.dequantize().astype(x.dtype), iw.codes


def lsq_quantize(
    x: jax.Array, step: jax.Array, bits: int, *, signed: bool, granularity: gran_lib.Granularity, n: int | None = None
) -> IntegerWeights:
    """The differentiable integer form of :func:`lsq_fake_quant` (scale: the clamped step, gradient-scaled)."""
    qn, qp = code_bounds(bits, signed)
    step = jnp.asarray(step, jnp.float32)
    if n is None:
        n = max(1, math.prod(jnp.shape(x)) // max(1, math.prod(jnp.shape(step))))
    s = scale_grad(clamp_step(step), jnp.float32(1.0 / math.sqrt(n * qp)))
    group_axis = None
    if step.ndim:
        xv, (sv,), unview = gran_lib.grouped_view(x.astype(jnp.float32), (s,), granularity)
        group_axis = granularity.axes(x.ndim)[1]
    else:
        xv, sv, unview = x.astype(jnp.float32), s, lambda y: y
    f = headroom(lax.stop_gradient(sv))  # 1 / a step near the float32 maximum would be a denormal
    codes = round_ste(clip_ste((xv * f) * reciprocal(sv * f), jnp.float32(-qn), jnp.float32(qp)))
    return IntegerWeights(
        unview(codes),
        s,
        None,
        bits,
        signed,
        group_axis=group_axis,
        group_size=granularity.group_size if group_axis is not None else None,
    )


def lsq(
    bits: int = 4,
    *,
    signed: bool = True,
    granularity: gran_lib.Granularity | str = "channel",
    rule: paths_lib.Rule = paths_lib.KERNELS,
) -> core.Quantizer:
    """LSQ weight quantization: uniform grid with a learned step size per slice.

    Each selected weight becomes ``round(clip(w / s, -Q_N, Q_P)) * s`` (see the
    module docstring); ``s`` starts at ``2 mean|w| / sqrt(Q_P)`` per slice of
    ``granularity`` and is trained through ``learned_grads``.

    Args:
      bits: bit width, 2 to 8.
      signed: signed codes (the paper's choice for weights) or unsigned.
      granularity: :func:`per_channel` (default), :func:`per_tensor` (the
        paper's), or :func:`per_group`.
      rule: which leaves to quantize (default: ``ndim >= 2``).

    Returns:
      A :class:`jaxcompress.Quantizer` whose state is :class:`LSQState`; its
      codes lie in ``[-Q_N, Q_P]``, its scales are the step sizes (no zero point).

    Example:
      >>> import jax.numpy as jnp, jaxcompress as jc
      >>> recipe = jc.quant.lsq(4, granularity="tensor")
      >>> params = {"w": jnp.array([[0.1, -0.4], [0.25, 0.8]])}
      >>> state = recipe.init(params)
      >>> loss = lambda p, c: jnp.sum(recipe.apply(p, c)["w"] ** 2)
      >>> _, _, (learned,) = jc.optim.value_and_grad(loss)(params, state)
      >>> learned.values["w"].shape
      (1, 1)

    References:
      Esser et al., "Learned Step Size Quantization", 2020.
      https://arxiv.org/abs/1902.08153
    """
    bits = check_bits(bits)
    check_bool(signed, argument="signed")
    granularity = gran_lib.as_granularity(granularity)
    selector = paths_lib.as_selector(rule)

    def init(params: Any) -> LSQState:
        flat, selected = validate.selected_weights(selector, params)
        granularity.check_leaves(flat, selected)
        steps = {p: lsq_init_step(flat[p], bits, signed=signed, granularity=granularity) for p in selected}
        return LSQState(core.Learned(steps))

    def update(params: Any, state: LSQState, grads: Any = None, **extra_args) -> LSQState:
        del params, grads, extra_args
        return state

    def quantize(params: Any, state: LSQState) -> dict[str, IntegerWeights]:
        steps = state.learned.values
        leaves = paths_lib.leaves_at(params, steps)
        for p, w in leaves.items():
            expected = granularity.stat_shape(tuple(jnp.shape(w)))
            if tuple(jnp.shape(steps[p])) != tuple(expected):
                raise ValueError(
                    f"`params` leaf {p!r} has shape {tuple(jnp.shape(w))}, but the jc.quant.lsq state holds a step "
                    f"of shape {tuple(jnp.shape(steps[p]))} for it (expected {tuple(expected)}): the state was "
                    f"built for other params. Pass params shaped as at init (re-run init after changing the model)."
                )
        return {p: lsq_quantize(w, steps[p], bits, signed=signed, granularity=granularity) for p, w in leaves.items()}

    return core.Quantizer(init, *core.checking_state(LSQState, "jc.quant.lsq", update, quantize))

"""Post-training calibration of static activation ranges over a dataset iterator.

:func:`calibrate` runs the model (float activations, weights as you pass them)
over calibration batches, observes the input (and output) of every layer an
:func:`~jaxcompress.quant.activations` transform selects, and stores a range
per site in the state. Per batch ``t`` it measures a range ``[lo_t, hi_t]``
and combines them:

* ``"minmax"``: ``[min_t lo_t, max_t hi_t]``, the batch min and max.
* ``"ema"`` (moving-average min-max): ``r_1 = [lo_1, hi_1]``,
  ``r_t = m r_{t-1} + (1 - m) [lo_t, hi_t]``.
* ``"percentile"``: per batch, ``hi_t`` is the ``p``-th percentile of ``|x|``
  (symmetric signed; ``lo_t = -hi_t``) or of ``x`` (``lo_t`` the
  ``(100 - p)``-th); the range is their mean over batches.
* ``"mse"``: per batch, the clipping range minimizing the squared error of the
  fake-quantized batch, searched over ``candidates`` ranges ``(k / K)
  [lo_t, hi_t]``, ``k = 1..K``; the range is their mean over batches.

Percentiles are linear-interpolated, as ``jnp.percentile``'s default
computes them, but without its sort (:func:`exact_percentile`): on an
activation sharded over devices a sort gathers the whole tensor, while the
count-based selection of ``prune/threshold.py`` exchanges a few scalars per
device per pass. Min-max, percentile and MSE ranges all reduce over every axis of the
activation as it comes (never reshaped), so a sharded batch stays sharded. For
``"lsq"`` sites the step size is initialized from the range (``max(|lo|,
|hi|) / Q_P``), for ``"pact"`` the clipping level to ``hi``. The state's
``count`` becomes the number of batches.

References:
  Migacz, "8-bit Inference with TensorRT", GTC 2017 (percentile/entropy calibration).
  Krishnamoorthi, "Quantizing deep convolutional networks for efficient
  inference: A whitepaper", 2018. https://arxiv.org/abs/1806.08342
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxcompress._src import core, validate
from jaxcompress._src.prune import threshold
from jaxcompress._src.quant import activations as activation
from jaxcompress._src.quant import hooks
from jaxcompress._src.quant import lsq as lsq_lib
from jaxcompress._src.quant.grid import Range, codes_ste, dequantize_codes, range_union

__all__ = ["METHODS", "calibrate", "exact_percentile", "observe_range"]

METHODS = ("minmax", "ema", "percentile", "mse")


def _check_percentile(q: Any, *, argument: str, zero_ok: bool = True) -> None:
    """A ValueError unless ``q`` is traced or a real number in ``[0, 100]`` (``(0, 100]`` without ``zero_ok``)."""
    if isinstance(q, jax.core.Tracer):
        return
    number = isinstance(q, numbers.Real) and not isinstance(q, bool)
    number |= isinstance(q, (np.ndarray, jax.Array)) and q.ndim == 0 and jnp.issubdtype(q.dtype, jnp.number)
    in_range = number and (float(q) >= 0 if zero_ok else float(q) > 0) and float(q) <= 100
    if not in_range:
        raise ValueError(f"`{argument}` must be a number in {'[0, 100]' if zero_ok else '(0, 100]'}, got {q!r}.")


def _interpolation(q: jax.typing.ArrayLike, n: int) -> tuple[Any, ...]:
    """``(floor, ceil, floor weight, ceil weight)`` of ``jnp.percentile``'s linear interpolation among ``n`` values.

    ``jnp.percentile``'s float32 ops: position ``pos = q / 100 * (n - 1)``,
    its floor and ceiling clamped into ``[0, n - 1]``, weights ``1 - w`` and
    ``w = pos - floor(pos)``. A concrete ``q`` is worked out on the host,
    each op rounded as written; for a traced one XLA may fold the constants
    into ``q * ((n - 1) / 100)``, as it does inside ``jnp.percentile``.
    """
    xp = jnp if isinstance(q, jax.core.Tracer) else np
    last = np.float32(n) - np.float32(1)  # n - 1, rounded as jnp.percentile rounds it
    pos = xp.asarray(q, xp.float32) / xp.float32(100) * last
    low = xp.clip(xp.floor(pos), xp.float32(0), last)
    high = xp.clip(xp.ceil(pos), xp.float32(0), last)
    high_weight = pos - xp.floor(pos)
    return low, high, xp.float32(1) - high_weight, high_weight


def exact_percentile(
    x: jax.Array, q: jax.typing.ArrayLike, *, score: Callable[[jax.Array], jax.Array] | None = None
) -> jax.Array:
    """The ``q``-th percentile of all entries of ``x`` (of ``score(x)``), as ``jnp.percentile(x, q)``, sort-free.

    Linear interpolation (``jnp.percentile``'s default), in its float32
    arithmetic: at position ``pos = q / 100 * (n - 1)`` among the ``n``
    sorted values ``v``, ``v[floor(pos)] * (1 - w) + v[ceil(pos)] * w`` with
    ``w = pos - floor(pos)``; NaN if any value is NaN. The two order
    statistics are exact, from
    :func:`jaxcompress._src.prune.threshold.kth_values` (a count-based search
    and one more pass): ``x`` is read a few times, never sorted, and a sharded
    ``x`` is never gathered. The interpolation is ``jnp.percentile``'s
    sequence of float32 ops (see :func:`_interpolation`), so the result is
    ``jnp.percentile``'s when both are compiled alike. Where the position is a
    whole number (``q`` 0 or 100, ``n = 1``, ...) it is an exact order
    statistic, the same everywhere; elsewhere XLA's rewrites (the position of
    a traced ``q``, a product and the sum fused into an FMA where the backend
    does so) can move the last bits, in ``jnp.percentile`` as much as here.
    ``-0.0`` comes back as ``0.0``, as ``jnp.sort`` orders it; like
    ``jnp.percentile``, an infinite order statistic with weight 0 gives NaN.

    Args:
      x: a float array (any shape).
      q: the percentile, in ``[0, 100]`` (a number, or a traced float32 scalar).
      score: an elementwise map applied to ``x`` in every pass (e.g.
        ``jnp.abs``): the percentile of ``score(x)``, never stored.

    Returns:
      A float32 scalar.

    Raises:
      ValueError: ``x`` is empty or not floating point, or ``q`` lies outside ``[0, 100]``.

    Example: ``exact_percentile(jnp.array([4.0, 1.0, 3.0, 2.0]), 50.0)`` is ``2.5``
    (:func:`observe_range`'s example runs it).
    """
    _check_percentile(q, argument="q")
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"`x` must be a floating-point array, got dtype {x.dtype}.")
    if x.size == 0:
        raise ValueError("`x` is empty: a percentile needs at least one value.")
    low, high, low_weight, high_weight = _interpolation(q, x.size)
    found = threshold.kth_values([x], jnp.asarray(low, jnp.float32).astype(jnp.int32) + 1, score=score)
    high_value = jnp.where(high > low, found.next, found.kth)
    value = found.kth * low_weight + high_value * high_weight
    return jnp.where(found.any_nan, jnp.float32(jnp.nan), value)


def observe_range(
    x: jax.Array,
    config: activation.ActivationConfig,
    *,
    method: str = "minmax",
    percentile: float = 99.99,
    candidates: int = 100,
) -> Range:
    """One batch's range of ``x`` for ``method`` (``"ema"`` observes like ``"minmax"``).

    Every method reduces ``x`` over all its axes as it is (see the module
    docstring): on a sharded ``x`` the devices exchange scalars only.

    Raises:
      ValueError: an unknown ``method``, ``percentile`` outside ``(0, 100]`` or
        ``candidates`` below 1.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxcompress import quant
      >>> config = quant.ActivationConfig(8, True, True, "static", False, 0.9, (), ())
      >>> r = quant.observe_range(jnp.arange(-50.0, 51.0), config, method="percentile", percentile=90.0)
      >>> float(r.lo), float(r.hi)
      (-45.0, 45.0)
    """
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}.")
    x32 = jnp.asarray(x, jnp.float32)
    symmetric_signed = config.symmetric and config.signed
    if method in ("minmax", "ema"):
        return activation.observed_range(x32, config)
    if method == "percentile":
        _check_percentile(percentile, argument="percentile", zero_ok=False)
        if symmetric_signed:
            hi = exact_percentile(x32, percentile, score=jnp.abs)
            return Range(-hi, hi)
        return Range(exact_percentile(x32, 100.0 - percentile), exact_percentile(x32, percentile))
    candidates = validate.check_int(candidates, argument="candidates", minimum=1)
    full = activation.observed_range(x32, config)

    def sse(fraction):
        scale, zp, qmin, qmax = activation.config_grid(config, Range(full.lo * fraction, full.hi * fraction))
        deq = dequantize_codes(codes_ste(x32, scale, zp, qmin, qmax), scale, zp)
        return jnp.sum(jnp.square(deq - x32))

    fractions = jnp.arange(1, candidates + 1, dtype=jnp.float32) / jnp.float32(candidates)
    errors = lax.map(sse, fractions)  # one scalar sum per candidate (a scalar all-reduce when sharded)
    best = fractions[jnp.argmin(errors)]
    return Range(full.lo * best, full.hi * best)


def calibrate(
    apply_fn: Callable[[Any, Any], Any],
    params: Any,
    cstate: Any,
    batches: Iterable[Any],
    *,
    method: str = "minmax",
    percentile: float = 99.99,
    momentum: float = 0.9,
    candidates: int = 100,
    num_batches: int | None = None,
) -> Any:
    """Static activation ranges from calibration batches (see the module docstring).

    Args:
      apply_fn: ``apply_fn(params, batch)`` runs the linen model, e.g.
        ``lambda p, x: model.apply({"params": p}, x)``. Pass params with the
        weights quantized (``recipe.apply(params, cstate)``) to calibrate the
        activations the quantized model will see.
      params: the params for ``apply_fn``.
      cstate: a compression state holding :func:`~jaxcompress.quant.activations`
        states (any mode; all their sites are calibrated).
      batches: an iterable of model inputs (whatever ``apply_fn`` takes).
      method: ``"minmax"``, ``"ema"``, ``"percentile"`` or ``"mse"``.
      percentile: for ``"percentile"``, in ``(0, 100]``.
      momentum: for ``"ema"``, in ``[0, 1)``.
      candidates: for ``"mse"``, the number of clipping ranges searched.
      num_batches: stop after this many batches (default: all).

    Returns:
      ``cstate`` with every activation state's ranges set (and LSQ steps /
      PACT levels initialized), ``count`` set to the number of batches.

    Example:
      >>> import flax.linen as nn, jax, jax.numpy as jnp, jaxcompress as jc
      >>> model = nn.Dense(2)
      >>> params = model.init(jax.random.key(0), jnp.ones((1, 3)))["params"]
      >>> aq = jc.quant.activations(8, mode="static")
      >>> batches = [jnp.full((4, 3), v) for v in (-1.0, 0.5, 2.0)]
      >>> cstate = jc.quant.calibrate(lambda p, x: model.apply({"params": p}, x), params, aq.init(params), batches)
      >>> iq = jc.quant.input_quantization(cstate)[""]
      >>> round(float(iq.scale) * 127, 6), int(cstate.count)
      (2.0, 3)
    """
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}.")
    if not callable(apply_fn):
        raise TypeError(f"`apply_fn` must be callable (params, batch) -> outputs, got {type(apply_fn).__name__}.")
    if isinstance(percentile, bool) or not isinstance(percentile, (int, float)) or not 0 < percentile <= 100:
        raise ValueError(f"`percentile` must be a number in (0, 100], got {percentile!r}.")
    momentum = validate.check_fraction(momentum, argument="momentum")
    candidates = validate.check_int(candidates, argument="candidates", minimum=1)
    if num_batches is not None:
        num_batches = validate.check_int(num_batches, argument="num_batches", minimum=1)
    sites = activation.require_sites(cstate)
    modules = {m for m, kind in sites if kind == "inputs"}
    outs = {m for m, kind in sites if kind == "outputs"}

    @jax.jit
    def observe(params, batch):
        seen: dict[tuple[str, str], Range] = {}

        def site_fn(module, kind, x):
            r = observe_range(
                x, sites[(module, kind)].config, method=method, percentile=percentile, candidates=candidates
            )
            if (module, kind) in seen:  # called twice in one batch: the union
                r = range_union(seen[(module, kind)], r)
            seen[(module, kind)] = r
            return x

        with hooks.intercept_layers(modules, outs, site_fn):
            apply_fn(params, batch)
        return seen

    combined: dict[tuple[str, str], Range] = {}
    n = 0
    for batch in batches:
        if num_batches is not None and n >= num_batches:
            break
        for key, r in observe(params, batch).items():
            if key not in combined:
                combined[key] = r
            elif method == "minmax":
                combined[key] = range_union(combined[key], r)
            elif method == "ema":
                m = jnp.float32(momentum)
                old = combined[key]
                combined[key] = Range(m * old.lo + (1 - m) * r.lo, m * old.hi + (1 - m) * r.hi)
            else:  # running sums, divided by n at the end
                combined[key] = Range(combined[key].lo + r.lo, combined[key].hi + r.hi)
        n += 1
    if n == 0:
        raise ValueError("`batches` yielded no batch; calibration needs at least one.")
    missing = sorted({m for (m, _) in sites} - {m for (m, _) in combined})
    if missing:
        raise ValueError(
            f"Calibration never saw modules {missing} run (their inputs were not observed). Check that "
            "`apply_fn` calls them, or narrow the activation transform's `rule`."
        )
    if method in ("percentile", "mse"):
        combined = {k: Range(r.lo / n, r.hi / n) for k, r in combined.items()}
    combined = {k: Range(r.lo.astype(jnp.float32), r.hi.astype(jnp.float32)) for k, r in combined.items()}
    new_states = [_calibrated(state, combined, n) for state in activation.find_states(cstate)]
    return activation.replace_states(cstate, new_states)


def _calibrated(state: activation.ActivationsState, combined, n: int) -> activation.ActivationsState:
    config = state.config
    ranges = {kind: {m: combined[(m, kind)] for m in getattr(state, kind)} for kind in activation.KINDS}
    learned = state.learned
    if isinstance(learned, core.Learned):
        values = {}
        for kind in activation.KINDS:
            values[kind] = {}
            for m, r in ranges[kind].items():
                if config.mode == "pact":
                    values[kind][m] = jnp.maximum(r.hi, 0.0).astype(jnp.float32)
                else:
                    _, qp = lsq_lib.code_bounds(config.bits, config.signed)
                    amax = jnp.maximum(jnp.abs(r.lo), jnp.abs(r.hi)) if config.signed else jnp.maximum(r.hi, 0.0)
                    values[kind][m] = jnp.where(amax > 0, amax / qp, 1.0).astype(jnp.float32)
        learned = core.Learned(values)
    count = jnp.asarray(min(n, jnp.iinfo(jnp.int32).max), jnp.int32)
    return state._replace(inputs=ranges["inputs"], outputs=ranges["outputs"], count=count, learned=learned)

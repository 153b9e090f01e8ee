"""Straight-through estimators, written once as ``jax.custom_vjp``.

Rounding has zero gradient almost everywhere; quantization-aware training
instead passes the incoming gradient straight through the rounding (Bengio,
Leonard & Courville 2013). ``clip_ste(round_ste(x), lo, hi)`` is the *clipped*
straight-through estimator: gradient one where the rounded value lies in
``[lo, hi]`` (bounds included), zero outside. (``jnp.clip``'s own gradient is
0.5 exactly at a bound, which would halve the gradient of every channel's
largest weight under max calibration.)

Every quantizer in :mod:`jaxcompress.quant` builds its gradient from these:

* :func:`round_ste`, :func:`floor_ste`: ``round``/``floor`` forward, identity backward;
* :func:`stochastic_round_ste`: ``floor(x + u)``, ``u ~ U[0, 1)``, unbiased
  (``E[floor(x + u)] = x``), identity backward;
* :func:`clip_ste`: clip forward, gradient only inside ``[lo, hi]``;
* :func:`scale_grad`: identity forward, gradient times ``g`` backward (LSQ's
  step-size gradient scale);
* :func:`straight_through`: returns ``y`` forward, passes the gradient to both
  ``x`` and ``y`` (non-uniform quantizers whose forward is a table look-up).

References:
  Bengio, Leonard & Courville, "Estimating or Propagating Gradients Through
  Stochastic Neurons for Conditional Computation", 2013.
  https://arxiv.org/abs/1308.3432
  Gupta et al., "Deep Learning with Limited Numerical Precision" (stochastic
  rounding), 2015. https://arxiv.org/abs/1502.02551
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["clip_ste", "floor_ste", "round_ste", "scale_grad", "stochastic_round_ste", "straight_through"]


def _identity_backward(fn):
    """``fn`` forward, identity backward, as a ``jax.custom_vjp``."""

    @jax.custom_vjp
    def ste(x):
        return fn(x)

    ste.defvjp(lambda x: (fn(x), None), lambda _, g: (g,))
    return ste


round_ste = _identity_backward(jnp.round)
round_ste.__doc__ = """``jnp.round(x)`` (half to even) forward, identity backward."""
floor_ste = _identity_backward(jnp.floor)
floor_ste.__doc__ = """``jnp.floor(x)`` forward, identity backward."""


def stochastic_round_ste(x: jax.Array, key: jax.Array) -> jax.Array:
    """Stochastic rounding ``floor(x + u)``, ``u ~ U[0, 1)``; identity backward.

    Unbiased: ``x`` rounds up with probability ``x - floor(x)``, so
    ``E[result] = x``.

    Args:
      x: values to round (float).
      key: a PRNG key; the same key gives the same rounding.

    Returns:
      Rounded values, ``x``'s shape and dtype.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxcompress.quant import stochastic_round_ste
      >>> r = stochastic_round_ste(jnp.full((10000,), 0.25), jax.random.key(0))
      >>> sorted(set(r.tolist())), abs(float(r.mean()) - 0.25) < 0.02
      ([0.0, 1.0], True)
    """
    u = jax.random.uniform(key, jnp.shape(x), dtype=jnp.result_type(x))
    return floor_ste(x + jax.lax.stop_gradient(u))


@jax.custom_vjp
def clip_ste(x: jax.Array, lo: jax.Array, hi: jax.Array) -> jax.Array:
    """``jnp.clip(x, lo, hi)`` forward; backward passes ``g`` where ``lo <= x <= hi``.

    ``lo`` and ``hi`` are treated as constants (zero cotangent).
    """
    return jnp.clip(x, lo, hi)


def _clip_fwd(x, lo, hi):
    return jnp.clip(x, lo, hi), (x, lo, hi)


def _clip_bwd(res, g):
    x, lo, hi = res
    inside = (x >= lo) & (x <= hi)
    return jnp.where(inside, g, jnp.zeros_like(g)), jnp.zeros_like(lo), jnp.zeros_like(hi)


clip_ste.defvjp(_clip_fwd, _clip_bwd)


@jax.custom_vjp
def scale_grad(x: jax.Array, g: jax.Array) -> jax.Array:
    """Identity forward; backward multiplies the gradient by ``g`` (``g`` gets none).

    LSQ's gradient scaling, bitwise exact in the forward pass (the usual
    ``stop_gradient(x - x*g) + x*g`` trick is not).
    """
    return x


def _scale_grad_fwd(x, g):
    return x, g


def _scale_grad_bwd(g, ct):
    return (ct * g).astype(ct.dtype), jnp.zeros_like(g)


scale_grad.defvjp(_scale_grad_fwd, _scale_grad_bwd)


@jax.custom_vjp
def straight_through(x: jax.Array, y: jax.Array) -> jax.Array:
    """``y`` forward; backward passes the gradient unchanged to both ``x`` and ``y``.

    For quantizers whose forward pass is not a rounding (a codebook look-up):
    ``straight_through(w, codebook[codes])`` is exactly ``codebook[codes]``,
    trains ``w`` as if it were the identity, and gives each codebook entry the
    sum of its members' gradients (through the look-up's own derivative).
    """
    return y


def _st_fwd(x, y):
    return y, None


def _st_bwd(_, g):
    return g, g


straight_through.defvjp(_st_fwd, _st_bwd)

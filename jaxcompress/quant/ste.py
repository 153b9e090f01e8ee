"""Straight-through estimators, written once as ``jax.custom_vjp``.

Rounding has zero gradient almost everywhere; quantization-aware training
instead passes the incoming gradient straight through the rounding (Bengio,
Leonard & Courville 2013). ``clip_ste(round_ste(x), lo, hi)`` is the *clipped*
straight-through estimator: gradient one where the rounded value lies in
``[lo, hi]`` (bounds included), zero outside. (``jnp.clip``'s own gradient is
0.5 exactly at a bound, which would halve the gradient of every channel's
largest weight under max calibration.)

References:
  Bengio, Leonard & Courville, "Estimating or Propagating Gradients Through
  Stochastic Neurons for Conditional Computation", 2013.
  https://arxiv.org/abs/1308.3432
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["clip_ste", "round_ste"]


@jax.custom_vjp
def round_ste(x: jax.Array) -> jax.Array:
    """``jnp.round(x)`` forward, identity backward."""
    return jnp.round(x)


def _round_fwd(x):
    return jnp.round(x), None


def _round_bwd(_, g):
    return (g,)


round_ste.defvjp(_round_fwd, _round_bwd)


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

"""PACT: parameterized clipping activation with a learned clipping level (Choi et al. 2018).

For unsigned ``bits``-bit activations with learned clipping level ``alpha``,

.. math::

    s = \\alpha / (2^b - 1), \\qquad
    y_q = s \\cdot \\mathrm{clip}(\\mathrm{round}(x / s),\\ 0,\\ 2^b - 1)

(the clipped activation ``clip(x, 0, alpha)`` quantized on a uniform grid), and,
with the straight-through estimator for the rounding, the paper's gradients

.. math::

    \\frac{\\partial y_q}{\\partial x} = \\mathbb{1}[0 \\le x \\le \\alpha], \\qquad
    \\frac{\\partial y_q}{\\partial \\alpha} = \\mathbb{1}[x > \\alpha].

PACT replaces a ReLU, so it is for non-negative (unsigned) activations; use
LSQ for signed ones. ``alpha`` is floored at ``1e-6`` in use.

References:
  Choi, Wang, Venkataramani, Chuang, Srinivasan & Gopalakrishnan, "PACT:
  Parameterized Clipping Activation for Quantized Neural Networks", 2018.
  https://arxiv.org/abs/1805.06085
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxcompress._src.quant.grid import reciprocal

__all__ = ["pact_fake_quant", "pact_scale"]

MIN_ALPHA = 1e-6


def _clamp_alpha(alpha: jax.typing.ArrayLike) -> jax.Array:
    """``alpha`` as float32, at least :data:`MIN_ALPHA`: the clipping level the forward and backward use."""
    return jnp.maximum(jnp.asarray(alpha, jnp.float32), MIN_ALPHA)


def pact_scale(alpha: jax.typing.ArrayLike, bits: int) -> jax.Array:
    """The step ``max(alpha, 1e-6) * float32(1 / (2^bits - 1))`` (float32)."""
    return _clamp_alpha(alpha) * jnp.float32(1.0 / (2**bits - 1))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def pact_fake_quant(x: jax.Array, alpha: jax.Array, bits: int) -> jax.Array:
    """PACT quantize-dequantize of ``x`` with clipping level ``alpha`` (a scalar).

    Args:
      x: activations (float).
      alpha: the learned clipping level, float32 scalar.
      bits: bit width (static), 2 to 8.

    Returns:
      ``y_q`` in ``x.dtype``; gradients as in the module docstring.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxcompress import quant
      >>> x = jnp.array([-1.0, 0.5, 1.2, 4.0])
      >>> quant.pact_fake_quant(x, jnp.float32(3.0), 2).tolist()
      [0.0, 0.0, 1.0, 3.0]
      >>> float(jax.grad(lambda a: quant.pact_fake_quant(x, a, 2).sum())(jnp.float32(3.0)))
      1.0
    """
    return _forward(x, alpha, bits)


def _forward(x, alpha, bits):
    s = pact_scale(alpha, bits)
    q = jnp.clip(jnp.round(x.astype(jnp.float32) * reciprocal(s)), 0.0, jnp.float32(2**bits - 1))
    return (q * s).astype(x.dtype)


def _fwd(x, alpha, bits):
    return _forward(x, alpha, bits), (x, alpha)


def _bwd(bits, res, g):
    x, alpha = res
    a = _clamp_alpha(alpha)
    x32 = x.astype(jnp.float32)
    inside = (x32 >= 0) & (x32 <= a)
    dx = jnp.where(inside, g, jnp.zeros_like(g))
    dalpha = jnp.sum(jnp.where(x32 > a, g.astype(jnp.float32), 0.0))
    return dx, jnp.reshape(dalpha, jnp.shape(alpha)).astype(jnp.result_type(alpha))


pact_fake_quant.defvjp(_fwd, _bwd)

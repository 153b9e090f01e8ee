"""Half-precision leaves: biases (or any float leaf) trained and stored at float16 or bfloat16 precision.

:func:`half_precision` rounds each selected leaf to the narrower float type in
the forward pass (the values stay in the leaf's dtype) and passes gradients
straight through, so a model fine-tuned with it computes with values that the
exporter stores exactly in 2 bytes each (it keeps a float32 array as float16
whenever that holds every value exactly). Deep Compression stores its weights
as shared codes but leaves biases in float32; rounding them too is this
library's choice, not the paper's, and costs nothing measurable on LeNets
(``benchmarks/README.md``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxcompress._src import core, validate
from jaxcompress._src import paths as paths_lib

__all__ = ["VECTORS", "HalfPrecisionState", "half_precision"]

VECTORS = paths_lib.Selector(
    lambda _, x: jnp.ndim(x) <= 1 and jnp.issubdtype(jnp.result_type(x), jnp.floating), "float leaves with ndim <= 1"
)
"""Every floating-point leaf with at most one dimension: biases, normalization scales and offsets
(not integer counters kept in the params)."""

_DTYPES = {"float16": jnp.float16, "bfloat16": jnp.bfloat16}


class HalfPrecisionState(NamedTuple):
    """The (empty) state of :func:`half_precision`: which leaves it rounds is its rule's, static."""


@jax.custom_vjp
def _identity_grad(x: jax.Array, rounded: jax.Array) -> jax.Array:
    del x
    return rounded


_identity_grad.defvjp(lambda x, r: (r, None), lambda _, g: (g, None))


def half_precision(dtype: str = "float16", *, rule: paths_lib.Rule = VECTORS) -> core.Transform:
    """Rounds the selected leaves to ``dtype`` precision, straight through (see the module docstring).

    Args:
      dtype: ``"float16"`` (10-bit mantissa, range to 65504) or ``"bfloat16"``
        (8-bit mantissa, float32's range).
      rule: which leaves (default: every float leaf with ``ndim <= 1``, the biases).

    Returns:
      A :class:`jaxcompress.Transform` whose state is :class:`HalfPrecisionState`.

    Example:
      >>> import jax.numpy as jnp, jaxcompress as jc
      >>> out, _ = jc.compress(jc.quant.half_precision(), {"b": jnp.array([0.1, 1.0])})
      >>> [float(v) for v in out["b"]]  # 0.1 is 0.0999755859375 in float16
      [0.0999755859375, 1.0]
    """
    if dtype not in _DTYPES:
        raise ValueError(f"`dtype` must be one of {sorted(_DTYPES)}, got {dtype!r}.")
    narrow = _DTYPES[dtype]
    selector = paths_lib.as_selector(rule)

    def init(params: Any) -> HalfPrecisionState:
        flat, selected = validate.selected_weights(selector, params)
        limit = float(jnp.finfo(narrow).max)
        for p in selected:
            if validate.is_concrete(flat[p]) and float(jnp.max(jnp.abs(flat[p]), initial=0.0)) > limit:
                raise ValueError(
                    f"`params` leaf {p!r} holds values beyond {dtype}'s range (|x| <= {limit:g}); they would "
                    f"round to inf. Use dtype='bfloat16' or exclude the leaf with `rule`."
                )
        return HalfPrecisionState()

    def update(params: Any, state: HalfPrecisionState, grads: Any = None, **extra_args) -> HalfPrecisionState:
        del params, grads, extra_args
        return state

    def apply(params: Any, state: HalfPrecisionState) -> Any:
        def rounded(_, w):
            w = jnp.asarray(w)  # a Python float leaf too
            return _identity_grad(w, w.astype(narrow).astype(w.dtype))

        del state
        return paths_lib.map_selected(rounded, params, paths_lib.select(selector, params))

    return core.Transform(init, *core.checking_state(HalfPrecisionState, "jc.quant.half_precision", update, apply))

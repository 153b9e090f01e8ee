"""Mixed precision: a bit width per path rule.

:func:`mixed_precision` builds one quantizer per rule and chains them; a leaf
belongs to the *first* rule that matches it (later rules exclude earlier
ones), so the stages never overlap. Every rule must select at least one leaf
(the error lists the paths). Heterogeneous methods compose the same way by
hand: ``jc.chain(jc.quant.kmeans(2, rule="Dense"), jc.quant.int8(rule="Conv"))``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from jaxcompress._src import core
from jaxcompress._src import paths as paths_lib
from jaxcompress._src.quant.grid import check_bits
from jaxcompress._src.quant.uniform import uniform

__all__ = ["mixed_precision"]


def mixed_precision(
    bits: Mapping[paths_lib.Rule, int] | Sequence[tuple[paths_lib.Rule, int]],
    *,
    default: int | None = None,
    method: Callable[..., core.Quantizer] = uniform,
    rule: paths_lib.Rule = paths_lib.KERNELS,
    **kwargs: Any,
) -> core.Chain:
    """One quantizer per path rule, each with its own bit width.

    Args:
      bits: ``{rule: bits}`` or ``[(rule, bits), ...]``, first match wins.
      default: bit width for the leaves ``rule`` selects that no rule in
        ``bits`` matches (``None``: leave them unquantized).
      method: the quantizer factory, called as ``method(bits, rule=..., **kwargs)``
        (:func:`~jaxcompress.quant.uniform` by default; also ``lsq``, ``log2``,
        ``kmeans``).
      rule: the leaves eligible at all (default: ``ndim >= 2``).
      **kwargs: passed to every ``method`` call (e.g. ``granularity=``).

    Returns:
      A :class:`jaxcompress.Chain` of the per-rule quantizers.

    Example:
      >>> import jax.numpy as jnp, jaxcompress as jc
      >>> params = {"Conv_0": {"kernel": jnp.ones((3, 3, 1, 4))}, "Dense_0": {"kernel": jnp.ones((8, 2))}}
      >>> recipe = jc.quant.mixed_precision({"Conv": 8, "Dense": 4})
      >>> state = recipe.init(params)
      >>> {p: iw.bits for p, iw in recipe.quantize(params, state).items()}
      {'Conv_0/kernel': 8, 'Dense_0/kernel': 4}
    """
    items = list(bits.items()) if isinstance(bits, Mapping) else list(bits)
    if not items:
        raise ValueError("`bits` must name at least one (rule, bits) pair.")
    for i, item in enumerate(items):
        if not (isinstance(item, tuple) and len(item) == 2):
            raise TypeError(f"`bits` entry {i} must be a (rule, bits) pair, got {item!r}.")
        check_bits(item[1], argument=f"bits[{item[0]!r}]")
    if default is not None:
        check_bits(default, argument="default")
    if not callable(method):
        raise TypeError(f"`method` must be a quantizer factory like jc.quant.uniform, got {method!r}.")
    eligible = paths_lib.as_selector(rule)
    stages, earlier = [], []
    for r, b in items:
        selector = paths_lib.as_selector(r)
        chosen = paths_lib.all_of(eligible, selector, *(~e for e in earlier))
        stages.append(method(b, rule=chosen, **kwargs))
        earlier.append(selector)
    if default is not None:
        stages.append(method(default, rule=paths_lib.all_of(eligible, *(~e for e in earlier)), **kwargs))
    return core.chain(*stages)

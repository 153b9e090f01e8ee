"""Checks at the public boundary: clear errors naming the argument."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress._src import paths as paths_lib


def is_concrete(x: Any) -> bool:
    """True when ``x`` holds values (not a tracer inside ``jit``/``grad``)."""
    return not isinstance(x, jax.core.Tracer)


def check_float_leaves(flat: Mapping[str, Any], paths: list[str], *, argument: str = "params") -> None:
    """Selected leaves must be floating-point arrays."""
    for p in paths:
        dtype = jnp.result_type(flat[p])
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(
                f"`{argument}` leaf {p!r} has dtype {dtype}; compression needs a floating "
                f"dtype (float32, bfloat16, float16). Exclude it with a `rule` or cast it."
            )


def check_finite_leaves(flat: Mapping[str, Any], paths: list[str], *, argument: str = "params") -> None:
    """Selected leaves must hold no NaN/Inf (checked only on concrete arrays)."""
    for p in paths:
        leaf = flat[p]
        if not is_concrete(leaf):
            continue
        arr = np.asarray(leaf, dtype=np.float32)
        finite = np.isfinite(arr)
        if not finite.all():
            n_bad = int(arr.size - finite.sum())
            index = tuple(int(i) for i in np.argwhere(~finite)[0])
            raise ValueError(
                f"`{argument}` leaf {p!r} holds {n_bad} NaN/Inf value(s) out of {arr.size} (the first at index "
                f"{index}: {arr[index]!r}); expected finite values. Check the training run that produced them."
            )


def selected_weights(rule: Any, params: Any) -> tuple[dict[str, Any], list[str]]:
    """``(flat params, paths selected by rule)``, the selected leaves checked to be finite floats.

    What every method's ``init`` does first.
    """
    flat, _ = paths_lib.flatten(params)
    selected = paths_lib.select(rule, params)
    check_float_leaves(flat, selected)
    check_finite_leaves(flat, selected)
    return flat, selected


def check_fraction(value: Any, *, argument: str, allow_one: bool = False) -> float:
    """A Python number in ``[0, 1)`` (or ``[0, 1]``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"`{argument}` must be a number in [0, 1), got {type(value).__name__}: {value!r}.")
    value = float(value)
    upper_ok = value <= 1.0 if allow_one else value < 1.0
    if not (value >= 0.0 and upper_ok):
        interval = "[0, 1]" if allow_one else "[0, 1)"
        raise ValueError(f"`{argument}` must lie in {interval}, got {value!r}.")
    return value


def check_int(value: Any, *, argument: str, minimum: int | None = None) -> int:
    """A Python integer, optionally bounded below."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"`{argument}` must be an int, got {type(value).__name__}: {value!r}.")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"`{argument}` must be >= {minimum}, got {value}.")
    return value

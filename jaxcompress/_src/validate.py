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


def check_state(state: Any, kind: type, *, method: str) -> None:
    """``state`` must be the ``kind`` that ``method``'s ``init`` returned (not another method's or chain's)."""
    if not isinstance(state, kind):
        raise TypeError(
            f"`state` of {method} must be the {kind.__name__} its init returned, got {type(state).__name__}. "
            f"Pass each method its own state: a chain's state is the tuple of its stages' states, in order, and "
            f"jc.optim.compression_state(opt_state) gives the state of the recipe inside an optimizer."
        )


def check_leaf_shapes(leaves: Mapping[str, Any], shapes: Mapping[str, tuple], *, method: str) -> None:
    """Each leaf must have the shape ``method``'s state was built for (checked at trace time; no broadcasting)."""
    for p, shape in shapes.items():
        found = tuple(jnp.shape(leaves[p]))
        if found != tuple(shape):
            raise ValueError(
                f"`params` leaf {p!r} has shape {found}, but the {method} state was built for shape "
                f"{tuple(shape)}. Pass params shaped as at init (re-run init after changing the model)."
            )


def selected_weights(rule: Any, params: Any) -> tuple[dict[str, Any], list[str]]:
    """``(flat params, paths selected by rule)``, the selected leaves checked to be finite floats.

    What every method's ``init`` does first.
    """
    flat, _ = paths_lib.flatten(params)
    for p, leaf in flat.items():
        if not isinstance(leaf, (jax.Array, np.ndarray, np.generic, int, float, complex)):
            raise TypeError(
                f"`params` leaf {p!r} is a {type(leaf).__name__}: {leaf!r}; params must be a pytree of arrays "
                f"(or numbers). Keep other values out of the params tree (e.g. in a static module attribute)."
            )
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

"""How a target sparsity is shared among the pruned leaves.

* ``"uniform"``: every leaf reaches the target.
* ``"erk"`` (Erdos-Renyi-Kernel, Evci et al. 2020): a leaf of shape
  ``(d_1, ..., d_k)`` gets density proportional to
  ``(d_1 + ... + d_k) / (d_1 * ... * d_k)``, scaled so that the leaves
  together reach the target; a leaf whose density would exceed 1 stays dense
  and the others share its budget. Small layers stay denser, large ones sparser.
* ``overrides={rule: sparsity}``: leaves matched by ``rule`` take that
  sparsity (scaled along the schedule: ``sparsity * s(t) / s_final``); the
  distribution shares the target among the other leaves.

Everything is a jnp expression of the (traced) target, so schedules never
retrace.

References:
  Evci, Gale, Menick, Castro & Elsen, "Rigging the Lottery: Making All Tickets
  Winners", 2020. https://arxiv.org/abs/1911.11134
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcompress._src import paths as paths_lib
from jaxcompress._src import validate

__all__ = ["DISTRIBUTIONS", "Overrides", "check_distribution", "erk", "layer_sparsities", "resolve_overrides"]

Overrides = Mapping[paths_lib.Rule, float] | None
"""``{rule: sparsity}`` for the leaves that take their own sparsity, or None."""

DISTRIBUTIONS = ("uniform", "erk")


def check_distribution(distribution: Any) -> str:
    if not isinstance(distribution, str) or distribution not in DISTRIBUTIONS:
        raise ValueError(f"`distribution` must be one of {DISTRIBUTIONS}, got {distribution!r}.")
    return distribution


def erk(shapes: Sequence[tuple[int, ...]], sparsity: jax.typing.ArrayLike) -> list[jax.Array]:
    """Per-leaf ERK sparsities reaching ``sparsity`` over all ``shapes`` together.

    Exactly solves ``sum_l n_l * min(1, eps * r_l) = (1 - s) * N`` for ``eps``
    (``r_l`` = sum of dims over product of dims): with the leaves sorted by
    ``r_l``, the ``j`` densest are dense for the smallest ``j`` that leaves every
    other density at most 1.

    Example:
      >>> import jaxcompress as jc
      >>> [round(float(s), 3) for s in jc.prune.erk([(784, 300), (300, 100), (100, 10)], 0.9)]
      [0.92, 0.77, 0.0]
    """
    sizes = np.array([math.prod(s) for s in shapes], np.float64)
    raw = np.array([sum(s) / math.prod(s) for s in shapes], np.float64)
    order = np.argsort(-raw, kind="stable")  # densest first
    n_sorted, r_sorted = sizes[order], raw[order]
    budget = (1.0 - jnp.asarray(sparsity, jnp.float32)) * float(sizes.sum())
    # For j = 0..L dense leaves: eps_j = (budget - dense_j) / sum of n * r over the rest.
    dense = np.concatenate([[0.0], np.cumsum(n_sorted)]).astype(np.float32)
    weight = np.concatenate([np.cumsum((n_sorted * r_sorted)[::-1])[::-1], [0.0]]).astype(np.float32)
    eps = (budget - dense) / jnp.maximum(weight, np.float32(1e-30))
    next_raw = np.concatenate([r_sorted, [0.0]]).astype(np.float32)  # largest raw among the rest
    feasible = (eps * next_raw <= 1.0) | (np.arange(len(shapes) + 1) == len(shapes))
    j = jnp.argmax(feasible)  # fewest dense leaves that works
    density_sorted = jnp.where(np.arange(len(shapes)) < j, 1.0, jnp.minimum(1.0, eps[j] * r_sorted.astype(np.float32)))
    density = jnp.zeros(len(shapes), jnp.float32).at[order].set(density_sorted)
    return [jnp.clip(1.0 - density[i], 0.0, 1.0) for i in range(len(shapes))]


def resolve_overrides(
    overrides: Overrides,
    paths: Sequence[str],
    flat: Mapping[str, Any],
    *,
    argument: str = "overrides",
    value: str = "sparsity",
    leaves: str = "pruned leaves",
    check: Callable[..., Any] = validate.check_fraction,
) -> dict[str, Any]:
    """``{path: value}`` for the selected leaves matched by an override rule (``check(value, argument=...)``
    validates each value; defaults: sparsities)."""
    if overrides is None:
        return {}
    if not isinstance(overrides, Mapping):
        raise TypeError(f"`{argument}` must be a mapping {{rule: {value}}}, got {type(overrides).__name__}.")
    found: dict[str, Any] = {}
    for rule, given in overrides.items():
        given = check(given, argument=f"{argument}[{rule!r}]")
        selector = paths_lib.as_selector(rule)
        hits = [p for p in paths if selector(p, flat[p])]
        if not hits:
            raise ValueError(f"`{argument}` rule {selector.description} matches none of the {leaves} {list(paths)}.")
        for p in hits:
            if p in found:
                raise ValueError(f"Leaf {p!r} is matched by more than one `{argument}` rule; make the rules disjoint.")
            found[p] = given
    return found


def layer_sparsities(
    distribution: str,
    shapes: Sequence[tuple[int, ...]],
    fixed: Sequence[float | None],
    target: jax.Array,
    final: float,
) -> list[jax.Array]:
    """Per-leaf sparsity at schedule value ``target`` (``fixed[i]``: an override, else ``None``)."""
    ramp = target / final if final > 0 else jnp.ones_like(target)
    free = [i for i, f in enumerate(fixed) if f is None]
    shared: list[jax.Array] = [target] * len(free)
    if distribution == "erk" and free:
        shared = erk([shapes[i] for i in free], target)
    out: list[jax.Array] = [None] * len(shapes)  # type: ignore[list-item]
    for i, s in zip(free, shared, strict=True):
        out[i] = s
    for i, f in enumerate(fixed):
        if f is not None:
            out[i] = jnp.asarray(f, jnp.float32) * ramp
    return out
